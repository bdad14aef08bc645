"""Evaluation: held-out loss and perplexity, and generation metrics from batched greedy decoding."""
