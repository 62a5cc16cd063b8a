"""What a trained model does: evaluate, predict, explain, export, and runs compared."""
