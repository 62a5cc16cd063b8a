"""Keras models: the scratch CNN, transfer backbones, augmentation layers, and the factory for a run."""
