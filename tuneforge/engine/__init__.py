"""The one training loop every objective uses, and everything around it (precision, optimizer,
schedules, checkpoints, logging)."""
