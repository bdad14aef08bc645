"""A merged model as a GGUF file for llama.cpp and Ollama, written with the `gguf` package (llama.cpp's own
writer), weights, tokenizer and chat template in one file.

Llama-family decoders only (`LlamaForCausalLM`, `MistralForCausalLM`: llama.cpp's `llama` architecture), with a
GPT-2-style byte-level BPE tokenizer whose pre-tokenizer llama.cpp knows. llama.cpp's `convert_hf_to_gguf.py`
does the same for every architecture; this writer exists so that `tuneforge export --gguf` needs no llama.cpp
checkout, and it is checked against llama.cpp itself (`make gguf-check`) and transformers' GGUF reader (tests).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from tuneforge.errors import ConfigError

ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
# what gguf-py quantizes itself; q4_k_m is llama.cpp's quantizer's, run on the f16 file when llama-cpp-python
# is installed (`make gguf-check`, or pip install llama-cpp-python)
QUANTS = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q4_k_m")
LLAMA_CPP_QUANTS = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}
# llama.cpp's pre-tokenizer names, recognised from the tokenizer.json pre-tokenizer that implements them
# ChatML in Ollama's Go template language
CHATML_TEMPLATE = ("{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
                   "{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
                   "<|im_start|>assistant\n")
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")


def check_quants(quants: Sequence[str]) -> None:
    """Refuse, before anything is merged, a type this writer cannot write here."""
    unknown = [q for q in quants if q not in QUANTS]
    if unknown:
        raise ConfigError(f"--quant {unknown[0]}: not a GGUF type tuneforge writes\n  fix: choose from "
                          f"{', '.join(QUANTS)}")
    for quant in quants:
        if quant in LLAMA_CPP_QUANTS:
            _llama_cpp(quant)


def check_model(model_config) -> None:
    """Refuse a model this writer cannot write."""
    architectures = list(getattr(model_config, "architectures", None) or [type(model_config).__name__])
    if not set(architectures) & set(ARCHITECTURES):
        raise ConfigError(f"GGUF export writes llama-family decoders ({', '.join(ARCHITECTURES)}); this run's model "
                          f"is {architectures[0]}\n  fix: export the Hugging Face directory (tuneforge export RUN "
                          "--out DIR --merge) and convert it with llama.cpp's convert_hf_to_gguf.py")
    scaling = _rope(model_config).get("rope_type", "default")
    if scaling not in ("default", None):
        raise ConfigError(f"GGUF export does not write rope scaling '{scaling}' yet\n  fix: export the Hugging Face "
                          "directory (--merge) and convert it with llama.cpp's convert_hf_to_gguf.py")


def write_gguf(model, tokenizer, path: Path, quant: str, name: str) -> Path:
    """Write `model` (a merged fp32 llama-family model) and `tokenizer` as one GGUF file of type `quant`."""
    import gguf

    if quant in LLAMA_CPP_QUANTS:  # llama.cpp quantizes from the f16 file
        f16 = write_gguf(model, tokenizer, path.with_suffix(".f16-tmp.gguf"), "f16", name)
        try:
            return _quantize_with_llama_cpp(f16, path, quant)
        finally:
            f16.unlink(missing_ok=True)
    config = model.config
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name(name)
    writer.add_file_type(getattr(gguf.LlamaFileType, "ALL_F32" if quant == "f32" else f"MOSTLY_{quant.upper()}"))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(float(_rope(config).get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_vocab_size(config.vocab_size)
    _add_tokenizer(writer, tokenizer, config.vocab_size)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp reads the embedding matrix as the output layer when output.weight is absent
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ConfigError(f"GGUF export: no llama.cpp name for the tensor {hf_name}\n  fix: export the Hugging "
                              "Face directory (--merge) and convert it with llama.cpp's convert_hf_to_gguf.py")
        data = tensor.detach().to(torch.float32).cpu()
        if hf_name.endswith("q_proj.weight"):
            data = _permute(data, heads)
        elif hf_name.endswith("k_proj.weight"):
            data = _permute(data, kv_heads)
        _add_tensor(writer, gguf_name, data.numpy(), quant)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _rope(config) -> dict:
    """Rope settings wherever this transformers keeps them (5.x: `rope_parameters`; 4.x: `rope_theta` and
    `rope_scaling`)."""
    parameters = dict(getattr(config, "rope_parameters", None) or {})
    if getattr(config, "rope_theta", None) is not None:
        parameters.setdefault("rope_theta", config.rope_theta)
    if getattr(config, "rope_scaling", None):
        parameters.setdefault("rope_type", config.rope_scaling.get("rope_type", config.rope_scaling.get("type")))
    return parameters


def _permute(weights: torch.Tensor, heads: int) -> torch.Tensor:
    """Hugging Face's rotary layout (halves) to llama.cpp's (interleaved pairs) for a q or k projection, as
    convert_hf_to_gguf.py does."""
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _add_tensor(writer, name: str, data: np.ndarray, quant: str) -> None:
    """Norms and vectors stay f32 (as llama.cpp keeps them); matrices take the file's type. A 4-bit file keeps
    the embedding matrix (the output layer too, when tied) in q8_0, as llama.cpp's quantizer keeps it wider."""
    import gguf

    types = gguf.GGMLQuantizationType
    if data.ndim < 2 or quant == "f32":
        writer.add_tensor(name, data.astype(np.float32))
        return
    qtype = types[quant.upper()]
    if quant in ("q4_0", "q4_1") and name in ("token_embd.weight", "output.weight"):
        qtype = types.Q8_0
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if data.shape[-1] % block:
        qtype = types.F16  # rows that do not fill whole blocks, as convert_hf_to_gguf.py falls back
    if qtype == types.F16:
        writer.add_tensor(name, data.astype(np.float16))
        return
    writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)


