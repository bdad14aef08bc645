"""The GGUF export run by llama.cpp itself (llama-cpp-python, built from source by `make gguf-check`): the
quickstart run exported as f16 and q8_0 tokenizes the test prompts as tuneforge does, its logits are within a
stated tolerance of the merged model's, and its greedy answers score the same exact match (f16) or within 2
points (q8_0). Slow: trains the quickstart (about 2 minutes on 2 cores) unless TUNEFORGE_GGUF_RUN names a
finished quickstart run."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tuneforge.api import train
from tuneforge.config import DatasetSpec
from tuneforge.data.dataset import load_examples
from tuneforge.data.render import end_of_turn_ids, prompt_ids_for_generation
from tuneforge.evaluation.generate import generate_all
from tuneforge.evaluation.metrics import GENERATION_METRICS
from tuneforge.runs.export import export_run, merged_model

pytestmark = pytest.mark.slow
llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: run `make gguf-check`")

ROOT = Path(__file__).resolve().parents[1]
MAX_NEW_TOKENS, EXAMPLES = 16, 100
# largest logit difference over a prompt, as a share of the largest logit: llama.cpp multiplies f16 weights by
# activations it rounds to f16 itself, q8_0 weights by activations it rounds to 8 bits per block of 32
LOGIT_TOLERANCE = {"f16": 0.02, "q8_0": 0.1, "q4_k_m": 0.5}  # measured 0.0018, 0.058, 0.336
EXACT_MATCH_POINTS = {"f16": 0.0, "q8_0": 2.0, "q4_k_m": 10.0}  # measured 0, 0, +1 and +3 (97-98/100 the same)


def llama_greedy(llm, prompt: list[int], stop_ids: set[int]) -> list[int]:
    out: list[int] = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        if token in stop_ids or len(out) == MAX_NEW_TOKENS:
            break
        out.append(token)
    return out


def test_llama_cpp_runs_the_quickstart_export_as_tuneforge_does(tmp_path):
    run_dir = Path(os.environ.get("TUNEFORGE_GGUF_RUN") or train(
        ROOT / "examples/quickstart.yaml", overrides=[f"output.dir={tmp_path / 'run'}", "eval.compare_base=false"],
        quiet=True).run_dir)
    out = export_run(run_dir, tmp_path / "gguf", merge=True, gguf=list(EXACT_MATCH_POINTS))
    model, tokenizer, _ = merged_model(run_dir)
    model.eval()
    records = load_examples([DatasetSpec(path="quickstart:test")], seed=0)[:EXAMPLES]
    pairs = [prompt_ids_for_generation(record, tokenizer, chat=True) for record in records]
    prompts, references = [p for p, _ in pairs], [r for _, r in pairs]
    stops = end_of_turn_ids(tokenizer)
    with torch.no_grad():
        ours = generate_all(model, tokenizer, prompts, batch_size=50, max_new_tokens=MAX_NEW_TOKENS, stop_ids=stops)
        reference_logits = model(input_ids=torch.tensor([prompts[0]])).logits[0].numpy()
    exact = GENERATION_METRICS["exact_match"]
    ours_em = exact(ours, references)["exact_match"]
    print(f"\ntuneforge (merged, fp32): exact match {ours_em:.1f} on {len(prompts)} quickstart test prompts")
    for quant in EXACT_MATCH_POINTS:
        llm = llama_cpp.Llama(str(out / f"model-{quant}.gguf"), n_ctx=512, n_threads=2, logits_all=True,
                              verbose=False)
        # llama.cpp's own tokenizer, reading the rendered chat text with its control tokens, gives tuneforge's ids
        for prompt in prompts[:20]:
            assert llm.tokenize(tokenizer.decode(prompt).encode(), add_bos=False, special=True) == prompt
        llm.reset()
        llm.eval(prompts[0])
        logits = np.asarray(llm.scores[: len(prompts[0])])
        drift = float(np.abs(logits - reference_logits).max() / np.abs(reference_logits).max())
        theirs = [tokenizer.decode(llama_greedy(llm, p, stops), skip_special_tokens=True).strip() for p in prompts]
        theirs_em = exact(theirs, references)["exact_match"]
        same = sum(a == b for a, b in zip(ours, theirs, strict=True))
        print(f"llama.cpp {quant}: exact match {theirs_em:.1f}; answers identical to tuneforge's {same}/"
              f"{len(prompts)}; logits within {drift:.4f} of the largest")
        assert drift <= LOGIT_TOLERANCE[quant], quant
        assert abs(theirs_em - ours_em) <= EXACT_MATCH_POINTS[quant], quant
        llm.close()
