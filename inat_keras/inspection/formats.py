"""The export formats, the files they write, and the check every export passes against Keras."""

FORMATS = ("savedmodel", "tflite", "onnx")
FILE_NAMES = {"savedmodel": "savedmodel", "tflite": "model.tflite", "onnx": "model.onnx"}
# float32 everywhere; TFLite and ONNX Runtime fuse and reorder operations, hence not exactly 0.
TOLERANCE = 1e-4
CHECK_IMAGES = 8
