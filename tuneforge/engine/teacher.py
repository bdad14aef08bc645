"""Distillation's teacher: a frozen model, next to the reference, that gives its next-token distribution at the
trained positions of each batch. It is a model directory, 'default', a hub id, or a finished tuneforge run (its
adapter applied), loaded once in the run's precision on the run's device."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from tuneforge.config import IGNORE_INDEX, ModelConfig, RunConfig
from tuneforge.data.formats import Example
from tuneforge.engine import precision
from tuneforge.errors import ConfigError, TrainingError
from tuneforge.models.digest import model_digest
from tuneforge.models.load import load_causal_lm
from tuneforge.models.parts import label_logits
from tuneforge.objectives.base import TeacherTokens
from tuneforge.objectives.distill import log1mexp, priority_sample
from tuneforge.objectives.params import KdParams, ObjectiveParams, SeqkdParams


def sequence_digest(input_ids: torch.Tensor, labels: torch.Tensor) -> bytes:
    """A sequence's identity in a cache: its tokens and the labels the loss uses (from the second on: a packed
    batch masks each sequence's first label, which nothing predicts anyway)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(input_ids.to(torch.int64).cpu().numpy().tobytes())
    digest.update(labels[1:].to(torch.int64).cpu().numpy().tobytes())
    return digest.digest()


