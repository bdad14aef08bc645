"""Where a run's numbers go: metrics.jsonl in the run directory (always) and the trackers the config names
(`output.trackers`: TensorBoard by default, MLflow, W&B), each imported only when chosen. A tracker never takes a
run down: each is checked before the run directory is made (`check_trackers`: installed, its server answering),
and one that fails later is said once and dropped while the run goes on."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from tuneforge.config import RunConfig, redacted
from tuneforge.engine.console import Metrics
from tuneforge.errors import ConfigError
from tuneforge.runs.layout import METRICS_FILE, metric_rows

_WATCHERS: ContextVar[tuple[Callable[[int, str, dict], None], ...]] = ContextVar("watchers", default=())


@contextmanager
def watching(watcher: Callable[[int, str, dict], None]) -> Iterator[None]:
    """Inside, every row a run logs is also given to `watcher(step, kind, values)` after metrics.jsonl has it; unlike a
    tracker's failure, what the watcher raises ends the run (`runs.run.Stopped`: a sweep's pruner)."""
    token = _WATCHERS.set((*_WATCHERS.get(), watcher))
    try:
        yield
    finally:
        _WATCHERS.reset(token)


class MetricsLog(Metrics):
    """Append-only metrics.jsonl plus the chosen trackers (each imported only when chosen). On resume, rows
    after the resumed step are dropped so the file reads as one uninterrupted run. `params` (the run's config) go
    to the trackers that keep parameters; `close` hands them the run's result files and its end state."""

    def __init__(self, run_dir: Path, cfg: RunConfig | None = None, resume_step: int | None = None,
                 warn: Callable[[str], None] = print):
        self.path = run_dir / METRICS_FILE
        if resume_step is not None and self.path.exists():
            kept = [row for row in metric_rows(self.path) if row.get("step", 0) <= resume_step]
            self.path.write_text("".join(json.dumps(row) + "\n" for row in kept))
        self._file = self.path.open("a", encoding="utf-8")
        self._warn = warn
        params = redacted(cfg.model_dump(mode="json")) if cfg is not None else {}  # as config.yaml has it
        self._trackers: dict[str, Any] = {}
        for name in cfg.output.chosen_trackers if cfg is not None else []:
            self._call(name, lambda name=name: self._trackers.__setitem__(name, TRACKERS[name](run_dir, resume_step,
                                                                                                params)))

    def log(self, step: int, kind: str, values: dict[str, Any]) -> None:
        row = {"step": step, "kind": kind, "time": round(time.time(), 3), **values}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        numbers = {key: float(value) for key, value in flatten(values, f"{kind}/", "/").items()
                   if isinstance(value, int | float) and not isinstance(value, bool)}
        for name, tracker in list(self._trackers.items()):
            self._call(name, lambda tracker=tracker: tracker.log(step, numbers))
        for watcher in _WATCHERS.get():
            watcher(step, kind, values)

    def close(self, artifacts: Sequence[Path] = (), failed: bool = False) -> None:
        self._file.close()
        for name, tracker in list(self._trackers.items()):
            self._call(name, lambda tracker=tracker: tracker.close([p for p in artifacts if p.is_file()], failed))

    def _call(self, name: str, call: Callable[[], None]) -> None:
        """A tracker's call; one that fails is said once and dropped (metrics.jsonl keeps every row)."""
        try:
            call()
        except Exception as exc:  # a tracker's failure of any kind must not end the run
            self._trackers.pop(name, None)
            self._warn(f"warning: tracker {name} failed ({type(exc).__name__}: {str(exc).strip()[:300]}); the run "
                       f"goes on without it, every row is in {self.path}")


def check_trackers(cfg: RunConfig, where: str) -> list[str]:
    """Before the run directory is made: each chosen tracker is installed and its server, where one is named,
    answers (else a run would wait minutes for it, then fail). What to tell the user (W&B going offline)."""
    notes = []
    for name in cfg.output.chosen_trackers:
        if importlib.util.find_spec(name) is None:  # each tracker's module has its name
            raise ConfigError(f"{where}: tracker {name} is not installed\n  fix: pip install 'tuneforge[trackers]', or "
                              f"remove {name} from output.trackers")
        uri = os.environ.get("MLFLOW_TRACKING_URI", "")
        if name == "mlflow" and uri.startswith(("http://", "https://")) and not _answers(uri):
            raise ConfigError(f"{where}: the MLflow server at MLFLOW_TRACKING_URI ({_shown(uri)}) does not answer\n  "
                              "fix: start it, unset MLFLOW_TRACKING_URI to keep the MLflow run inside the run "
                              "directory, or remove mlflow from output.trackers")
        if name == "wandb" and _wandb_logged_in() and not _answers(_wandb_server()):
            server, chosen = _shown(_wandb_server()), os.environ.get("WANDB_MODE")
            if chosen == "online":
                raise ConfigError(f"{where}: WANDB_MODE=online but W&B's server {server} does not answer\n  fix: "
                                  "unset WANDB_MODE (tuneforge then logs offline), or remove wandb from "
                                  "output.trackers")
            if not chosen:
                notes.append(f"note: W&B's server {server} does not answer: logging offline into the run "
                             "(`wandb sync RUN/wandb/offline-run-*` uploads it later)")
    return notes


def _shown(url: str) -> str:
    """A server's address without any user name or password in it."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"


@functools.cache
def _answers(url: str, timeout_s: float = 5.0) -> bool:
    """Whether a server answers at `url` at all (any HTTP status counts), within a few seconds."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False
    return True


class TensorBoardTracker:
    def __init__(self, run_dir: Path, resume_step: int | None, params: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=resume_step)

    def log(self, step: int, numbers: dict[str, float]) -> None:
        for key, value in numbers.items():
            self.writer.add_scalar(key, value, step)

    def close(self, artifacts: Sequence[Path], failed: bool) -> None:
        self.writer.close()


class MlflowTracker:
    """One MLflow run per tuneforge run: params (the config, flattened), every metric row, and at the end the
    result files as artifacts. The store is the server `MLFLOW_TRACKING_URI` names, or else a local one in
    <run>/mlflow (SQLite, MLflow's local backend now that its file store is frozen, and an artifacts folder), which
    `mlflow ui --backend-store-uri sqlite:///<run>/mlflow/mlflow.db` or `MlflowClient` open. A resumed run goes on
    in the same MLflow run."""

    def __init__(self, run_dir: Path, resume_step: int | None, params: dict):
        from mlflow import MlflowClient
        from mlflow.entities import Param

        # a server that goes away mid-run costs one call of about a minute (MLflow's own default retries for minutes)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        folder = run_dir / "mlflow"
        folder.mkdir(exist_ok=True)
        self.client = MlflowClient(tracking_uri=os.environ.get("MLFLOW_TRACKING_URI")
                                   or f"sqlite:///{(folder / 'mlflow.db').resolve()}")
        resumed = _resumed_run_id(folder, resume_step)
        if resumed:
            self.run_id = resumed
            self.client.update_run(self.run_id, status="RUNNING")
            return
        experiment = self.client.get_experiment_by_name("tuneforge")
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
            "tuneforge", artifact_location=None if "MLFLOW_TRACKING_URI" in os.environ
            else (folder / "artifacts").resolve().as_uri())
        self.run_id = self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id
        (folder / "run_id").write_text(self.run_id)
        flat = [Param(_mlflow_key(key), str(value)[:6000]) for key, value in flatten(params).items()]
        for start in range(0, len(flat), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=flat[start:start + 100])

    def log(self, step: int, numbers: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(_mlflow_key(key), value, now, step)
                                                    for key, value in numbers.items()])

    def close(self, artifacts: Sequence[Path], failed: bool) -> None:
        for path in artifacts:
            self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


