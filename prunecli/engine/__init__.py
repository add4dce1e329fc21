"""The training engine: loop, optimisers/schedules, AMP, DDP, checkpoints, events, metrics."""
