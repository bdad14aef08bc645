"""`tuneforge ui`: one local web app over a folder of runs and sweeps, on the same stack and guard as `tuneforge
serve` (Starlette + uvicorn, `web.guard`).

Pages (one HTML page, `ui.html`, with Chart.js 3.9.1 vendored from Debian's libjs-chart.js, MIT): the runs, a run
(its metrics rows streamed as server-sent events while it trains, its before/after table, samples, config, log and
charts), the launch form (generated from the config schema and the registries' parameter schemas, validated by the
command line's own code), compare, sweeps, chat.

What it guards (RELIABILITY.md, promise 32): every request passes the guard (Host, Origin, body size); anything that
writes, launches or loads a model needs the token the server prints (in the page's URL fragment, never sent to a
log), and beyond loopback so does every read; every name of a run or a file is checked to lead inside the runs
folder (`runs.index.resolve`); a launch writes only `<runs>/NAME.yaml`, `<runs>/NAME/` and `<runs>/.ui/`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import time
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from tuneforge.config import dataset_list
from tuneforge.engine.console import flat_scores
from tuneforge.errors import ConfigError
from tuneforge.runs.index import (
    Outside,
    file_in,
    find,
    list_runs,
    read_config,
    read_sweep,
    resolve,
    rows_from,
    status,
    summarize,
)
from tuneforge.runs.layout import COMPLETE, CONFIG_FILE, EVAL_FILE, RUN_FILE, TRAINING, read_json
from tuneforge.runs.metrics import flatten
from tuneforge.web.base import json_body, listen, parsed, starlette_app
from tuneforge.web.guard import Guard, Refused, is_loopback
from tuneforge.web.launcher import Launch, Launcher, log_tail

MAX_BODY = 256 * 1024  # a config or a conversation
NAME = re.compile(r"[A-Za-z0-9_][\w.-]{0,63}")
IMAGES = (".png", ".svg")
EXPORTS = ".ui/exports"  # where the page's exports go, under the runs folder
WRITES = ("/api/check", "/api/launch", "/api/stop", "/api/resume", "/api/chat", "/api/export")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LaunchBody(_Body):
    name: str = Field(pattern=f"^{NAME.pattern}$", max_length=64)
    config: dict[str, Any]
    yaml: dict[str, str] = Field(default_factory=dict, description="dotted keys whose value is YAML text")
    nproc: int = Field(1, ge=1, le=64)


class RunBody(_Body):
    id: str = Field(max_length=600)


class ChatTurn(_Body):
    role: str = Field(pattern="^(system|user|assistant)$")
    content: str = Field(max_length=32_000)


class ChatBody(_Body):
    runs: list[str] = Field(min_length=1, max_length=2)
    messages: list[ChatTurn] = Field(min_length=1, max_length=64)
    max_tokens: int = Field(64, ge=1, le=512)
    temperature: float = Field(0.0, ge=0.0, le=2.0)


class ExportBody(_Body):
    id: str = Field(max_length=600)
    merge: bool = False
    gguf: bool = False  # GGUF q8_0 for llama.cpp and Ollama (the adapter folded in)


def form_schema() -> dict:
    """What the launch form shows: the config's sections (pydantic's JSON schema of `RunConfig`) and, for each key
    that names a registry entry, its entries with their summaries and parameter schemas."""
    from tuneforge.config import RunConfig
    from tuneforge.strategies.catalogue import catalogue

    return {"config": RunConfig.model_json_schema(),
            "choices": {key: [{"name": e.name, "summary": e.summary, "schema": e.schema.model_json_schema()}
                              for e in entries] for key, entries in catalogue().items() if "." not in key}}


def checked_launch(root: Path, body: LaunchBody) -> str:
    """The form's config as YAML, as it will be written (YAML-valued keys parsed, output.dir set to the run's folder,
    relative paths anchored where the UI runs), validated whole as `tuneforge train` validates it; else ConfigError."""
    from tuneforge.config import load_config
    from tuneforge.strategies import checked

    config = json.loads(json.dumps(body.config))  # a deep copy
    for dotted, text in body.yaml.items():
        keys = dotted.split(".")
        if not all(NAME.fullmatch(k) for k in keys) or len(keys) > 4:
            raise ConfigError(f"config key '{dotted[:80]}': not a key of the config")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config key '{dotted}': not YAML ({str(exc).splitlines()[0]})\n  fix: write it as "
                              "in a config file, e.g. [a, b] or {key: value}") from None
        target = config
        for key in keys[:-1]:
            target = target.setdefault(key, {})
            if not isinstance(target, dict):
                raise ConfigError(f"config key '{dotted}': its section is not a mapping")
        if value is None:
            target.pop(keys[-1], None)
        else:
            target[keys[-1]] = value
    output = config.setdefault("output", {})
    if not isinstance(output, dict):
        raise ConfigError("config key 'output': expected a mapping")
    if output.get("dir") not in (None, ""):
        raise ConfigError("config key 'output.dir': the UI writes each run to <runs>/NAME\n  fix: leave output.dir "
                          "out and name the run")
    output["dir"] = _shown(root / body.name)
    _anchor(config, checked(load_config(config)))
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


def _anchor(config: dict, loaded) -> None:
    """Relative model and data paths, which `tuneforge train` reads from the config file's folder, written as the
    check has just read them: from the folder the UI runs in (where the person typing them is)."""
    if isinstance(config.get("model"), dict):
        config["model"]["path"] = loaded.run.model.path
    elif "model" in config:
        config["model"] = loaded.run.model.path
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    for split in ("train", "test"):
        if data.get(split) is not None:
            data[split] = [{**entry, "path": loaded.resolve_path(entry["path"])}
                           for entry in dataset_list(data[split])]


def _shown(path: Path) -> str:
    """A path as a command line in the UI's folder spells it (relative where it is below it)."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path.resolve())


