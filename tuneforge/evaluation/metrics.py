"""Text metrics over predictions and references. ROUGE and BLEU come from rouge-score and sacrebleu."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence


def normalise_answer(text: str) -> str:
    """Whitespace-insensitive, case-sensitive comparison form."""
    return re.sub(r"\s+", " ", text).strip()


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    hits = sum(normalise_answer(p) == normalise_answer(r) for p, r in zip(predictions, references, strict=True))
    return {"exact_match": 100.0 * hits / max(len(references), 1)}


def contains(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Answer accuracy for short factual answers given in prose: the reference occurs in the prediction as a
    whole word or phrase, ignoring case."""
    hits = sum(re.search(rf"(?<!\w){re.escape(normalise_answer(r))}(?!\w)", normalise_answer(p), re.IGNORECASE)
               is not None for p, r in zip(predictions, references, strict=True))
    return {"contains": 100.0 * hits / max(len(references), 1)}


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    from rouge_score import rouge_scorer

    kinds = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(kinds), use_stemmer=True)
    totals = dict.fromkeys(kinds, 0.0)
    for prediction, reference in zip(predictions, references, strict=True):
        scores = scorer.score(reference, prediction)
        for kind in kinds:
            totals[kind] += scores[kind].fmeasure
    return {kind: 100.0 * total / max(len(references), 1) for kind, total in totals.items()}


def bleu(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    import sacrebleu

    return {"bleu": sacrebleu.corpus_bleu(list(predictions), [list(references)]).score}


GENERATION_METRICS: dict[str, Callable[[Sequence[str], Sequence[str]], dict[str, float]]] = {
    "exact_match": exact_match, "contains": contains, "rouge": rouge, "bleu": bleu,
}
