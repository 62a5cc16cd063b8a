"""Images on disk to training batches: files and split, decoding, the tf.data pipeline, the data check."""