def run_view(root: Path, run_dir: Path) -> dict:
    summary = summarize(root, run_dir)
    evaluation = read_json(run_dir / EVAL_FILE)
    record = {k: v for k, v in read_json(run_dir / RUN_FILE).items() if k not in ("fingerprint", "weights")}
    try:
        config = (run_dir / CONFIG_FILE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        config = ""
    name = summary.id
    images = sorted(p.name for p in run_dir.iterdir() if p.suffix in IMAGES)
    return {"summary": summary.as_dict(), "record": record, "before": flat_scores(evaluation.get("before") or {}),
            "after": flat_scores(evaluation.get("after") or {}), "samples": (evaluation.get("samples") or [])[:20],
            "config": config, "settings": read_config(run_dir), "log": log_tail(root, name), "images": images,
            "resumable": (root / f"{name}.yaml").is_file()}


def compare_view(root: Path, ids: list[str]) -> dict:
    from tuneforge.reports.compare import run_row, shown_columns, winners

    dirs = [resolve(root, i) for i in ids]
    rows = [{**run_row(d), "method": i} for d, i in zip(dirs, ids, strict=True)]
    columns = shown_columns(rows)
    configs = [flatten(read_config(d)) for d in dirs]
    keys = sorted(set().union(*configs))
    differ = {k: [c.get(k) for c in configs] for k in keys if len({json.dumps(c.get(k)) for c in configs}) > 1}
    scores = [flat_scores(read_json(d / EVAL_FILE).get("after") or {}) for d in dirs]
    return {"ids": ids, "columns": [{"key": c.key, "title": c.title, "fmt": c.fmt} for c in columns],
            "rows": [{c.key: r.get(c.key) for c in columns} for r in rows], "winners": winners(rows),
            "scores": scores, "config_differences": differ}


class Chats:
    """Finished runs loaded for chat, the last two kept (A/B); each answers through `runs.batcher` as `tuneforge
    serve` does, so an answer at temperature 0 is `tuneforge chat`'s."""

    def __init__(self, keep: int = 2):
        self.keep, self.loaded, self.lock = keep, {}, asyncio.Lock()

    async def batcher(self, run_dir: Path):
        from tuneforge.runs.batcher import Batcher
        from tuneforge.runs.serving import load_served

        async with self.lock:
            key = str(run_dir)
            if key not in self.loaded:
                while len(self.loaded) >= self.keep:
                    self.loaded.pop(next(iter(self.loaded))).close()
                served = await asyncio.to_thread(load_served, {"run": run_dir})
                self.loaded[key] = Batcher(served, max_batch=8)
            self.loaded[key] = self.loaded.pop(key)  # most recent last
            return self.loaded[key]

    def close(self) -> None:
        for batcher in self.loaded.values():
            batcher.close()


def ui_app(root: Path, *, bound: str = "127.0.0.1", port: int = 8765, token: str | None = None,
           launcher: Launcher | None = None, poll_s: float = 0.25):
    """The ASGI app behind `web.guard.Guard`. `token`: what writes need (and on a non-loopback address, reads)."""
    from starlette.requests import Request
    from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    from tuneforge.runs.batcher import Request as Asked

    root = root.resolve()
    token = token or secrets.token_urlsafe(24)
    launcher = launcher or Launcher(root)
    chats = Chats()
    page = resources.files("tuneforge.web").joinpath("ui.html").read_text(encoding="utf-8")
    chart = resources.files("tuneforge.web").joinpath("chart.min.js").read_bytes()

    def run_dir(ident: str | None) -> Path:
        try:
            return resolve(root, ident or "")
        except Outside as exc:
            raise Refused(HTTPStatus.NOT_FOUND, str(exc), param="id") from None

    async def index(_: Request) -> Response:
        return HTMLResponse(page, headers={"Content-Security-Policy": "default-src 'self'; style-src 'self' "
                                           "'unsafe-inline'; script-src 'self' 'unsafe-inline'; img-src 'self' data:"})

    async def chart_js(_: Request) -> Response:
        return Response(chart, media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})

    async def runs(_: Request) -> Response:
        summaries = await asyncio.to_thread(list_runs, root)
        sweeps = [s.relative_to(root).as_posix() for s in find(root)[1]]
        return JSONResponse({"root": str(root), "runs": [s.as_dict() for s in summaries], "sweeps": sweeps,
                             "queue": [q.name for q in launcher.queue()]})

    async def run(request: Request) -> Response:
        return JSONResponse(await asyncio.to_thread(run_view, root, run_dir(request.query_params.get("id"))))

    async def file(request: Request) -> Response:
        folder = run_dir(request.query_params.get("id"))
        try:
            path = file_in(folder, request.query_params.get("name", ""), IMAGES)
        except Outside as exc:
            raise Refused(HTTPStatus.NOT_FOUND, str(exc), param="name") from None
        return FileResponse(path)

    async def metrics(request: Request) -> Response:
        folder = run_dir(request.query_params.get("id"))
        name = folder.relative_to(root).as_posix()

        async def events():
            offsets: dict[str, int] = {}
            quiet = 0.0
            while not await request.is_disconnected():
                rows, offsets = await asyncio.to_thread(rows_from, folder, offsets)
                now = status(folder)
                live = now == TRAINING or launcher.queued(name) or launcher.alive(name)
                if rows or quiet >= 10:
                    yield f"data: {json.dumps({'rows': rows, 'status': now})}\n\n"
                    quiet = 0.0
                if not live:
                    rows, offsets = await asyncio.to_thread(rows_from, folder, offsets)  # the last ones written
                    yield f"event: end\ndata: {json.dumps({'rows': rows, 'status': status(folder)})}\n\n"
                    return
                await asyncio.sleep(poll_s)
                quiet += poll_s

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def sweep(request: Request) -> Response:
        try:
            folder = resolve(root, request.query_params.get("id", ""), kind="sweep")
        except Outside as exc:
            raise Refused(HTTPStatus.NOT_FOUND, str(exc), param="id") from None
        summary = await asyncio.to_thread(read_sweep, root, folder)
        return JSONResponse(summary.__dict__)

    async def compare(request: Request) -> Response:
        ids = [i for i in request.query_params.get("ids", "").split(",") if i][:8]
        if len(ids) < 2:
            raise Refused(HTTPStatus.BAD_REQUEST, "name two to eight runs to compare", param="ids")
        for ident in ids:
            run_dir(ident)
        return JSONResponse(await asyncio.to_thread(compare_view, root, ids))

    async def schema(_: Request) -> Response:
        return JSONResponse(await asyncio.to_thread(form_schema))

    async def check(request: Request) -> Response:
        body = parsed(LaunchBody, await json_body(request))
        text = await asyncio.to_thread(checked_launch, root, body)
        launch = Launch(body.name, body.nproc)
        return JSONResponse({"yaml": text, "command": " ".join(launch.command(Path(_shown(root))))})

    async def launch(request: Request) -> Response:
        body = parsed(LaunchBody, await json_body(request))
        text = await asyncio.to_thread(checked_launch, root, body)
        if (root / body.name).exists() or (root / f"{body.name}.yaml").exists() or launcher.queued(body.name):
            raise Refused(HTTPStatus.CONFLICT, f"a run named '{body.name}' exists in {root}; choose another name "
                          "(or resume that run from its page)", param="name")
        root.mkdir(parents=True, exist_ok=True)
        target = root / f"{body.name}.yaml"
        temporary = target.with_suffix(f".yaml.{os.getpid()}.tmp")
        temporary.write_text(f"# launched from tuneforge ui, {time.strftime('%Y-%m-%d %H:%M:%S')}\n{text}")
        temporary.replace(target)
        launcher.submit(Launch(body.name, body.nproc))
        return JSONResponse({"name": body.name, "queued": launcher.queued(body.name)})

    async def stop(request: Request) -> Response:
        body = parsed(RunBody, await json_body(request))
        if launcher.cancel(body.id):
            return JSONResponse({"id": body.id, "stopped": "dropped from the queue"})
        if not launcher.loading(body.id):
            run_dir(body.id)  # a run of the folder, or 404
        if not launcher.stop(body.id):
            raise Refused(HTTPStatus.CONFLICT, f"run '{body.id}' is not training", param="id")
        return JSONResponse({"id": body.id, "stopped": "sent Ctrl-C (SIGINT); it ends as interrupted"})

    async def resume(request: Request) -> Response:
        body = parsed(RunBody, await json_body(request))
        folder = run_dir(body.id)
        now = status(folder)
        if now in (TRAINING, COMPLETE) or launcher.queued(body.id):
            raise Refused(HTTPStatus.CONFLICT, f"run '{body.id}' is {now or 'queued'}; only a stopped or failed "
                          "run resumes", param="id")
        if not (root / f"{body.id}.yaml").is_file():
            raise Refused(HTTPStatus.CONFLICT, f"run '{body.id}' was not launched from this UI, so its config file "
                          "is not known here\n  fix: `tuneforge train CONFIG --resume` with the file it was "
                          "started from", param="id")
        launcher.submit(Launch(body.id, resume=True))
        return JSONResponse({"id": body.id, "queued": True})

    async def chat(request: Request) -> Response:
        body = parsed(ChatBody, await json_body(request))
        folders = [run_dir(i) for i in body.runs]
        for ident, folder in zip(body.runs, folders, strict=True):
            if status(folder) != COMPLETE:
                raise Refused(HTTPStatus.CONFLICT, f"run '{ident}' has not finished; chat needs its trained "
                              "weights", param="runs")
        messages = [m.model_dump() for m in body.messages]
        answers = []
        for ident, folder in zip(body.runs, folders, strict=True):
            batcher = await chats.batcher(folder)
            asked = batcher.submit(Asked("run", batcher.served.prompt_ids("run", messages), body.max_tokens,
                                         body.temperature))
            answer = await asyncio.wrap_future(asked.result)
            answers.append({"id": ident, "text": answer.text, "finish_reason": answer.finish_reason})
        return JSONResponse({"answers": answers})

    async def export(request: Request) -> Response:
        body = parsed(ExportBody, await json_body(request))
        folder = run_dir(body.id)
        if status(folder) != COMPLETE:
            raise Refused(HTTPStatus.CONFLICT, f"run '{body.id}' has not finished", param="id")
        from tuneforge.runs.export import export_run

        kind = "-gguf" if body.gguf else "-merged" if body.merge else ""
        out = root / EXPORTS / (body.id.replace("/", "--") + kind)
        await asyncio.to_thread(export_run, folder, out, merge=body.merge, overwrite=True,
                                gguf=["q8_0"] if body.gguf else ())
        return JSONResponse({"id": body.id, "out": _shown(out)})

    routes = [Route("/", index), Route("/chart.min.js", chart_js), Route("/api/runs", runs), Route("/api/run", run),
              Route("/api/file", file), Route("/api/metrics", metrics), Route("/api/sweep", sweep),
              Route("/api/compare", compare), Route("/api/schema", schema),
              *(Route(path, handler, methods=["POST"]) for path, handler in
                zip(WRITES, (check, launch, stop, resume, chat, export), strict=True))]

    @contextlib.asynccontextmanager
    async def lifespan(_):
        launcher.start()
        yield
        launcher.close()
        chats.close()

    app = starlette_app(routes, lifespan, "ui")
    app.state.token, app.state.launcher = token, launcher
    open_reads = is_loopback(bound)
    return Guard(app, bound=bound, port=port, token=token, max_body=MAX_BODY,
                 open_paths=("/", "/chart.min.js"), open_reads=open_reads,
                 credential="the token in the URL that `tuneforge ui` printed")


def start_ui(root: Path, *, host: str = "127.0.0.1", port: int = 8765, parallel: int = 1,
             background: bool = False, announce: bool = False):
    """Listen and answer until stopped; returns the `web.openai.Server` handle (its url carries the token)."""

    token = secrets.token_urlsafe(24)
    launcher = Launcher(root.resolve(), parallel=parallel)

    def app(actual: int):
        return ui_app(root, bound=host, port=actual, token=token, launcher=launcher)

    handle = listen(app, host, port, background=background, fragment=f"#token={token}",
                    announce=(lambda url: f"tuneforge ui: {url} (runs in {root.resolve()}; Ctrl-C stops the UI, "
                              "not the runs)") if announce else None)
    handle.token = token
    return handle
