"""Loading Hugging Face models and tokenizers, the bundled default model, and tiny models for tests."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def no_progress_bars():
    """transformers draws tqdm bars while loading and writing shards; a run has its own progress display."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()