def _resumed_run_id(folder: Path, resume_step: int | None) -> str | None:
    """The tracker's run that a resumed tuneforge run goes on in (its id kept in <run>/<tracker>/run_id)."""
    remembered = folder / "run_id"
    return remembered.read_text().strip() if resume_step is not None and remembered.is_file() else None


def _mlflow_key(key: str) -> str:
    """MLflow takes letters, digits, _ - . / and spaces in a name (a task named 'a:b' would fail the run)."""
    return re.sub(r"[^\w\-. /]", "_", key)


class WandbTracker:
    """One Weights & Biases run per tuneforge run, its files in <run>/wandb: the config, every metrics row, the
    result files. Offline (`wandb sync <run>/wandb/offline-run-*` uploads it later) unless the user has logged in
    (`wandb login`, or WANDB_API_KEY) or chosen WANDB_MODE; the project is WANDB_PROJECT, else "tuneforge". A
    resumed run goes on in the same W&B run (W&B drops rows below a step it has seen: the steps between the last
    checkpoint and the kill are not logged twice)."""

    def __init__(self, run_dir: Path, resume_step: int | None, params: dict):
        import wandb

        folder = run_dir / "wandb"
        folder.mkdir(exist_ok=True)
        run_id = _resumed_run_id(folder, resume_step) or secrets.token_hex(4)
        (folder / "run_id").write_text(run_id)
        mode = _wandb_mode()
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "tuneforge"), name=run_dir.name, id=run_id,
                              resume="allow", dir=str(run_dir), mode=mode, config=params,
                              settings=wandb.Settings(silent=True, console="off"))
        self.last_step = -1

    def log(self, step: int, numbers: dict[str, float]) -> None:
        if step >= self.last_step:
            self.run.log(numbers, step=step)
            self.last_step = step

    def close(self, artifacts: Sequence[Path], failed: bool) -> None:
        for path in artifacts:  # copies in the run's files folder, uploaded with it (W&B keeps its own config.yaml)
            shutil.copyfile(path, Path(self.run.dir) / ("tuneforge-config.yaml" if path.name == "config.yaml"
                                                        else path.name))
        self.run.finish(exit_code=1 if failed else 0)


def _wandb_mode() -> str:
    """WANDB_MODE when the user chose it; else online where logged in and the server answers, offline otherwise."""
    return os.environ.get("WANDB_MODE") or ("online" if _wandb_logged_in() and _answers(_wandb_server())
                                            else "offline")


def _wandb_server() -> str:
    return os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")


def _wandb_logged_in() -> bool:
    """An API key where `wandb login` puts it (~/.netrc) or in the environment."""
    import netrc

    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


TRACKERS = {"tensorboard": TensorBoardTracker, "mlflow": MlflowTracker, "wandb": WandbTracker}


def flatten(values: dict, prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """A nested dict's leaves named by their path: a config's `train.lr`, a row's `train/tasks/iso`."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}{sep}", sep)
        else:
            flat[f"{prefix}{key}"] = value
    return flat
