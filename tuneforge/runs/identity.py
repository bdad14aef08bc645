"""What a run is. Before training, its fingerprint (the training data's tokens and labels, the settings that decide
the weights, the tokenizer), recorded in run.json when it starts and compared with the config and data a
`--resume` brings. After, its weights: the digest of every file that produces its outputs — the base model's
and the run's own (adapter or full weights) — recorded by every command that makes a run (train, merge), checked
whenever the run is loaded, and the key of every cache derived from it (a teacher's top-k, seqkd's answers)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tuneforge.config import ModelConfig, load_config
from tuneforge.data.stream import StreamedExamples
from tuneforge.engine.console import RunConsole
from tuneforge.errors import CheckpointError, RunDirError
from tuneforge.models.digest import model_digest, remembered_sha256
from tuneforge.runs.layout import CONFIG_FILE, RUN_FILE, SUB_RUNS, read_json


def fingerprint_of(cfg, prepared) -> dict:
    """The run's identity from its config and prepared data (`engine.session.Prepared`)."""
    data = hashlib.sha256()
    streamed = isinstance(prepared.train, StreamedExamples)
    if streamed:  # the files, by digest (remembered: a 10 GB file is read once), and their first block as trained
        for path in prepared.train.records.files():
            data.update(remembered_sha256(path).encode())
    for item in prepared.train.first if streamed else prepared.train:
        for sequence in item.sequences:  # a preference pair's rejected side is data too
            data.update(json.dumps(sequence.input_ids).encode())
            data.update(json.dumps(sequence.labels).encode())
    tokenizer = prepared.tokenizer.backend_tokenizer.to_str() + json.dumps(prepared.tokenizer.special_tokens_map,
                                                                           sort_keys=True)
    training = training_config(cfg)
    return {"data_sha256": data.hexdigest(),
            "config_sha256": hashlib.sha256(json.dumps(training, sort_keys=True).encode()).hexdigest(),
            "tokenizer_sha256": hashlib.sha256(tokenizer.encode()).hexdigest(),
            # the settings themselves, so a resume can name what changed even if config.yaml was edited
            "training_config": training}


def training_config(cfg) -> dict:
    """What decides the trained weights: everything but evaluation and output settings and how processes share
    the work (so a run resumes with any number of processes), and the strategy when it is plain `single` (so
    runs from before strategies existed resume)."""
    sharing = {"collective_timeout_s", "distributed"}
    data = cfg.model_dump(mode="json", exclude={"eval": True, "output": True, "train": sharing})
    if data.get("strategy") == {"name": "single"}:
        del data["strategy"]
    return data


def check_same_run(run_dir: Path, saved: dict, cfg, fingerprint: dict, force: bool, console: RunConsole) -> None:
    """A resume continues the run that was recorded with the fingerprint `saved`: the same data, training config
    and tokenizer, or it stops naming what changed (unless forced)."""
    changed = [name for name in ("data", "config", "tokenizer")
               if f"{name}_sha256" in saved and saved[f"{name}_sha256"] != fingerprint[f"{name}_sha256"]]
    if not changed:
        return
    details = []
    if "data" in changed:
        details.append("the training data (its tokens or labels) changed")
    if "config" in changed:
        before = saved.get("training_config") or training_config(load_config(run_dir / CONFIG_FILE).run)
        keys = _changed_keys(before, training_config(cfg))
        details.append("config keys changed: " + (", ".join(keys) or "(a default value)"))
    if "tokenizer" in changed:
        details.append("the tokenizer changed")
    message = f"--resume: this is not the run in {run_dir}: " + "; ".join(details)
    if force:
        console.info(f"warning: {message}; continuing because of --force")
        return
    raise CheckpointError(f"{message}\n  fix: resume with the original config and data, start a new run in "
                          "another output.dir, or pass --force to continue with the changes")


def _changed_keys(old, new, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [key for name in sorted(set(old) | set(new))
                for key in _changed_keys(old.get(name), new.get(name), f"{prefix}{name}.")]
    return [] if old == new else [f"{prefix.rstrip('.')} ({old!r} -> {new!r})"]


def weights_record(run_dir: Path, base: ModelConfig) -> dict:
    """What run.json records of the weights that produce the run's outputs: each of its own tensor files' sha256
    (its sub-runs' checkpoints and states excepted), the base model's digest, and one digest over both."""
    own = {str(p.relative_to(run_dir)): remembered_sha256(p) for p in sorted(Path(run_dir).glob("**/*.safetensors"))
           if p.relative_to(run_dir).parts[0] not in SUB_RUNS}
    base_sha256 = model_digest(base)
    return {"weights_sha256": own, "base_sha256": base_sha256, "identity_sha256": _combined(base_sha256, own)}


def _combined(base_sha256: str, own: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps({"base": base_sha256, "weights": own}, sort_keys=True).encode()).hexdigest()


def verify_weights(run_dir: Path) -> None:
    """Every weight file run.json records must be there and match its digest: a file damaged, cut short or edited
    after the run wrote it is refused, naming it, before anything loads it."""
    run_dir = Path(run_dir)
    for name, digest in (read_json(run_dir / RUN_FILE).get("weights_sha256") or {}).items():
        path = run_dir / name
        if not path.is_file():
            raise RunDirError(f"{path} is missing, but {run_dir / RUN_FILE} records it as one of the run's weights\n"
                              "  fix: restore the file from a copy of the run, or train the run again")
        if remembered_sha256(path) != digest:
            raise RunDirError(f"{path} does not match the sha256 {run_dir / RUN_FILE} recorded when the run wrote it: "
                              "the file was changed or damaged since\n  fix: restore it from a copy of the run, or "
                              "train the run again")


def run_identity(run_dir: Path, base: ModelConfig) -> str:
    """One digest of every weight that produces a finished run's outputs as they are on disk now: the base model's
    files and the run's own (checked first against what the run recorded)."""
    verify_weights(run_dir)
    return weights_record(Path(run_dir), base)["identity_sha256"]
