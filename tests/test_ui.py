"""`tuneforge ui`: the runs folder as the UI reads it (statuses, headline figures, rows from an offset, names that
cannot climb out), the launch form generated from the schema and validated by the command line's code, the
red-team cases of the feedback server answered 4xx with nothing written, and the life of a launched run — live
rows, stop (interrupted), resume (bitwise the uninterrupted run), a UI killed while a run trains. The browser
tests are in tests/test_ui_browser.py."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from safetensors.torch import load_file

from tests.conftest import tiny_config
from tuneforge.config import load_config
from tuneforge.errors import ConfigError
from tuneforge.runs.index import Outside, edge_rows, file_in, list_runs, resolve, rows_from
from tuneforge.runs.lock import run_lock
from tuneforge.strategies import checked
from tuneforge.web.ui import start_ui


def fake_run(root: Path, name: str, status: str = "complete", steps: int = 3, before: float = 2.0,
             after: float = 1.0) -> Path:
    """A run directory as a finished run writes it (its records only)."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"method": {"name": "ia3"}, "objective": {"name": "dpo"},
                                                     "model": {"path": "default"},
                                                     "eval": {"metrics": ["loss", "exact_match"]}}))
    (run / "run.json").write_text(json.dumps({"status": status, "train": {"steps": steps, "wall_s": 4.0}}))
    (run / "eval.json").write_text(json.dumps({"before": {"loss": before, "exact_match": 0.0},
                                               "after": {"loss": after, "exact_match": 50.0}}))
    rows = [{"step": s, "kind": "train", "time": 1000.0 + s, "loss": 3.0 - s} for s in range(1, steps + 1)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_the_folder_lists_runs_with_status_and_headline(tmp_path):
    fake_run(tmp_path, "a")
    fake_run(tmp_path / "group", "b", status="failed")
    stale = fake_run(tmp_path, "killed", status="training")  # run.json says training; no process holds its lock
    live = fake_run(tmp_path, "live", status="training")
    fake_run(tmp_path / "a", "tasks/1-x")  # a sub-run is part of its run, not a run of the list
    (tmp_path / ".ui").mkdir()
    fake_run(tmp_path / ".ui", "hidden")
    sweep = tmp_path / "sweep"
    fake_run(sweep / "trials", "0000")
    (sweep / "study.db").write_bytes(b"")
    with run_lock(live):
        runs = {r.id: r for r in list_runs(tmp_path)}
    assert set(runs) == {"a", "group/b", "killed", "live", "sweep/trials/0000"}
    assert runs["a"].status == "complete" and runs["group/b"].status == "failed"
    assert runs["killed"].status == "interrupted" and runs["live"].status == "training"
    a = runs["a"]
    assert (a.method, a.objective, a.strategy, a.model) == ("ia3", "dpo", "single", "default")
    assert (a.metric, a.before, a.after, a.steps, a.started, a.duration_s) == ("loss", 2.0, 1.0, 3, 1001.0, 2.0)
    assert runs["sweep/trials/0000"].sweep == "sweep" and a.sweep is None
    assert stale.joinpath("run.json").read_text() == json.dumps({"status": "training", "train": {"steps": 3,
                                                                                                  "wall_s": 4.0}})


def test_rows_are_read_from_an_offset_and_a_half_written_row_waits(tmp_path):
    run = fake_run(tmp_path, "a", steps=2)
    rows, offsets = rows_from(run, {})
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["phase"] == ""
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 3, "kind": "train", "lo')
    rows, offsets = rows_from(run, offsets)
    assert rows == []  # cut short: not yet a row
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write('ss": 0.5}\n')
    (run / "tasks" / "2-b").mkdir(parents=True)
    (run / "tasks" / "2-b" / "metrics.jsonl").write_text('{"step": 1, "kind": "train", "loss": 9}\n')
    rows, offsets = rows_from(run, offsets)
    assert [(r["phase"], r["step"], r["loss"]) for r in rows] == [("", 3, 0.5), ("tasks/2-b", 1, 9)]
    assert edge_rows(run / "metrics.jsonl")[1]["step"] == 3


def test_a_running_sweep_shows_its_trial_runs_as_they_are(tmp_path):
    from tuneforge.runs.index import read_sweep

    sweep = tmp_path / "s"
    fake_run(sweep / "trials", "0000", after=0.7)
    fake_run(sweep / "trials", "0001", status="failed")
    (sweep / "study.db").write_bytes(b"")
    summary = read_sweep(tmp_path, sweep)
    assert not summary.finished and [(t["number"], t["state"], t["run"], t["scores"]) for t in summary.trials] == [
        (0, "COMPLETE", "s/trials/0000", {"loss": 0.7}), (1, "FAILED", "s/trials/0001", {"loss": 1.0})]


def test_names_never_lead_out_of_the_folder(tmp_path):
    root = tmp_path / "runs"
    fake_run(root, "a")
    fake_run(tmp_path, "outside")
    (root / "link").symlink_to(tmp_path / "outside")
    (tmp_path / "outside" / "secret.png").write_bytes(b"x")
    assert resolve(root, "a") == (root / "a").resolve()
    for bad in ("..", "../outside", "a/..", "a/../../outside", "/etc", "link", ".ui", "", "a/", "a//b", "a\\..",
                "%2e%2e", "a/" * 5 + "a", "x" * 200, "a\x00"):
        with pytest.raises(Outside):
            resolve(root, bad)
    for bad in ("../secret.png", "/etc/passwd", "config.yaml", "run.json", ".png", "x.png"):
        with pytest.raises(Outside):
            file_in(root / "a", bad, (".png",))


# ------------------------------------------------------------------------------------------- the server


@pytest.fixture
def ui(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    server = start_ui(root, port=0, background=True)
    client = httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=60)
    client.token, client.root = server.token, root
    client.auth_headers = {"Authorization": f"Bearer {server.token}"}
    yield client
    client.close()
    server.stop()


def post(client, path: str, body, **headers) -> httpx.Response:
    return client.post(path, json=body, headers={**client.auth_headers, **headers})


def test_the_form_is_the_schema_and_a_new_registry_entry_appears(ui, monkeypatch, tmp_path, tiny_model_dir):
    from pydantic import BaseModel, Field

    from tuneforge.methods import REGISTRY

    base = REGISTRY["lora"]

    class Params(BaseModel):
        model_config = {"extra": "forbid"}
        rank: int = Field(3, ge=1, le=9, description="the new method's only knob")

    monkeypatch.setitem(REGISTRY, "newpeft", type(base)(**{**base.__dict__, "params": Params,
                                                           "summary": "a method added to the registry"}))
    from tuneforge.objectives import REGISTRY as OBJECTIVES
    from tuneforge.objectives.params import PARAMS

    class LossParams(BaseModel):
        model_config = {"extra": "forbid"}
        margin: float = Field(0.5, gt=0, description="the new loss's margin")

    monkeypatch.setitem(OBJECTIVES, "newloss", dataclasses.replace(OBJECTIVES["sft"], params=LossParams,
                                                                   summary="an objective added to the registry"))
    monkeypatch.setitem(PARAMS, "newloss", LossParams)
    form = ui.get("/api/schema").json()
    methods = {c["name"]: c for c in form["choices"]["method"]}
    assert methods["newpeft"]["summary"] == "a method added to the registry"
    assert methods["newpeft"]["schema"]["properties"]["rank"] == {"default": 3, "description": "the new method's "
                                                                  "only knob", "maximum": 9, "minimum": 1,
                                                                  "title": "Rank", "type": "integer"}
    assert set(methods) >= {"lora", "qlora", "ia3", "full"} and {"sft", "dpo", "grpo"} <= {
        c["name"] for c in form["choices"]["objective"]}
    assert form["config"]["$defs"]["TrainConfig"]["properties"]["lr"]["exclusiveMinimum"] == 0
    objectives = {c["name"]: c for c in form["choices"]["objective"]}
    assert objectives["newloss"]["schema"]["properties"]["margin"]["exclusiveMinimum"] == 0
    config = tiny_config(tmp_path, tiny_model_dir)
    del config["output"]
    config["method"] = {"name": "newpeft", "rank": 12}
    refused = post(ui, "/api/check", {"name": "n1", "config": config})
    assert refused.status_code == 400
    config["output"] = {"dir": str(tmp_path / "n1")}
    with pytest.raises(ConfigError) as cli:  # what `tuneforge train` says of the same config
        checked(load_config(config))
    assert refused.json()["error"]["message"] == str(cli.value)
    config["method"]["rank"] = 2
    del config["output"]
    config["objective"] = {"name": "newloss", "margin": -1}
    refused = post(ui, "/api/check", {"name": "n1", "config": config}).json()["error"]
    assert refused["param"] == "objective.margin" and "greater than 0" in refused["message"]
    config["objective"]["margin"] = 0.25
    config["train"]["lr"] = -1
    refused = post(ui, "/api/check", {"name": "n1", "config": config}).json()["error"]
    assert refused["param"] == "train.lr" and "train.lr" in refused["message"]
    config["train"]["lr"] = 1e-3
    good = post(ui, "/api/check", {"name": "n1", "config": config, "yaml": {"eval.metrics": "[loss]"}}).json()
    written = yaml.safe_load(good["yaml"])
    assert written["method"] == {"name": "newpeft", "rank": 2} and written["eval"]["metrics"] == ["loss"]
    assert written["objective"] == {"name": "newloss", "margin": 0.25}
    assert written["output"]["dir"].endswith("runs/n1") and good["command"].endswith("n1.yaml --quiet")
    assert sorted(p.name for p in ui.root.iterdir()) == []  # a check writes nothing


RED_TEAM = [  # (method, path, body or None, extra headers, expected status)
    ("POST", "/api/launch", {"name": "x", "config": {}}, {"Origin": "http://evil.example"}, 403),
    ("POST", "/api/launch", {"name": "x", "config": {}}, {"Authorization": "Bearer forged"}, 401),
    ("POST", "/api/launch", {"name": "x", "config": {}}, {"Authorization": ""}, 401),
    ("POST", "/api/stop", {"id": "a"}, {"Host": "rebound.example"}, 421),
    ("POST", "/api/launch", "not json", {"Content-Type": "application/json"}, 400),
    ("POST", "/api/launch", [1, 2], {}, 400),
    ("POST", "/api/launch", {"name": "x", "config": {}}, {"Content-Type": "text/plain"}, 415),
    ("POST", "/api/launch", {"name": "x", "config": {}, "extra": 1}, {}, 400),
    ("POST", "/api/launch", {"name": "../escape", "config": {"data": {"train": "quickstart:train"}}}, {}, 400),
    ("POST", "/api/launch", {"name": ".hidden", "config": {"data": {"train": "quickstart:train"}}}, {}, 400),
    ("POST", "/api/launch", {"name": "x", "config": {"data": {"train": "quickstart:train"},
                                                     "output": {"dir": "/tmp/elsewhere"}}}, {}, 400),
    ("POST", "/api/launch", {"name": "x", "config": {"data": {"train": "quickstart:train"}},
                             "yaml": {"../x": "1"}}, {}, 400),
    ("POST", "/api/launch", {"name": "x", "config": {"data": {"train": "quickstart:train"}},
                             "yaml": {"train.lr": "&a [*a]"}}, {}, 400),
    ("POST", "/api/launch", {"name": "x", "config": {"train": {"lr": "fast"}}}, {}, 400),
    ("POST", "/api/launch", {"name": "x" * 2000, "config": {}}, {}, 400),
    ("POST", "/api/stop", {"id": "../a"}, {}, 404),
    ("POST", "/api/resume", {"id": "a/../../etc"}, {}, 404),
    ("POST", "/api/chat", {"runs": ["/etc"], "messages": [{"role": "user", "content": "hi"}]}, {}, 404),
    ("POST", "/api/chat", {"runs": ["a"], "messages": [{"role": "tool", "content": "hi"}]}, {}, 400),
    ("POST", "/api/export", {"id": "..", "merge": True}, {}, 404),
    ("GET", "/api/run?id=../a", None, {}, 404),
    ("GET", "/api/run?id=%2e%2e/runs/a", None, {}, 404),
    ("GET", "/api/file?id=a&name=../../outside/secret.png", None, {}, 404),
    ("GET", "/api/file?id=a&name=run.json", None, {}, 404),
    ("GET", "/api/metrics?id=/etc", None, {}, 404),
    ("GET", "/api/sweep?id=../..", None, {}, 404),
    ("GET", "/api/compare?ids=a,../outside", None, {}, 404),
    ("GET", "/api/runs", None, {"Origin": "http://evil.example"}, 403),
    ("DELETE", "/api/runs", None, {}, 405),
    ("GET", "/etc/passwd", None, {}, 404),
]


@pytest.mark.parametrize("method,path,body,headers,status", RED_TEAM)
def test_hostile_requests_are_refused_with_nothing_written(ui, tmp_path, method, path, body, headers, status):
    fake_run(ui.root, "a")
    fake_run(tmp_path, "outside")
    (tmp_path / "outside" / "secret.png").write_bytes(b"the-secret-bytes")
    before = sorted((p.relative_to(tmp_path).as_posix(), p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    sent = {**ui.auth_headers, **headers}
    if not sent.get("Authorization"):
        sent.pop("Authorization")
    content = body if isinstance(body, str) else None if body is None else json.dumps(body)
    sent.setdefault("Content-Type", "application/json")
    answer = ui.request(method, path, content=content, headers=sent)
    assert answer.status_code == status, answer.text
    assert set(answer.json()["error"]) >= {"message", "type", "code"}
    assert b"the-secret-bytes" not in answer.content
    after = sorted((p.relative_to(tmp_path).as_posix(), p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    assert after == before


def test_a_body_over_the_limit_is_refused(ui):
    answer = ui.post("/api/check", content=b"{" + b" " * (300 * 1024) + b"}",
                     headers={**ui.auth_headers, "Content-Type": "application/json"})
    assert answer.status_code == 413 and list(ui.root.iterdir()) == []


def test_reads_are_open_on_loopback_and_writes_need_the_token(ui):
    fake_run(ui.root, "a")
    assert httpx.get(f"{ui.base_url}/api/runs").json()["runs"][0]["id"] == "a"
    page = httpx.get(f"{ui.base_url}/")
    assert page.status_code == 200 and "tuneforge" in page.text and "Content-Security-Policy" in page.headers
    assert httpx.post(f"{ui.base_url}/api/stop", json={"id": "a"}).status_code == 401


def test_export_from_the_page(ui, tmp_path, tiny_model_dir):
    from tuneforge.api import train

    config = tiny_config(tmp_path, tiny_model_dir)
    train({**config, "output": {"dir": str(ui.root / "done"), "tensorboard": False}}, quiet=True)
    fake_run(ui.root, "unfinished", status="failed")
    assert post(ui, "/api/export", {"id": "unfinished"}).status_code == 409
    answer = post(ui, "/api/export", {"id": "done", "merge": True})
    assert answer.status_code == 200, answer.text
    out = ui.root / ".ui" / "exports" / "done-merged"
    assert answer.json()["out"].endswith("exports/done-merged") and (out / "config.json").is_file()
    assert any(out.glob("*.safetensors")) and not (out / "adapter_config.json").exists()  # merged: a plain model
    answer = post(ui, "/api/export", {"id": "done", "gguf": True})
    assert answer.status_code == 200, answer.text
    assert [p.suffix for p in (ui.root / ".ui" / "exports" / "done-gguf").glob("*.gguf")] == [".gguf"]


def test_beyond_loopback_every_read_needs_the_token(tmp_path):
    from tuneforge.web.ui import ui_app

    app = ui_app(tmp_path, bound="0.0.0.0", port=1, token="t" * 20)
    assert app.open_reads is False and app.open_paths == ("/", "/chart.min.js")


# ------------------------------------------------------------------------------------------- a launched run


def launched_config(tmp_path: Path, model_dir: Path, steps: int) -> dict:
    config = tiny_config(tmp_path, model_dir, train={"max_steps": steps, "save_every": 4, "batch_size": 2,
                                                     "log_every": 1},
                         eval={"metrics": ["loss"], "max_examples": 2, "compare_base": False})
    del config["output"]
    return config


def wait(condition, timeout: float = 120.0, every: float = 0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"waited {timeout} s")


def adapter(run: Path) -> dict:
    return load_file(run / "adapter" / "adapter_model.safetensors")


@pytest.mark.heavy
def test_stop_from_the_ui_interrupts_and_resume_continues_bitwise(ui, tmp_path, tiny_model_dir):
    from tuneforge.api import train

    steps = 400
    config = launched_config(tmp_path, tiny_model_dir, steps)
    assert post(ui, "/api/launch", {"name": "long", "config": config}).status_code == 200
    run = ui.root / "long"
    seen: list[dict] = []
    wait(lambda: (run / "run.json").is_file())
    with ui.stream("GET", "/api/metrics?id=long", timeout=120) as events:
        for line in events.iter_lines():
            if line.startswith("data:"):
                seen += json.loads(line[5:])["rows"]
            if any(r.get("step", 0) >= 9 and r["kind"] == "train" for r in seen):
                break
    assert [r["step"] for r in seen if r["kind"] == "train"][:3] == [1, 2, 3]
    stopped = post(ui, "/api/stop", {"id": "long"})
    assert stopped.status_code == 200, stopped.text
    wait(lambda: json.loads((run / "run.json").read_text())["status"] == "interrupted")
    checkpoints = sorted((run / "checkpoints").glob("step-*"))
    assert checkpoints and int(checkpoints[-1].name[5:]) < steps
    assert post(ui, "/api/stop", {"id": "long"}).status_code == 409  # nothing training now
    assert post(ui, "/api/resume", {"id": "long"}).status_code == 200
    wait(lambda: json.loads((run / "run.json").read_text())["status"] == "complete", timeout=300)
    log = (ui.root / ".ui" / "logs" / "long.log").read_text()
    assert "--resume" in log and "interrupted" in log
    reference = train({**config, "output": {"dir": str(tmp_path / "reference"), "tensorboard": False}}, quiet=True)
    mine, theirs = adapter(run), adapter(reference.run_dir)
    assert mine.keys() == theirs.keys() and all((mine[k] == theirs[k]).all() for k in mine)


@pytest.mark.heavy
def test_launches_queue_one_at_a_time(ui, tmp_path, tiny_model_dir):
    for name, steps in (("first", 150), ("second", 4)):
        answer = post(ui, "/api/launch", {"name": name, "config": launched_config(tmp_path, tiny_model_dir, steps)})
        assert answer.status_code == 200, answer.text
    assert ui.get("/api/runs").json()["queue"] == ["second"]  # the first is starting: one at a time
    again = post(ui, "/api/launch", {"name": "first", "config": launched_config(tmp_path, tiny_model_dir, 4)})
    assert again.status_code == 409 and again.json()["error"]["param"] == "name"
    for name in ("first", "second"):
        wait(lambda n=name: (ui.root / n / "run.json").is_file()
             and json.loads((ui.root / n / "run.json").read_text())["status"] == "complete", timeout=300)
    first, second = (edge_rows(ui.root / n / "metrics.jsonl") for n in ("first", "second"))
    assert second[0]["time"] > first[1]["time"]  # the second began after the first had ended
    assert ui.get("/api/runs").json()["queue"] == []


@pytest.mark.heavy
def test_killing_the_ui_leaves_the_run_training_and_a_new_ui_shows_it(tmp_path, tiny_model_dir):
    root = tmp_path / "runs"
    command = [sys.executable, "-m", "tuneforge.cli", "ui", "--runs", str(root), "--port", "0"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    url = first.stdout.readline().split()[2]
    base, token = url.split("#token=")
    config = launched_config(tmp_path, tiny_model_dir, 120)
    answer = httpx.post(base + "api/launch", json={"name": "survivor", "config": config},
                        headers={"Authorization": f"Bearer {token}"}, timeout=60)
    assert answer.status_code == 200, answer.text
    run = root / "survivor"
    wait(lambda: (run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").stat().st_size > 0)
    os.killpg(first.pid, signal.SIGKILL)  # the UI and its whole process group, as a closed terminal would
    first.wait()
    rows = len((run / "metrics.jsonl").read_text().splitlines())
    wait(lambda: len((run / "metrics.jsonl").read_text().splitlines()) > rows + 3)  # still training
    second = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        base = second.stdout.readline().split()[2].split("#")[0]
        listed = httpx.get(base + "api/runs", timeout=60).json()["runs"]
        assert [(r["id"], r["status"]) for r in listed] == [("survivor", "training")]
        wait(lambda: json.loads((run / "run.json").read_text())["status"] == "complete", timeout=300)
        assert httpx.get(base + "api/runs", timeout=60).json()["runs"][0]["status"] == "complete"
        assert (run / "adapter" / "adapter_model.safetensors").is_file()
    finally:
        second.send_signal(signal.SIGINT)
        second.wait(timeout=30)
