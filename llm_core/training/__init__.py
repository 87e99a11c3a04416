"""Training: the one loop, optimizers and schedule, training checkpoints, curves and throughput."""
