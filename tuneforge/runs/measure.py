"""What a finished run costs at inference and what it forgot: the per-method measurements of
`tuneforge compare` (compare.json in the run), and the size and generation speed of a distillation's teacher and
students (speed.json), which the reports read."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from tuneforge.config import DataConfig, DatasetSpec, ModelConfig, load_config
from tuneforge.data.dataset import encode_examples, load_examples
from tuneforge.data.formats import Example
from tuneforge.data.kinds.labels import encode_labeled
from tuneforge.data.render import prompt_ids_for_generation, use_chat_template
from tuneforge.engine import precision
from tuneforge.engine.heldout import heldout_scores
from tuneforge.engine.labelled import predict
from tuneforge.evaluation.evaluate import generation_metrics
from tuneforge.evaluation.generate import generate_all, generate_batch
from tuneforge.methods import get_method
from tuneforge.models import no_progress_bars
from tuneforge.models.load import load_causal_lm, load_tokenizer
from tuneforge.models.student import layer_stack
from tuneforge.objectives import get_objective
from tuneforge.runs.evaluate import labelled_reader
from tuneforge.runs.export import merged_model
from tuneforge.runs.layout import CONFIG_FILE, MEASURE_FILE, SPEED_FILE, write_json
from tuneforge.runs.trained import load_trained

GENERAL_SET = "quickstart:general"


def general_examples() -> list[Example]:
    return load_examples([DatasetSpec(path=GENERAL_SET)], seed=0)


def general_scores(model, tokenizer, examples: Sequence[Example], base_replies: Sequence[str] | None,
                   autocast) -> dict:
    """On the general set: the model's greedy replies, its answer accuracy (the reference answer appears in
    the reply), and the loss of the base model's own replies under it (`base_replies`; None: this model is
    the base, and its replies are them). A rise of that loss from the base model to a tuned one says the
    tuned model has moved away from what the base model answered: forgetting, measured on behaviour rather
    than on reference texts the base model would not have produced either."""
    chat = use_chat_template(tokenizer, "auto")
    generated, samples = generation_metrics(model, tokenizer, examples, ["contains"], chat=chat, batch_size=16,
                                            max_new_tokens=24, autocast=autocast)
    replies = [s["prediction"] for s in samples]
    own = [Example(e.source, e.where, messages=(e.messages[0], {"role": "assistant", "content": reply}))
           for e, reply in zip(examples, replies if base_replies is None else base_replies, strict=True)]
    encoded, _ = encode_examples(own, tokenizer, DataConfig(train=[GENERAL_SET], max_seq_len=256, cache=False))
    sft = get_objective("sft")
    scores = heldout_scores(model, sft, sft.params(), encoded, tokenizer.pad_token_id, 16, autocast)
    return {"loss": scores["loss"], "accuracy": generated["contains"], "replies": replies}


def base_general_scores(model_cfg: ModelConfig, precision_name: str) -> dict:
    """The untrained base model on the general set: its greedy replies, and its scores (the 'before')."""
    device, chosen = precision.inference_placement(precision_name)
    model = precision.ready_for_inference(load_causal_lm(model_cfg), chosen, device)
    return general_scores(model, load_tokenizer(model_cfg), general_examples(), None,
                          precision.autocast_factory(chosen, device))


@torch.no_grad()
def decode_latency_ms(model, tokenizer, prompts: Sequence[list[int]], autocast, new_tokens: int = 16) -> float:
    """Milliseconds per generated token after the first (the step a served model repeats for every token, without
    the prompt's forward and `generate`'s set-up, which a longer answer does not repeat), greedy, one prompt at a
    time: a prompt's time for `new_tokens` tokens less its time for one, over new_tokens - 1; the median over the
    prompts, the first of which warms up and is not counted."""
    timings = []
    for index, prompt in enumerate(prompts):
        took = []
        for count in (1, new_tokens):
            started = time.perf_counter()
            with autocast():
                generate_batch(model, tokenizer, [prompt], max_new_tokens=count, stop_ids=set())
            took.append(time.perf_counter() - started)
        if index:
            timings.append((took[1] - took[0]) / (new_tokens - 1))
    return 1000 * sorted(timings)[len(timings) // 2]


def measure_run(run_dir: Path, base_general: dict[str, float], latency_prompts: int = 5) -> dict:
    """Inference latency unmerged and merged, and the general-set scores after training, into compare.json."""
    trained = load_trained(run_dir)
    method = get_method(trained.config.method.name)
    if trained.labels is not None:
        return _measure_classifier(run_dir, trained, method, latency_prompts)
    test = load_examples(trained.config.data.test or trained.config.data.train, seed=0)[:latency_prompts + 1]
    chat = use_chat_template(trained.tokenizer, trained.config.data.template)
    prompts = [p for p, _ in filter(None, (prompt_ids_for_generation(e, trained.tokenizer, chat=chat) for e in test))]
    result: dict = {"latency_ms_per_token": decode_latency_ms(trained.model, trained.tokenizer, prompts,
                                                              trained.autocast)}
    after = general_scores(trained.model, trained.tokenizer, general_examples(), base_general["replies"],
                           trained.autocast)
    result["general_before"] = {k: v for k, v in base_general.items() if k != "replies"}
    result["general_after"] = {k: v for k, v in after.items() if k != "replies"}
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


def _measure_classifier(run_dir: Path, trained, method, texts: int) -> dict:
    """A classifier's latency: milliseconds to label one test text (the median of `texts`, after one warm-up),
    unmerged and merged; forgetting is a language model's measure and does not apply."""
    cfg = trained.config
    records = load_examples(cfg.data.test or cfg.data.train, seed=0, reader=labelled_reader(cfg))[:texts + 1]
    examples, _ = encode_labeled(records, trained.tokenizer, trained.labels, cfg.data.max_seq_len)
    pad_id = trained.tokenizer.pad_token_id

    def latency(model, autocast) -> float:
        timings = []
        for index, example in enumerate(examples):
            started = time.perf_counter()
            predict(model, [example], pad_id, autocast=autocast)
            if index:
                timings.append(time.perf_counter() - started)
        return 1000 * sorted(timings)[len(timings) // 2]

    result: dict = {"latency_ms_per_text": latency(trained.model, trained.autocast), "forgetting": None,
                    "general_before": None, "general_after": None}
    del trained
    if method.merge is not None:
        merged = load_trained(run_dir, full_precision_base=True)
        result["merged_latency_ms_per_text"] = latency(method.merge(merged.model).eval(), merged.autocast)
    else:
        result["merged_latency_ms_per_text"] = None
    (Path(run_dir) / MEASURE_FILE).write_text(json.dumps(result, indent=2))
    return result


def measure_speed(run_dir: Path, prompts: int = 100, batch_size: int = 50) -> dict:
    """One run's model (what it trained merged in, in the run's precision): its layers, parameters, size and
    generation speed on its own test prompts, into speed.json (what the distillation report reads)."""
    run_dir = Path(run_dir)
    model, tokenizer, _ = merged_model(run_dir)
    cfg = load_config(run_dir / CONFIG_FILE).run
    device, chosen = precision.inference_placement(cfg.train.precision)
    model = precision.ready_for_inference(model, chosen, device)
    autocast = precision.autocast_factory(chosen, device)
    chat = use_chat_template(tokenizer, cfg.data.template)
    examples = load_examples(cfg.data.test or cfg.data.train, seed=0)[:prompts]
    asked = [p for p, _ in filter(None, (prompt_ids_for_generation(e, tokenizer, chat=chat) for e in examples))]
    speed = {"layers": len(layer_stack(model)[0]), "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
             "disk_mib": _bf16_size(model) / 2**20,
             "latency_ms": decode_latency_ms(model, tokenizer, asked[:11], autocast),
             "tokens_per_s": statistics.median(_throughput(model, tokenizer, asked, autocast, batch_size)
                                               for _ in range(3))}
    write_json(run_dir / SPEED_FILE, speed)
    return speed


def _throughput(model, tokenizer, asked: list, autocast, batch_size: int, new_tokens: int = 16) -> float:
    """Generated tokens per second over every prompt, in batches; each prompt generates exactly `new_tokens` (no
    stop), so the figure compares models however early they would stop."""
    started = time.perf_counter()
    with autocast():
        generate_all(model, tokenizer, asked, batch_size=batch_size, max_new_tokens=new_tokens, stop_ids=set())
    return len(asked) * new_tokens / (time.perf_counter() - started)


def _bf16_size(model: torch.nn.Module) -> int:
    """Bytes of the model's weights written as bf16 safetensors (the same dtype for teacher and student)."""
    with tempfile.TemporaryDirectory() as scratch, no_progress_bars():
        model.to(torch.bfloat16).save_pretrained(scratch, safe_serialization=True)
        return sum(p.stat().st_size for p in Path(scratch).glob("*.safetensors"))
