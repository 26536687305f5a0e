"""Everything a program needs to use the served lip-sync model (no PyTorch required)."""
