"""Which attention kernel trains a small encoder fastest on this CPU: PyTorch's SDPA or transformers' eager
attention, in fp32 and bf16, on padded and packed batches (`train.packing`); and, packed, what the [CLS]-only
last layer saves at rows packed from 32 and from 128 tokens.

    python -m bench.attention_cpu

The default encoder with LoRA r 8, six batches of 32 bundled sentiment reviews, forward and backward; every
setting in one process, taken in turn three times, the best of the last two rounds reported (this VM's speed
drifts between runs, less within one). tuneforge uses eager attention for classification models trained in
bf16 on a CPU because of this measurement: SDPA's bf16 backward on the CPU is several times slower than the
eager product of the same shapes.
"""

from __future__ import annotations

import json
import time

import torch

from bench.common import machine_line
from tuneforge.config import ModelConfig
from tuneforge.data.kinds import labels as labels_module
from tuneforge.data.kinds.labels import (
    PACK_WIDTH,
    LabelSet,
    collate_labeled,
    collate_labeled_packed,
    encode_labeled,
    normaliser,
)
from tuneforge.data.sources import RawRecord, resolve_source
from tuneforge.engine import precision
from tuneforge.methods import get_method
from tuneforge.models.default import encoder_dir
from tuneforge.models.load import Head, load_model
from tuneforge.models.parts import unpacked_encoder_output
from tuneforge.objectives.classify import MODEL_INPUTS, head_logits

PACKED = {"packed": (32, True), "packed, whole last layer": (32, False), "packed from 128": (128, True),
          "packed from 128, whole last layer": (128, False)}  # name: (rows' least width, [CLS]-only last layer)


def batches(count: int = 6, size: int = 32) -> tuple[list[dict[str, dict]], LabelSet]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(encoder_dir())
    lines = resolve_source("quickstart:sentiment-train").read_text().splitlines()[:count * size]
    read = normaliser("sequence_classification")
    records = [read(RawRecord("sentiment", i, json.loads(line))) for i, line in enumerate(lines)]
    labels = LabelSet.of("sequence_classification", records)
    encoded, _ = encode_labeled(records, tokenizer, labels, 128)
    chunks = [encoded[i:i + size] for i in range(0, len(encoded), size)]
    out = [{"padded": collate_labeled(c, 0)} for c in chunks]
    for name, (width, _) in PACKED.items():
        labels_module.PACK_WIDTH = width
        for batch, c in zip(out, chunks, strict=True):
            batch[name] = collate_labeled_packed(c, 0)
    labels_module.PACK_WIDTH = PACK_WIDTH
    return out, labels


def step(model, batch: dict, first_token_only: bool) -> torch.Tensor:
    """head_logits, with the [CLS]-only last layer switched as asked."""
    if "unpack_index" not in batch:
        return head_logits(model, batch)
    inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
    with unpacked_encoder_output(model, batch["unpack_index"], first_token_only=first_token_only):
        return model(**inputs).logits.float()


def main() -> None:
    torch.set_num_threads(torch.get_num_threads())
    data, labels = batches()
    setups = {}
    for chosen in ("fp32", "bf16"):
        for kernel in ("sdpa", "eager"):
            torch.manual_seed(0)
            model = load_model(ModelConfig(path="default-encoder", hidden_dropout=0.0, attention_dropout=0.0),
                               Head("sequence_classification", labels.names), attn_implementation=kernel)
            method = get_method("lora")
            model = method.apply(model, method.params(r=8, alpha=16, dropout=0.0))
            precision.cast_frozen_weights(model, chosen)
            setups[(chosen, kernel)] = (model.train(), precision.autocast_factory(chosen, torch.device("cpu")))
    times: dict = {}
    kinds = ("padded", *PACKED)
    for round_ in range(3):
        for key, (model, autocast) in setups.items():
            for kind in kinds:
                started = time.perf_counter()
                for batch in data:
                    with autocast():
                        loss = step(model, batch[kind], PACKED.get(kind, (0, True))[1]).sum()
                    loss.backward()
                if round_:
                    times.setdefault((*key, kind), []).append(1000 * (time.perf_counter() - started) / len(data))
    print(f"{machine_line()}; default encoder, LoRA r 8, batches of 32 texts, ms per forward + backward (the best of "
          "two rounds)\n")
    print(f"{'precision':<10}{'attention':<11}" + "".join(f"{k:>36}" for k in kinds))
    for chosen, kernel in setups:
        print(f"{chosen:<10}{kernel:<11}" + "".join(f"{min(times[(chosen, kernel, k)]):>36.1f}" for k in kinds))

if __name__ == "__main__":
    main()
