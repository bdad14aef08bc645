"""The runs the web UI starts: each is `tuneforge train CONFIG` in a process of its own (a session of its own, so
closing or killing the UI stops no training), started one after another from a queue kept on disk
(`<runs>/.ui/queue.json`: a restarted UI goes on with it), its console output in `<runs>/.ui/logs/NAME.log`.

Stopping a run sends it SIGINT — Ctrl-C: run.json says `interrupted`, its checkpoints stay, `--resume` continues
from the newest. The process is found from the run's lock (`runs.lock`), so a run started before a restart of the
UI, or from a terminal, is stopped the same way."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tuneforge.runs.index import find, status
from tuneforge.runs.layout import TRAINING, read_json, write_json
from tuneforge.runs.lock import is_locked, lock_path

UI_DIR = ".ui"


@dataclass
class Launch:
    name: str  # the run's folder under the runs folder, and its config's name (NAME.yaml beside it)
    nproc: int = 1
    resume: bool = False
    queued: float = 0.0

    def command(self, root: Path) -> list[str]:
        return ["tuneforge", "train", str(root / f"{self.name}.yaml"), "--quiet",
                *(["--nproc", str(self.nproc)] if self.nproc > 1 else []), *(["--resume"] if self.resume else [])]


class Launcher:
    """Starts queued runs `parallel` at a time (runs training under the folder count, whoever started them)."""

    def __init__(self, root: Path, parallel: int = 1, poll_s: float = 0.5):
        self.root, self.parallel, self.poll_s = root, parallel, poll_s
        self.state = root / UI_DIR
        self.lock = threading.Lock()
        self.processes: dict[str, subprocess.Popen] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tuneforge-ui-launcher", daemon=True)

    def start(self) -> Launcher:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    # the queue, on disk --------------------------------------------------------------------------------------

    def queue(self) -> list[Launch]:
        return [Launch(**item) for item in read_json(self.state / "queue.json").get("queue", [])]

    def _save(self, queue: list[Launch]) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        write_json(self.state / "queue.json", {"queue": [asdict(item) for item in queue]})

    def submit(self, launch: Launch) -> None:
        with self.lock:
            launch.queued = time.time()
            self._save([*self.queue(), launch])
        self.tick()

    def cancel(self, name: str) -> bool:
        with self.lock:
            queue = self.queue()
            kept = [item for item in queue if item.name != name]
            if len(kept) < len(queue):
                self._save(kept)
        return len(kept) < len(queue)

    def queued(self, name: str) -> bool:
        return any(item.name == name for item in self.queue())

    # processes ----------------------------------------------------------------------------------------------

    def running(self) -> int:
        """Launched processes still alive, and runs under the folder whose lock a process holds."""
        alive = {name for name in self.processes if self.alive(name)}
        training = {run.relative_to(self.root).as_posix() for run in find(self.root)[0] if status(run) == TRAINING}
        return len(alive | training)

    def tick(self) -> None:
        with self.lock:
            queue = self.queue()
            while queue and self.running() < self.parallel:
                launch = queue.pop(0)
                self._save(queue)
                self._spawn(launch)

    def _spawn(self, launch: Launch) -> None:
        logs = self.state / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "tuneforge.cli", *launch.command(self.root)[1:]]
        with (logs / f"{launch.name}.log").open("ab") as log:
            log.write(f"$ {' '.join(launch.command(self.root))}\n".encode())
            log.flush()
            self.processes[launch.name] = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        record = read_json(self.state / "launched.json")
        record[launch.name] = self.processes[launch.name].pid
        write_json(self.state / "launched.json", record)

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.tick()
            except OSError as exc:  # a full disk or a removed folder: said, and tried again
                print(f"tuneforge ui: the launch queue: {exc}", file=sys.stderr)

    def alive(self, name: str) -> bool:
        """Whether a process this UI launched for the run `name` is still running."""
        process = self.processes.get(name)
        return process is not None and process.poll() is None

    def loading(self, name: str) -> bool:
        """A launched process that has not yet started its run (imports, the model loading: no run.json yet)."""
        return self.alive(name) and not (self.root / name / "run.json").is_file()

    def stop(self, name: str) -> bool:
        """SIGINT to the process training the run `name` (its whole session when the UI launched it); False when
        none is. A queued launch of it is dropped instead."""
        if self.cancel(name):
            return True
        if self.loading(name):
            os.killpg(self.processes[name].pid, signal.SIGINT)  # Ctrl-C ends it before it writes anything
            return True
        pid = holder(self.root / name)
        if pid is None:
            return False
        launched = read_json(self.state / "launched.json").get(name)
        try:
            if launched is not None and os.getpgid(pid) == launched:
                os.killpg(launched, signal.SIGINT)  # every process of a --nproc launch
            else:
                os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            return False
        return True


def holder(run_dir: Path) -> int | None:
    """The pid of the process on this machine holding the run's lock, or None."""
    if not is_locked(run_dir):
        return None
    try:
        text = lock_path(run_dir).read_text()
    except OSError:
        return None
    found = re.match(r"pid (\d+) on (\S+),", text)
    return int(found.group(1)) if found and found.group(2) == socket.gethostname() else None


def log_tail(root: Path, name: str, limit: int = 20_000) -> str:
    path = root / UI_DIR / "logs" / f"{name}.log"
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - limit))
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
