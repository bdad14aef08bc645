"""What a finished run costs at inference and what it forgot: the per-method measurements of
`tuneforge compare`, written next to the run as compare.json."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from tuneforge.config import DataConfig, DatasetSpec, ModelConfig
from tuneforge.data.dataset import encode_examples, load_examples
from tuneforge.data.formats import Example
from tuneforge.data.render import prompt_ids_for_generation, use_chat_template
from tuneforge.engine import precision
from tuneforge.engine.heldout import heldout_scores
from tuneforge.engine.trained import load_trained
from tuneforge.evaluation.evaluate import generation_metrics
from tuneforge.evaluation.generate import generate_batch
from tuneforge.methods import get_method
from tuneforge.models.load import load_causal_lm, load_tokenizer
from tuneforge.objectives import get_objective

GENERAL_SET = "quickstart:general"
MEASURE_FILE = "compare.json"


def general_examples() -> list[Example]:
    return load_examples([DatasetSpec(path=GENERAL_SET)], seed=0)


def general_scores(model, tokenizer, examples: Sequence[Example], autocast) -> dict[str, float]:
    """Loss of the reference answers and answer accuracy (the answer appears in the reply) on the general set."""
    data_cfg = DataConfig(train=[GENERAL_SET], max_seq_len=256, cache=False)
    encoded, _ = encode_examples(examples, tokenizer, data_cfg)
    sft = get_objective("sft")
    scores = heldout_scores(model, sft, sft.params(), encoded, tokenizer.pad_token_id, 16, autocast)
    chat = use_chat_template(tokenizer, "auto")
    generated, _ = generation_metrics(model, tokenizer, examples, ["contains"], chat=chat, batch_size=16,
                                      max_new_tokens=24, autocast=autocast)
    return {"loss": scores["loss"], "accuracy": generated["contains"]}


def base_general_scores(model_cfg: ModelConfig, precision_name: str) -> dict[str, float]:
    """The untrained base model on the general set: the 'before' of forgetting."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = precision.resolve_precision(precision_name, device)
    model = load_causal_lm(model_cfg)
    precision.cast_frozen_weights(model, chosen)
    model.to(device).eval()
    return general_scores(model, load_tokenizer(model_cfg), general_examples(), precision.autocast_factory(chosen,
                                                                                                           device))


@torch.no_grad()
def decode_latency_ms(model, tokenizer, prompts: Sequence[list[int]], autocast, new_tokens: int = 16) -> float:
    """Milliseconds per generated token, greedy, one prompt at a time (interactive serving), every prompt
    generating exactly `new_tokens` tokens; the first prompt warms up and is not timed."""
    timings = []
    for index, prompt in enumerate(prompts):
        started = time.perf_counter()
        with autocast():
            generate_batch(model, tokenizer, [prompt], max_new_tokens=new_tokens, stop_ids=set())
        if index:
            timings.append((time.perf_counter() - started) / new_tokens)
    return 1000 * sorted(timings)[len(timings) // 2]


def measure_run(run_dir: Path, base_general: dict[str, float], latency_prompts: int = 5) -> dict:
    """Inference latency unmerged and merged, and the general-set scores after training, into compare.json."""
    trained = load_trained(run_dir)
    method = get_method(trained.config.method.name)
    test = load_examples(trained.config.data.test or trained.config.data.train, seed=0)[:latency_prompts + 1]
    chat = use_chat_template(trained.tokenizer, trained.config.data.template)
    prompts = [p for p, _ in filter(None, (prompt_ids_for_generation(e, trained.tokenizer, chat=chat) for e in test))]
    result: dict = {"latency_ms_per_token": decode_latency_ms(trained.model, trained.tokenizer, prompts,
                                                              trained.autocast)}
    after = general_scores(trained.model, trained.tokenizer, general_examples(), trained.autocast)
    result["general_before"], result["general_after"] = base_general, after
    result["forgetting"] = {"loss_change": after["loss"] - base_general["loss"],
                            "accuracy_change": after["accuracy"] - base_general["accuracy"]}
    del trained
    if method.merge is not None:
        merged = load_trained(run_dir, full_precision_base=True)
        model = method.merge(merged.model).eval()
        result["merged_latency_ms_per_token"] = decode_latency_ms(model, merged.tokenizer, prompts, merged.autocast)
    else:
        result["merged_latency_ms_per_token"] = None
    (Path(run_dir) / MEASURE_FILE).write_text(json.dumps(result, indent=2))
    return result