def _add_tokenizer(writer, tokenizer, vocab_size: int) -> None:
    """The tokenizer as llama.cpp reads it: byte-level BPE tokens, their types (special added tokens are
    control tokens, so that text spelling one is never read as one unless asked), merges, special ids, whether
    BOS/EOS are added, and the chat template."""
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str()) if getattr(tokenizer, "is_fast", False) else {}
    model = spec.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback") or spec.get("decoder", {}).get("type") != "ByteLevel":
        raise ConfigError("GGUF export writes byte-level BPE tokenizers (GPT-2 style: SmolLM, Llama 3, Mistral "
                          "Nemo); this model's tokenizer is not one\n  fix: export the Hugging Face directory "
                          "(--merge) and convert it with llama.cpp's convert_hf_to_gguf.py")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(spec.get("pre_tokenizer")))
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(vocab_size):
        if index in added:
            tokens.append(added[index].content)
            types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        elif index in by_id:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.NORMAL)
        else:  # embedding rows past the tokenizer's last token
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])])
    for kind in ("bos", "eos", "unk", "pad"):
        index = getattr(tokenizer, f"{kind}_token_id", None)
        if index is not None:
            getattr(writer, f"add_{kind}_token_id")(index)
    probe = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id])
    writer.add_add_eos_token(tokenizer.eos_token_id is not None and probe[-1:] == [tokenizer.eos_token_id])
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)


def _pre_tokenizer(pre: dict | None) -> str:
    """llama.cpp's name for the pre-tokenizer (it splits text with its own copy of each known one)."""
    steps = (pre or {}).get("pretokenizers", [pre] if pre else [])
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"  # digits one by one, then GPT-2's split: llama.cpp's smollm / starcoder
    if kinds == ["Split", "ByteLevel"] and steps[0].get("pattern", {}).get("Regex") == LLAMA3_SPLIT:
        return "llama-bpe"
    raise ConfigError(f"GGUF export: llama.cpp's name for this tokenizer's pre-tokenizer "
                      f"({' + '.join(map(str, kinds))}) is not known here\n  fix: export the Hugging Face "
                      "directory (--merge) and convert it with llama.cpp's convert_hf_to_gguf.py, which identifies it")


def _llama_cpp(quant: str):
    try:
        import llama_cpp
    except ImportError:
        raise ConfigError(f"--quant {quant} is llama.cpp's own quantization, which needs llama-cpp-python\n  fix: "
                          "`make gguf-check` (builds it), or pip install llama-cpp-python; or choose q4_0 / q4_1 / "
                          "q8_0, which tuneforge writes itself") from None
    return llama_cpp


def _quantize_with_llama_cpp(source: Path, path: Path, quant: str) -> Path:
    llama_cpp = _llama_cpp(quant)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, LLAMA_CPP_QUANTS[quant])
    with _quiet_stderr():  # llama.cpp logs every tensor it reads
        failed = llama_cpp.llama_model_quantize(str(source).encode(), str(path).encode(), params) != 0
    if failed:
        raise RuntimeError(f"llama.cpp could not quantize {source} to {quant}")
    return path


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Standard error closed at the file-descriptor level, where a C library writes."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def modelfile(gguf_name: str, tokenizer) -> str:
    """An Ollama Modelfile for the GGUF beside it: greedy like tuneforge's evaluation, stopping at the end-of-turn
    token, and (for a ChatML template) the same prompt format, default system message included. What comes from the
    model's files is written only as a string Ollama reads back whole: it can never add a line of its own."""
    lines = ["# ollama create <name> -f Modelfile   (written by tuneforge export)", f"FROM ./{gguf_name}",
             "PARAMETER temperature 0"]
    template = getattr(tokenizer, "chat_template", None) or ""
    if "<|im_start|>" in template:
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": "\x00"}], tokenize=False,
                                                 add_generation_prompt=True)
        head = "<|im_start|>system\n"
        if rendered.startswith(head) and "<|im_end|>" in rendered:
            lines.append(_instruction("SYSTEM", rendered[len(head):rendered.index("<|im_end|>")], "the default system "
                                      "message"))
        lines += ['TEMPLATE """' + CHATML_TEMPLATE + '"""', 'PARAMETER stop "<|im_end|>"']
    elif tokenizer.eos_token:  # Ollama takes the template from the GGUF
        lines.append(_instruction("PARAMETER stop", tokenizer.eos_token, "the end-of-sequence token"))
    return "\n".join(lines) + "\n"


def _instruction(name: str, text: str, what: str) -> str:
    """`name "text"` (triple-quoted where the text spans lines), or where the text holds a quote or a backslash,
    which a Modelfile string cannot carry safely (Ollama's parser ends a string at its quotes), a comment saying
    what was left out."""
    if '"' in text or "\\" in text:
        return f"# {name}: left out, {what} holds quotes or backslashes a Modelfile cannot hold; set it yourself"
    return f'{name} """{text}"""' if "\n" in text or name == "SYSTEM" else f'{name} "{text}"'