def batch_sequences_of(batch: dict[str, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    """Each sequence of a padded or packed batch with its trained-position count, in the order the label positions
    come (`models.parts`): a sequence's tokens are contiguous in row-major order."""
    trained = batch["labels"][:, 1:] != IGNORE_INDEX
    owners = batch["sequence_ids"][:, 1:][trained]
    order, counts = torch.unique_consecutive(owners, return_counts=True)
    flat_ids, flat_labels, flat_owner = (batch["input_ids"].flatten(), batch["labels"].flatten(),
                                         batch["sequence_ids"].flatten())
    return [(flat_ids[flat_owner == s], flat_labels[flat_owner == s], int(n))
            for s, n in zip(order.tolist(), counts.tolist(), strict=True)]


class DamagedCache(Exception):
    """A cached file whose contents are not what was written (cut short, edited, unreadable): computed again."""


class CachedTeacher:
    """The teacher's top-k (or k priority-sampled) log-probs at every trained position of the examples it was
    computed for, read from a safetensors file and looked up per sequence by `sequence_digest` (no teacher model in
    memory). The file carries the digest of its tensors: one cut short or edited is refused (`DamagedCache`)."""

    def __init__(self, path: Path, note: str = ""):
        try:
            tensors = load_file(str(path))
            with safe_open(str(path), "pt") as handle:
                metadata = handle.metadata() or {}
            self.logprobs, self.ids, self.offsets = tensors["logprobs"], tensors["ids"], tensors["offsets"].tolist()
            self.rest, digests = tensors["rest"], tensors["digests"]
        except (SafetensorError, OSError, KeyError) as exc:
            raise DamagedCache(f"unreadable ({str(exc)[:200]})") from None
        if tensors.get("sha256") is None or bytes(tensors.pop("sha256").numpy()) != tensors_sha256(tensors):
            raise DamagedCache("not what was written to it (changed or damaged since)")
        self.top_k_by = metadata.get("top_k_by", "top")
        self.rows = {bytes(d): i for i, d in enumerate(digests.numpy())}
        self.path, self.top_k, self.note = path, self.logprobs.shape[-1], note

    def describe(self) -> str:
        return (f"{_support(self.top_k, self.top_k_by)} at {self.logprobs.shape[0]} trained positions, cached in "
                f"{self.path} ({_mib(self.path.stat().st_size)} on disk and in memory)" + self.note)

    def __call__(self, batch: dict[str, torch.Tensor]) -> TeacherTokens:
        parts = []
        for tokens, labels, count in batch_sequences_of(batch):
            row = self.rows.get(sequence_digest(tokens, labels))
            if row is None or self.offsets[row + 1] - self.offsets[row] != count:
                raise TrainingError(f"the teacher cache {self.path} has no entry for a sequence of this batch "
                                    "(the data changed after it was written)\n  fix: delete the file; the next "
                                    "run computes it again")
            parts.append(slice(self.offsets[row], self.offsets[row + 1]))
        device = batch["input_ids"].device
        return TeacherTokens(torch.cat([self.logprobs[p] for p in parts]).to(device),
                             torch.cat([self.ids[p] for p in parts]).to(device=device, dtype=torch.long),
                             torch.cat([self.rest[p] for p in parts]).to(device),
                             sampled=self.top_k_by == "priority")


def write_cache(teacher: LiveTeacher, examples: Sequence, pad_id: int, batch_size: int, path: Path) -> None:
    """Run the teacher once over `examples` and write its top-k (or k priority-sampled) per trained position,
    atomically (a temporary file renamed into place), each distinct sequence once. Samples come from their own
    seeded generator: the same file every time, and the run's random stream untouched."""
    from tuneforge.data.batching import collate, model_device, to_device

    digests, offsets, logprobs, ids, rests, seen = [], [0], [], [], [], set()
    device = model_device(teacher.model)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        for start in range(0, len(examples), batch_size):
            batch = to_device(collate(examples[start: start + batch_size], pad_id), device)
            tokens = teacher(batch)
            at = 0
            for sequence, labels, count in batch_sequences_of(batch):
                digest = sequence_digest(sequence, labels)
                if digest not in seen:
                    seen.add(digest)
                    digests.append(torch.frombuffer(bytearray(digest), dtype=torch.uint8))
                    logprobs.append(tokens.logprobs[at: at + count].float().cpu())
                    ids.append(tokens.ids[at: at + count].to(torch.int32).cpu())
                    rests.append(tokens.rest[at: at + count].float().cpu())
                    offsets.append(offsets[-1] + count)
                at += count
    tensors = {"digests": torch.stack(digests), "offsets": torch.tensor(offsets, dtype=torch.int64),
               "logprobs": torch.cat(logprobs).contiguous(), "ids": torch.cat(ids).contiguous(),
               "rest": torch.cat(rests).contiguous()}
    # the digest of the others travels as a tensor of its own (safetensors writes metadata in no fixed order)
    tensors["sha256"] = torch.frombuffer(bytearray(tensors_sha256(tensors)), dtype=torch.uint8)
    _write_atomically(path, save(tensors, metadata={"top_k_by": teacher.top_k_by}))


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> bytes:
    """One digest over named tensors: their names, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.digest()


def _support(top_k: int | None, top_k_by: str) -> str:
    if not top_k:
        return "the whole vocabulary"
    return f"{top_k} tokens priority-sampled from it" if top_k_by == "priority" else f"its top {top_k} tokens"


def _mib(size: float) -> str:
    return f"{size / 2**20:.1f} MiB"


class LiveTeacher:
    """The teacher's log-probabilities over the whole vocabulary, or its top `top_k` (at T = 1) with the log-mass
    the rest of the vocabulary holds at the loss's `temperature`, or (`top_k_by` 'priority') `top_k` tokens
    priority-sampled from it at the temperature with their unbiased estimates, computed per batch."""

    def __init__(self, model: torch.nn.Module, autocast, vocab: int, top_k: int | None, temperature: float = 1.0,
                 top_k_by: str = "top"):
        self.model, self.autocast, self.vocab, self.top_k = model, autocast, vocab, top_k
        self.temperature, self.top_k_by = temperature, top_k_by

    def describe(self) -> str:
        return f"{sum(p.numel() for p in self.model.parameters()) / 1e6:.1f}M parameters, " + _support(
            self.top_k, self.top_k_by) + " at each trained token"

    @torch.no_grad()
    def __call__(self, batch: dict[str, torch.Tensor]) -> TeacherTokens:
        with self.autocast():
            logits = label_logits(self.model, batch)[0][:, : self.vocab]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        if self.top_k is None:
            return TeacherTokens(logprobs)
        if self.top_k_by == "priority":
            ids, estimate = priority_sample(torch.log_softmax(logits.float() / self.temperature, dim=-1), self.top_k)
            return TeacherTokens(estimate, ids, torch.full_like(estimate[:, 0], -torch.inf), sampled=True)
        top = logprobs.topk(self.top_k, dim=-1)
        tempered = top.values if self.temperature == 1 else \
            torch.log_softmax(logits.float() / self.temperature, dim=-1).gather(-1, top.indices)
        return TeacherTokens(top.values, top.indices, log1mexp(torch.logsumexp(tempered, dim=-1)))


def load_teacher(source: TeacherSource | None, params: ObjectiveParams, chosen: str, device: torch.device,
                 examples: Sequence = (), batch_size: int = 16) -> LiveTeacher | CachedTeacher | None:
    """The objective's teacher (None for an objective without one), frozen, in the run's precision. With `top_k`
    and `cache`, its top-k over `examples`, from the cache or computed now (`batch_size` at a time) and cached."""
    if source is None or not isinstance(params, KdParams):
        return None  # no teacher in the loss (seqkd's teacher writes the training answers before training)
    cached, note = None, ""
    if params.top_k and params.cache and examples:
        cached = cache_path(source.identity(), params.top_k, params.temperature, chosen, examples, params.top_k_by)
        if cached.is_file():
            try:
                return CachedTeacher(cached)
            except DamagedCache as exc:
                note = f"; computed again: the cached file was {exc}"
    live = LiveTeacher(source.model(chosen, device), precision.autocast_factory(chosen, device),
                       len(source.tokenizer), params.top_k, params.temperature, params.top_k_by)
    if cached is None:
        return live
    write_cache(live, list(examples), source.student_tokenizer.pad_token_id, batch_size, cached)
    return CachedTeacher(cached, note)  # the teacher's weights are let go


@dataclass(frozen=True)
class TeacherSource:
    """Where a teacher's weights are (`path`) and its tokenizer, checked against the student's (`check`) before any
    weights load. This one is a model: a model directory, 'default' or a hub id; a finished tuneforge run is
    `runs.recipe.RunTeacher`."""

    path: str
    tokenizer: object
    student_tokenizer: object

    def check(self, where: str, named: str, student: str) -> TeacherSource:
        """Refused unless teacher and student share one vocabulary (the divergences compare their distributions
        token by token)."""
        if self.tokenizer.get_vocab() != self.student_tokenizer.get_vocab():
            raise ConfigError(f"{where}: the teacher ({named}) and the student ({student}) have different "
                              f"vocabularies ({len(self.tokenizer)} and {len(self.student_tokenizer)} tokens), so "
                              "their next-token distributions cannot be compared token by token\n  fix: distil into a "
                              "student made from the teacher (`tuneforge student make --from TEACHER`), or one of the "
                              "teacher's family that shares its tokenizer")
        return self

    def model(self, chosen: str, device: torch.device) -> torch.nn.Module:
        """The teacher's weights, frozen, in the precision `chosen`, for inference."""
        return precision.ready_for_inference(load_causal_lm(ModelConfig(path=self.path)), chosen, device)

    def identity(self) -> dict:
        """What names the teacher's outputs: the digest of its weight files and config (or a hub id's revision)."""
        return {"model": model_digest(ModelConfig(path=self.path))}


CACHE_VERSION = 3  # 2: each position's rest of the vocabulary at the temperature; 3: keyed by content digests


def cache_path(identity: dict, top_k: int, temperature: float, chosen: str, examples: Sequence,
               top_k_by: str = "top") -> Path:
    """Where a teacher's top-k (or k priority-sampled) over these examples is kept: the key covers the teacher's
    weights, k, how they are chosen, the temperature (the rest's mass, or the samples, are at it), the precision it
    ran in and every sequence's tokens and labels."""
    from tuneforge.config import tuneforge_home
    from tuneforge.data.batching import batch_sequences

    which = {} if top_k_by == "top" else {"top_k_by": top_k_by}  # top-k caches keep their names
    digest = hashlib.sha256(json.dumps({"version": CACHE_VERSION, "teacher": identity, "top_k": top_k, **which,
                                        "temperature": temperature, "precision": chosen}, sort_keys=True).encode())
    for sequence in batch_sequences(list(examples)):
        digest.update(sequence_digest(torch.tensor(sequence.input_ids), torch.tensor(sequence.labels)))
    return tuneforge_home() / "cache" / "teacher" / f"{digest.hexdigest()[:32]}.safetensors"


ANSWERS_VERSION = 2  # 2: keyed by content digests, the answers' own digest inside


def teacher_answers(source: TeacherSource, cfg: RunConfig, params: SeqkdParams, records: list[Example],
                    console=None) -> list[Example]:
    """Sequence-level distillation's data (Kim & Rush, 2016, https://arxiv.org/abs/1606.07947): each record's
    prompt with the teacher's answer in place of the data's, generated in batches once and kept on disk under
    $TUNEFORGE_HOME keyed by the teacher's weights, the generation settings and the prompts."""
    from tuneforge.config import tuneforge_home
    from tuneforge.data.render import end_of_turn_ids, prompt_ids_for_generation, use_chat_template
    from tuneforge.evaluation.generate import generate_all

    device, chosen = precision.inference_placement(cfg.train.precision)
    chat = use_chat_template(source.tokenizer, cfg.data.template)
    prompts = [prompt_ids_for_generation(e, source.tokenizer, chat=chat)[0] for e in records]
    digest = hashlib.sha256(json.dumps({"version": ANSWERS_VERSION, "teacher": source.identity(), "chat": chat,
                                        "precision": chosen, **params.model_dump(exclude={"teacher"})},
                                       sort_keys=True).encode())
    for prompt in prompts:
        digest.update(json.dumps(prompt).encode())
    path = tuneforge_home() / "cache" / "seqkd" / f"{digest.hexdigest()[:32]}.json"
    answers, damaged = _cached_answers(path, len(prompts))
    said = f"read from {path}"
    if answers is None:
        model = source.model(chosen, device)
        torch.manual_seed(params.seed)
        with precision.autocast_factory(chosen, device)():
            answers = generate_all(model, source.tokenizer, prompts, batch_size=cfg.eval.batch_size,
                                   max_new_tokens=params.max_new_tokens, stop_ids=end_of_turn_ids(source.tokenizer),
                                   temperature=params.temperature)
        del model
        _write_atomically(path, json.dumps({"answers": answers, "sha256": _answers_sha256(answers)}).encode())
        said = f"written once to {path}" + (f" (computed again: the cached file was {damaged})" if damaged else "")
    same = sum(a == e.prompt_and_reference()[1].strip() for a, e in zip(answers, records, strict=True))
    if console:
        console.info(f"seqkd: the teacher's answers to {len(records)} training prompts, {said}; "
                     f"{100 * same / max(len(records), 1):.1f}% equal the data's own")
    return [replace(e, messages=(*e.prompt_and_reference()[0], {"role": "assistant", "content": answer}),
                    prompt_turns=len(e.prompt_and_reference()[0])) for e, answer in zip(records, answers, strict=True)]


def _cached_answers(path: Path, count: int) -> tuple[list[str] | None, str]:
    """The answers cached in `path` (None when there are none), and what is wrong with a file that holds other than
    `count` answers whose digest matches them."""
    if not path.is_file():
        return None, ""
    try:
        saved = json.loads(path.read_text())
        answers = saved["answers"]
    except (OSError, ValueError, KeyError, TypeError):
        return None, "unreadable"
    if not isinstance(answers, list) or len(answers) != count or saved.get("sha256") != _answers_sha256(answers):
        return None, "not what was written to it (changed or damaged since)"
    return answers, ""


def _answers_sha256(answers: list) -> str:
    return hashlib.sha256(json.dumps(answers).encode()).hexdigest()


def _write_atomically(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, scratch = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
        os.replace(scratch, path)
    finally:
        Path(scratch).unlink(missing_ok=True)
