"""Training a run: devices and precision, the loop with resumable checkpoints, fine-tuning, tracking."""
