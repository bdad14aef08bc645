"""Access to a causal LM's final hidden states and output head, through any PEFT wrapper, and the
log-likelihood of the trained tokens computed from them.

The LM head runs only where labels are (a large saving: the vocabulary projection is a big share of a
small model's FLOPs), so callers get hidden states rather than full logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tuneforge.config import IGNORE_INDEX


def final_hidden_states(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Post-norm hidden states [batch, seq, hidden], computed without the full-vocabulary logits."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                position_ids=batch.get("position_ids"), output_hidden_states=True, logits_to_keep=1,
                use_cache=False)
    return out.hidden_states[-1]


def output_head(model) -> torch.nn.Module:
    return model.get_output_embeddings()


def label_token_nll(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed negative log-likelihood of the label tokens, and their count."""
    hidden = final_hidden_states(model, batch)
    targets = batch["labels"][:, 1:]
    trained = targets != IGNORE_INDEX
    logits = output_head(model)(hidden[:, :-1][trained]).float()
    nll = F.cross_entropy(logits, targets[trained], reduction="sum")
    return nll, int(trained.sum())
