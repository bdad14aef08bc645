"""Access to a causal LM's final hidden states and output head, through any PEFT wrapper, and the
log-likelihood of the trained tokens computed from them.

The LM head runs only where labels are (a large saving: the vocabulary projection is a big share of a
small model's FLOPs), so callers get hidden states rather than full logits.
"""

from __future__ import annotations

import contextlib
import functools
import weakref

import torch
import torch.nn.functional as F

from tuneforge.config import IGNORE_INDEX


def final_hidden_states(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Post-norm hidden states [batch, seq, hidden] of the batch's own tokens, computed without the
    full-vocabulary logits. Virtual tokens a prompt-learning method prepends are cut off again."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                position_ids=batch.get("position_ids"), output_hidden_states=True, logits_to_keep=1,
                use_cache=False)
    hidden = out.hidden_states[-1]
    return hidden[:, hidden.shape[1] - batch["input_ids"].shape[1]:]


def output_head(model) -> torch.nn.Module:
    return model.get_output_embeddings()


def label_token_nll(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed negative log-likelihood of the label tokens, and their count."""
    logits, targets, _ = label_logits(model, batch)
    return F.cross_entropy(logits, targets, reduction="sum"), int(targets.numel())


def label_token_logps(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The log-probability of every label token, and the index of the sequence it belongs to (in
    `batch_sequences` order). Works on padded and packed batches alike through `sequence_ids`."""
    hidden, targets, owner = label_hidden_states(model, batch)
    return -F.cross_entropy(output_head(model)(hidden).float(), targets, reduction="none"), owner


def label_hidden_states(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The final hidden state [labels, hidden] at each position that predicts a label token (the state that
    has read everything before that token: what a value head scores), the label tokens, and the index of
    the sequence each belongs to. Label tokens come in order within each sequence."""
    hidden = final_hidden_states(model, batch)
    if "label_positions" in batch:  # a layout that names each label's predicting position
        return hidden.flatten(0, 1)[batch["label_positions"]], batch["label_targets"], batch["label_owner"]
    targets = batch["labels"][:, 1:]
    trained = targets != IGNORE_INDEX
    return hidden[:, :-1][trained], targets[trained], batch["sequence_ids"][:, 1:][trained]


def attach_scalar_head(model, name: str) -> None:
    """A zero-initialised linear head from the hidden size to one number (a reward, a value), as
    `model.<name>`; zero, so every output starts equal."""
    weight = model.get_output_embeddings().weight
    head = torch.nn.Linear(weight.shape[1], 1)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    setattr(model, name, head.to(weight.device))


def save_scalar_head(model, name: str, path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in getattr(model, name).state_dict().items()}
    save_file(state, str(path))


def load_scalar_head(model, name: str, path) -> None:
    from safetensors.torch import load_file

    attach_scalar_head(model, name)
    getattr(model, name).load_state_dict(load_file(str(path)))


def sequence_logps(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence (in `batch_sequences` order): the summed log-probability of its label tokens, and how many
    label tokens it has."""
    token_logps, owner = label_token_logps(model, batch)
    count = int(batch["num_sequences"])
    sums = torch.zeros(count, dtype=token_logps.dtype, device=token_logps.device).index_add(0, owner, token_logps)
    tokens = torch.zeros(count, dtype=token_logps.dtype, device=token_logps.device).index_add(
        0, owner, torch.ones_like(token_logps))
    return sums, tokens


def label_logits(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fp32 logits at the positions that predict a label token, those labels, and the [batch, seq-1] mask."""
    hidden = final_hidden_states(model, batch)
    targets = batch["labels"][:, 1:]
    trained = targets != IGNORE_INDEX
    return output_head(model)(hidden[:, :-1][trained]).float(), targets[trained], trained


ACTIVATIONS = {"relu": torch.nn.ReLU, "gelu": torch.nn.GELU, "silu": torch.nn.SiLU, "tanh": torch.nn.Tanh}


class Bottleneck(torch.nn.Module):
    """Wraps a sub-layer: output + up(act(down(output))), on the first element when the output is a tuple."""

    def __init__(self, inner: torch.nn.Module, hidden: int, width: int, nonlinearity: str):
        super().__init__()
        self.inner = inner
        self.down = torch.nn.Linear(hidden, width)
        self.act = ACTIVATIONS[nonlinearity]()
        self.up = torch.nn.Linear(width, hidden)
        torch.nn.init.zeros_(self.up.weight)
        torch.nn.init.zeros_(self.up.bias)
        self.enabled = True

    def forward(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        if not self.enabled:
            return out
        hidden = out[0] if isinstance(out, tuple) else out
        adapted = hidden + self.up(self.act(self.down(hidden)))
        return (adapted, *out[1:]) if isinstance(out, tuple) else adapted


PACKABLE_ENCODERS = ("bert",)  # absolute positions from position_ids, a 4-D attention mask honoured (tested)


def packable_encoder(model) -> torch.nn.Module | None:
    """The transformer stack of a BERT-style classifier whose rows can be packed (`unpacked_encoder_output`),
    or None. Found through any wrapper (peft, DDP) by its name, <base model prefix>.encoder."""
    if model in _ENCODERS:  # looked up once per model: walking its modules costs a millisecond a step
        return _ENCODERS[model]
    config = getattr(model, "config", None) or model.module.config  # DDP keeps the model in .module
    found = None
    if getattr(config, "model_type", None) in PACKABLE_ENCODERS:
        wanted = f"{config.model_type}.encoder"
        found = next((m for name, m in model.named_modules() if name == wanted or name.endswith("." + wanted)), None)
    _ENCODERS[model] = found
    return found


_ENCODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def unpacked_encoder_output(model, index: torch.Tensor, first_token_only: bool = False):
    """While open, the encoder stack's output (packed rows [rows, width, hidden]) is gathered back into the
    padded layout [sequences, length, hidden] by `index` (each token's place in the flattened rows), so the
    pooler, the head and the loss see exactly what they would see for the unpacked batch. `first_token_only`
    (a head that reads only each text's first token, [CLS], as BERT's pooler does): the last layer computes its
    keys and values for every token but its queries, attention output and feed-forward for the first tokens
    alone (`_first_token_layer`), and the stack's output is [sequences, 1, hidden]."""
    encoder = packable_encoder(model)

    def gather(module, args, output):
        hidden = output[0]
        unpacked = hidden if first_token_only else hidden.reshape(-1, hidden.shape[-1])[index]
        if isinstance(output, tuple):
            return (unpacked, *output[1:])
        output["last_hidden_state"] = unpacked  # a ModelOutput: its attribute follows
        return output

    last = encoder.layer[-1]
    # a checkpointed layer is recomputed in the backward pass, after this context closes: left whole
    first_token_only = first_token_only and not getattr(last, "gradient_checkpointing", False)
    handle = encoder.register_forward_hook(gather)
    if first_token_only:
        last.forward = functools.partial(_first_token_layer, last, index[:, 0])
    try:
        yield
    finally:
        handle.remove()
        if first_token_only:
            del last.forward  # the class's own forward again


def _first_token_layer(layer, starts: torch.Tensor, hidden_states: torch.Tensor,
                       attention_mask: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
    """A BERT layer's forward for the first token of each sequence only: `starts` are their places in the
    flattened rows of `hidden_states` [rows, width, hidden]. Keys and values come from every token of the row, the
    query from the first token alone, through the layer's own modules (an adapter on them applies) and the
    model's attention kernel; the rest of the layer (attention output, feed-forward) then runs on one token a
    sequence instead of all of them, about 10/12 of a layer's work. Returns [sequences, 1, hidden]."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.bert.modeling_bert import eager_attention_forward

    attention = layer.attention.self
    width = hidden_states.shape[1]
    rows, positions = starts // width, starts % width
    first = hidden_states.reshape(-1, hidden_states.shape[-1])[starts]

    def heads(x: torch.Tensor) -> torch.Tensor:  # [..., tokens, hidden] -> [..., heads, tokens, head size]
        return x.view(*x.shape[:-1], -1, attention.attention_head_size).transpose(-3, -2)

    query = heads(attention.query(first)[:, None])
    key, value = heads(attention.key(hidden_states))[rows], heads(attention.value(hidden_states))[rows]
    mask = None if attention_mask is None else attention_mask[rows, :, positions].unsqueeze(-2)
    kernel = ALL_ATTENTION_FUNCTIONS.get_interface(attention.config._attn_implementation, eager_attention_forward)
    context, _ = kernel(attention, query, key, value, mask, dropout=attention.dropout.p if attention.training else 0.0,
                        scaling=attention.scaling)
    attended = layer.attention.output(context.reshape(len(starts), -1), first)
    return layer.output(layer.intermediate(attended), attended)[:, None]
