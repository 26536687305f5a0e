"""Networks, data, losses, trainers and evaluation for the lip-sync models (needs PyTorch)."""
