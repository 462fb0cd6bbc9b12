"""Training: configs, batches (2-D/3-D), augmentation, losses, the loop, checkpoints, DDP, launch."""
