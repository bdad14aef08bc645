"""Trains one phase: the session's pieces (data, model, evaluator, loop inputs), the one loop every objective
uses, optimizers and schedules, precision, checkpoints, rollouts, the teacher, and several processes. Nothing here
writes or reads a run directory (`runs/` does)."""
