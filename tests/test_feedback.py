"""Human feedback: the SQLite store (revisions, concurrency, what a restart keeps), export to training data,
agreement statistics against hand-computed values, and the whole loop in headless Chromium: vote in the
page, restart the server, vote again, export, and train `dpo` on the export."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import tiny_config, write_jsonl
from tuneforge.api import train
from tuneforge.data.formats import prompt_of
from tuneforge.data.sources import RawRecord
from tuneforge.errors import ConfigError, DataError
from tuneforge.feedback.app import FeedbackApp, load_reviewers
from tuneforge.feedback.store import FeedbackStore, Judgement, export, fleiss_kappa, pairwise_agreement, stats
from tuneforge.web.feedback import serve_feedback

PROMPT = [{"role": "user", "content": "Name a colour."}]


def store_with_items(tmp_path, n: int = 3) -> FeedbackStore:
    store = FeedbackStore(tmp_path / "feedback.db")
    for i in range(n):
        store.add_item([{"role": "user", "content": f"question {i}"}], (f"first {i}", f"second {i}"), ("a", "b"))
    return store


def test_items_are_made_once_and_judgements_revised(tmp_path):
    store = store_with_items(tmp_path, 2)
    again = store.add_item([{"role": "user", "content": "question 0"}], ("other", "other"), ("a", "b"))
    assert again == 1 and store.items()[0].responses == ("first 0", "second 0")  # a restart samples nothing twice
    assert store.next_item_for("ann").id == 1
    store.judge(Judgement(1, "ann", choice="1", shown_first=2))
    store.judge(Judgement(1, "ann", choice="2", shown_first=1, ratings=(2, 5), correction="better"))  # revised
    assert [(j.choice, j.ratings, j.correction) for j in store.judgements()] == [("2", (2, 5), "better")]
    assert store.next_item_for("ann").id == 2 and store.next_item_for("bob").id == 1  # judged by others first
    for bad in (Judgement(1, "ann"), Judgement(1, " "), Judgement(99, "ann", choice="1")):
        with pytest.raises(ValueError):
            store.judge(bad)
    with pytest.raises(sqlite3.IntegrityError):
        store.judge(Judgement(1, "ann", ratings=(6, None)))
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_two_reviewers_writing_at_once_lose_nothing(tmp_path):
    store = store_with_items(tmp_path, 40)
    errors = []

    def vote(name: str) -> None:
        try:
            for item in range(1, 41):
                FeedbackStore(store.path).judge(Judgement(item, name, choice="1" if item % 2 else "tie"))
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=vote, args=(name,)) for name in ("ann", "bob", "cy")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(FeedbackStore(store.path).judgements()) == 120


def test_export_majority_pairs_ratings_and_corrections(tmp_path):
    store = store_with_items(tmp_path, 4)
    votes = {1: ["1", "1", "2"], 2: ["2", "tie"], 3: ["1", "2"], 4: []}
    for item, choices in votes.items():
        for k, choice in enumerate(choices):
            store.judge(Judgement(item, f"r{k}", choice=choice))
    store.judge(Judgement(4, "r0", ratings=(5, 3)))
    store.judge(Judgement(4, "r1", ratings=(4, 1), correction="blue"))
    counts = export(store, tmp_path / "out")
    assert counts == {"preferences.jsonl": 2, "rated.jsonl": 2, "sft.jsonl": 1, "skipped_empty": 0}
    read = {name: [json.loads(x) for x in (tmp_path / "out" / name).read_text().splitlines()] for name in counts
            if name.endswith(".jsonl")}
    # item 1: 2 votes to 1; item 2: one vote and a tie; item 3: split, no pair
    assert read["preferences.jsonl"] == [{"prompt": "question 0", "chosen": "first 0", "rejected": "second 0"},
                                         {"prompt": "question 1", "chosen": "second 1", "rejected": "first 1"}]
    # item 4: response 1 rated 5 and 4 (mean 4.5: desirable), response 2 rated 3 and 1 (mean 2: undesirable)
    assert read["rated.jsonl"] == [{"prompt": "question 3", "completion": "first 3", "label": True},
                                   {"prompt": "question 3", "completion": "second 3", "label": False}]
    assert read["sft.jsonl"] == [{"prompt": "question 3", "completion": "blue"}]
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_agreement_by_hand():
    votes = [["1", "1"], ["1", "2"], ["tie", "tie", "tie"]]
    # pairs: item 1 one agreeing pair, item 2 one disagreeing, item 3 three agreeing -> 4 of 5
    assert pairwise_agreement(votes) == pytest.approx(4 / 5)
    # P_i: 1, 0, 1 -> P̄ = 2/3; shares over 7 votes: "1" 3/7, "2" 1/7, tie 3/7 -> P_e = 19/49
    expected = (2 / 3 - 19 / 49) / (1 - 19 / 49)
    assert fleiss_kappa(votes) == pytest.approx(expected)
    assert fleiss_kappa([["1", "1"]]) is None and pairwise_agreement([["1"]]) is None


def test_stats_counts_position_bias_and_agreement(tmp_path):
    store = store_with_items(tmp_path, 2)
    store.judge(Judgement(1, "ann", choice="1", shown_first=1))
    store.judge(Judgement(1, "bob", choice="1", shown_first=2, ratings=(4, None)))
    store.judge(Judgement(2, "ann", choice="tie", shown_first=1, correction="fix"))
    figures = stats(store)
    assert figures["items"] == 2 and figures["judgements"] == 3 and figures["reviewers"] == {"ann": 2, "bob": 1}
    assert figures["choices"] == {"1": 2, "tie": 1} and figures["ratings"] == 1 and figures["corrections"] == 1
    assert figures["left_wins"] == 0.5 and figures["pairwise_agreement"] == 1.0


def test_prompt_records():
    assert prompt_of(RawRecord("p.jsonl", 1, {"prompt": "hi"})) == [{"role": "user", "content": "hi"}]
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert prompt_of(RawRecord("p.jsonl", 2, {"messages": messages})) == messages[:1]  # SFT data serves too
    with pytest.raises(DataError, match=r"p\.jsonl:3"):
        prompt_of(RawRecord("p.jsonl", 3, {"question": "hi"}))


# ------------------------------------------------------------------- the server against hostile clients


@pytest.fixture
def live_server(tmp_path):
    """The feedback server in this process, on a free port, with canned responses (no model)."""
    store = store_with_items(tmp_path, 3)
    app = FeedbackApp(store, [item.prompt for item in store.items()], lambda prompt: (("x", "y"), ("m", "m")))
    server = serve_feedback(app, "127.0.0.1", 0, background=True, on_ready=lambda url: None)
    yield app, server.port
    server.stop()


def call(port: int, method: str, path: str, body=None, headers: dict | None = None, raw: bytes | None = None):
    """(status, JSON answer) of one request, with the headers a same-origin page sends unless overridden."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    sent = {"Host": f"127.0.0.1:{port}", "Content-Type": "application/json", **(headers or {})}
    payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    if payload is not None and "Content-Length" not in sent:
        sent["Content-Length"] = str(len(payload))
    connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for key, value in sent.items():
        connection.putheader(key, value)
    connection.endheaders()
    if payload is not None and int(sent.get("Content-Length", 0)) <= 1 << 20:
        connection.send(payload)
    response = connection.getresponse()
    text = response.read()
    try:
        answer = json.loads(text or b"{}")
    except ValueError:  # what the HTTP parser refuses before any route sees it is plain text
        answer = {"error": {"message": text.decode(errors="replace")}}
    connection.close()
    return response.status, answer


def token_of(port: int, name: str) -> dict:
    status, answer = call(port, "POST", "/api/join", {"name": name})
    assert status == 200, answer
    return {"Authorization": f"Bearer {answer['token']}"}


def test_nobody_writes_as_someone_else(live_server):
    app, port = live_server
    ann, bob = token_of(port, "ann"), token_of(port, "bob")
    assert call(port, "POST", "/api/judge", {"item_id": 1, "choice": "1"}, ann)[0] == 200
    # the name is ann's now: a join without her token, a judgement naming her, or no token at all are refused
    assert call(port, "POST", "/api/join", {"name": "ann"})[0] == 403
    assert call(port, "POST", "/api/join", {"name": "ann", "token": "guess" * 8})[0] == 403
    assert call(port, "POST", "/api/judge", {"item_id": 1, "choice": "2", "reviewer": "ann"}, bob)[0] == 403
    assert call(port, "POST", "/api/judge", {"item_id": 1, "choice": "2"})[0] == 401
    assert call(port, "GET", "/api/next")[0] == 401
    # bob's own vote goes under bob, whatever the body says
    assert call(port, "POST", "/api/judge", {"item_id": 1, "choice": "2"}, bob)[0] == 200
    assert {(j.reviewer, j.choice) for j in app.store.judgements()} == {("ann", "1"), ("bob", "2")}
    # ann, in her own browser (with her token), continues
    again = call(port, "POST", "/api/join", {"name": "ann", "token": ann["Authorization"].split()[1]})
    assert again[0] == 200 and call(port, "GET", "/api/next", headers=ann)[1]["judged"] == 1


def test_other_origins_and_rebound_names_are_refused(live_server):
    app, port = live_server
    ann = token_of(port, "ann")
    vote = {"item_id": 1, "choice": "1"}
    assert call(port, "POST", "/api/judge", vote, {**ann, "Origin": "http://localhost:9999"})[0] == 403
    assert call(port, "POST", "/api/judge", vote, {**ann, "Host": "evil.example"})[0] == 421
    assert call(port, "GET", "/", headers={"Host": f"evil.example:{port}"})[0] == 421  # DNS rebinding
    # what a cross-origin `no-cors` fetch or a form can send: not JSON
    assert call(port, "POST", "/api/judge", vote, {**ann, "Content-Type": "text/plain"})[0] == 415
    assert call(port, "POST", "/api/judge", vote, {**ann, "Content-Type": "application/x-www-form-urlencoded"}
                )[0] == 415
    assert app.store.judgements() == []
    assert call(port, "POST", "/api/judge", vote, {**ann, "Origin": f"http://127.0.0.1:{port}"})[0] == 200


MALFORMED = [  # (body or raw bytes, extra headers, status, words of the reason)
    ([1, 2], {}, 400, "JSON object"),
    ({"item_id": 1, "ratings": "5"}, {}, 400, "ratings"),
    ({"item_id": 1, "correction": {"a": 1}}, {}, 400, "correction"),
    ({"item_id": 1, "choice": "1", "shown_first": 3}, {}, 400, "shown_first"),
    ({"item_id": 10**30, "choice": "1"}, {}, 400, "item_id"),
    ({"item_id": "1", "choice": "1"}, {}, 400, "item_id"),
    ({"item_id": True, "choice": "1"}, {}, 400, "item_id"),
    ({"item_id": 1, "ratings": {"1": 3.7}}, {}, 400, "ratings.1"),
    ({"item_id": 1, "ratings": {"1": 9}}, {}, 400, "ratings.1"),
    ({"item_id": 1, "ratings": {"3": 4}}, {}, 400, "ratings"),
    ({"item_id": 1, "choice": "1", "reviewer": None}, {}, 403, "your own name"),
    ({"item_id": 1, "choice": "left"}, {}, 400, "choice"),
    ({"item_id": 99, "choice": "1"}, {}, 400, "no item"),
    ({"item_id": 1}, {}, 400, "a choice, a rating or a correction"),
    ({"item_id": 1, "choice": "1", "admin": True}, {}, 400, "unknown fields"),
    ({"item_id": 1, "correction": "x" * 20_000}, {}, 413, "limit"),
    (b"\xff\xfe{", {}, 400, "UTF-8 JSON"),
    (b"[" * 30_000 + b"]" * 30_000, {}, 400, "UTF-8 JSON"),
    (b"{}", {"Content-Length": str(10**12)}, 413, "limit"),
    (b"{" + b" " * (1 << 20) + b"}", {}, 413, "limit"),
    (b"{}", {"Content-Length": "-5"}, 400, "Invalid HTTP request"),  # refused by uvicorn's HTTP parser, in text
]


@pytest.mark.parametrize(("body", "headers", "status", "reason"), MALFORMED,
                         ids=[f"{i}-{case[3].split()[0]}" for i, case in enumerate(MALFORMED)])
def test_malformed_bodies_are_refused_with_a_reason(live_server, body, headers, status, reason):
    app, port = live_server
    ann = token_of(port, "ann")
    raw = body if isinstance(body, bytes) else None
    got, answer = call(port, "POST", "/api/judge", None if raw else body, {**ann, **headers}, raw=raw)
    assert (got, reason in answer.get("error", {}).get("message", "")) == (status, True), answer
    assert app.store.judgements() == []  # nothing half-saved
    assert call(port, "GET", "/api/next", headers=ann)[0] == 200  # and the server still answers


def test_a_closed_reviewer_list(tmp_path, live_server):
    app, port = live_server
    listing = tmp_path / "reviewers.txt"
    listing.write_text("# name token\nann ann-secret-0123456789\n")
    app.reviewers = load_reviewers(str(listing))
    assert call(port, "POST", "/api/join", {"name": "bob"})[0] == 403  # not on the list
    assert call(port, "POST", "/api/join", {"name": "ann", "token": "wrong-token-0123456"})[0] == 403
    status, _ = call(port, "POST", "/api/join", {"name": "ann", "token": "ann-secret-0123456789"})
    assert status == 200 and call(port, "GET", "/api/config")[1] == {"closed": True}
    listing.write_text("ann short\n")
    with pytest.raises(ConfigError, match=r"reviewers.txt:1"):
        load_reviewers(str(listing))


def test_listening_beyond_loopback_warns_and_other_hosts_are_not_served():
    from tuneforge.web.feedback import exposure_warning
    from tuneforge.web.guard import allowed_host as _allowed_host

    assert all(exposure_warning(host) is None for host in ("127.0.0.1", "::1", "localhost"))
    assert all("anyone who can reach" in exposure_warning(host) for host in ("0.0.0.0", "192.168.1.5"))
    # on loopback: loopback names only; beyond it, also the LAN addresses reviewers type; never a DNS name
    # that is not this machine's (a rebinding page's), nor another port
    assert _allowed_host("127.0.0.1:8765", "127.0.0.1", 8765) and _allowed_host("localhost:8765", "127.0.0.1", 8765)
    assert _allowed_host("[::1]:8765", "127.0.0.1", 8765)
    assert not _allowed_host("192.168.1.5:8765", "127.0.0.1", 8765)
    assert _allowed_host("192.168.1.5:8765", "0.0.0.0", 8765) and _allowed_host("[fe80::1]:8765", "::", 8765)
    for host in ("evil.example:8765", "evil.example", "127.0.0.1:9999", ""):
        assert not _allowed_host(host, "0.0.0.0", 8765), host


def test_a_file_that_is_not_a_feedback_database_is_named(tmp_path):
    other = tmp_path / "notes.db"
    other.write_text("not sqlite at all\n" * 100)
    with pytest.raises(ConfigError, match="not a tuneforge feedback database"):
        FeedbackStore(other)
    assert other.read_text() == "not sqlite at all\n" * 100  # untouched


# ------------------------------------------------------------------------------ the browser, end to end

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, prompts: Path, db: Path, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "tuneforge.cli", "feedback", "serve", "--model", str(model), "--prompts",
               str(prompts), "--db", str(db), "--port", str(port), "--max-new-tokens", "6"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = server.stdout.readline()
    assert "feedback page: http://127.0.0.1" in line, line + server.stdout.read()
    return server


def stop_server(server: subprocess.Popen, how: signal.Signals) -> None:
    server.send_signal(how)
    output, _ = server.communicate(timeout=30)
    assert server.returncode == 0 and "stopped" in output, output


def vote_in_page(driver, url: str, name: str, actions: list[tuple[str, dict]]) -> list[dict]:
    """Open the page as `name` and take each action (a button id, plus ratings / a correction to fill in
    first); returns what each item showed."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    field = driver.find_element(By.ID, "reviewer")
    field.clear()
    field.send_keys(name)
    driver.find_element(By.ID, "start").click()
    wait = WebDriverWait(driver, 60)
    seen, last = [], None
    for button, extra in actions:
        wait.until(lambda d, previous=last: d.execute_script("return item !== null && item.id !== arguments[0]",
                                                             previous))
        item = driver.execute_script("return item")
        item["button"], last = button, item["id"]
        seen.append(item)
        for side in ("left", "right"):
            if side in extra:
                Select(driver.find_element(By.ID, f"rating-{side}")).select_by_visible_text(str(extra[side]))
        if "correction" in extra:
            driver.find_element(By.ID, "correction").send_keys(extra["correction"])
        driver.find_element(By.ID, button).click()
    wait.until(lambda d: "saved" in d.find_element(By.ID, "status").text)
    return seen


def expected_pairs(shown: list[dict]) -> list[tuple[str, str]]:
    """(chosen, rejected) by majority per item, from what each reviewer saw and clicked."""
    votes: dict[int, list[int]] = {}
    texts: dict[int, dict[int, str]] = {}
    for item in shown:
        sides = {item["left"]["slot"]: item["left"]["text"], item["right"]["slot"]: item["right"]["text"]}
        texts[item["id"]] = sides
        side = {"choose-left": "left", "choose-right": "right"}.get(item["button"])
        if side:
            votes.setdefault(item["id"], []).append(item[side]["slot"])
    pairs = []
    for item_id, slots in votes.items():
        ones, twos = slots.count(1), slots.count(2)
        if ones != twos:
            winner = 1 if ones > twos else 2
            pairs.append((texts[item_id][winner], texts[item_id][3 - winner]))
    return sorted(pairs)


@pytest.mark.heavy  # a server process, a model and Chromium: about 20 s (make test-heavy, as the runs UI's)
def test_feedback_loop_in_the_browser(tmp_path, tiny_model_dir, browser):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Say something about {w}."}
                                                        for w in ("cats", "rain", "tea", "maps")])
    db, port = tmp_path / "feedback.db", free_port()
    url = f"http://127.0.0.1:{port}/"
    server = start_server(tiny_model_dir, prompts, db, port)
    try:
        ann = vote_in_page(browser, url, "ann", [("choose-left", {}), ("choose-right", {"left": 5, "right": 1}),
                                                 ("tie", {"correction": "Tea is a drink."})])
        bob = vote_in_page(browser, url, "bob", [("choose-left", {})])
    finally:
        stop_server(server, signal.SIGINT)  # Ctrl-C
    assert bob[0]["id"] == ann[0]["id"]  # items others judged come first, so reviewers overlap

    server = start_server(tiny_model_dir, prompts, db, port)  # a restart keeps every vote and every item
    try:
        from selenium.webdriver.common.by import By

        later = vote_in_page(browser, url, "ann", [("choose-left", {})])
        assert later[0]["id"] not in {item["id"] for item in ann}  # ann continues where she stopped
        browser.refresh()
        browser.find_element(By.ID, "start").click()  # the name was remembered by the page
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(browser, 30).until(lambda d: "judged 4 of 4" in d.find_element(By.ID, "progress").text)
        assert browser.find_element(By.ID, "done").is_displayed()
    finally:
        stop_server(server, signal.SIGTERM)  # a service manager's stop

    store = FeedbackStore(db)
    assert len(store.items()) == 4 and len(store.judgements()) == 5
    by_item = {item.id: item for item in store.items()}
    for shown in ann + bob + later:  # what the page showed on each side is the stored response of that slot
        for side in ("left", "right"):
            assert by_item[shown["id"]].responses[shown[side]["slot"] - 1] == shown[side]["text"]

    out = tmp_path / "export"
    result = subprocess.run([sys.executable, "-m", "tuneforge.cli", "feedback", "export", "--db", str(db), "--out",
                             str(out)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    pairs = [json.loads(x) for x in (out / "preferences.jsonl").read_text().splitlines()]
    wanted = [p for p in expected_pairs(ann + bob + later) if p[0].strip() and p[1].strip()]
    assert sorted((p["chosen"], p["rejected"]) for p in pairs) == wanted and len(wanted) >= 2
    rated = [json.loads(x) for x in (out / "rated.jsonl").read_text().splitlines()]
    assert {(r["completion"], r["label"]) for r in rated} == {(ann[1]["left"]["text"], True),
                                                              (ann[1]["right"]["text"], False)}
    assert json.loads((out / "sft.jsonl").read_text())["completion"] == "Tea is a drink."
    stats_out = subprocess.run([sys.executable, "-m", "tuneforge.cli", "feedback", "stats", "--db", str(db)],
                               capture_output=True, text=True, check=True).stdout
    agree = ann[0]["left"]["slot"] == bob[0]["left"]["slot"]  # both clicked left: the same response if so
    assert "judgements: 5" in stats_out and f"pairwise agreement: {float(agree):.3f}" in stats_out

    config = tiny_config(tmp_path, tiny_model_dir, objective={"name": "dpo"},
                         data={"train": str(out / "preferences.jsonl"), "test": None},
                         train={"max_steps": 2, "batch_size": 2})
    run = train(config, quiet=True)
    assert run.steps == 2 and (run.run_dir / "adapter").is_dir()


EVIL_PAGE = """<!doctype html><html><body><form id="f" method="POST" action="{target}/api/judge">
<input name="item_id" value="1"><input name="choice" value="2"></form><p id="out"></p><script>
const vote = JSON.stringify({{item_id: 1, choice: "2"}});
const attempts = [
  fetch("{target}/api/judge", {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}},
                                body: vote}}),
  fetch("{target}/api/judge", {{method: "POST", headers: {{"Content-Type": "application/json",
                                "Authorization": "Bearer {token}"}}, body: vote}}),
];
Promise.allSettled(attempts).then((results) => {{
  document.getElementById("out").textContent = "done " + results.map((r) => r.status).join(",");
}});
</script></body></html>"""


def test_in_the_browser_other_pages_cannot_vote_and_names_cannot_be_taken(tmp_path, live_server, browser):
    """A page from another origin, even one that knows a reviewer's token, cannot write a vote (no-cors
    text/plain, a CORS request with the token, a form post); a second browser cannot take a reviewer's name."""
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    app, port = live_server
    target = f"http://127.0.0.1:{port}"
    shown = vote_in_page(browser, target + "/", "ann", [("choose-left", {})])
    token = browser.execute_script("return localStorage.getItem('tuneforge-token:ann')")
    assert app.store.reviewer_of(token) == "ann"
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text(EVIL_PAGE.format(target=target, token=token))
    # threaded: a connection Chromium opens ahead and never uses would hold a one-request-at-a-time server, and
    # shutdown() with it, until Chromium drops the idle socket (the test took 65 s instead of 2 in busy suites)
    evil = ThreadingHTTPServer(("127.0.0.1", 0),
                               lambda *a: SimpleHTTPRequestHandler(*a, directory=str(tmp_path / "site")))
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        browser.get(f"http://localhost:{evil.server_address[1]}/index.html")
        WebDriverWait(browser, 30).until(lambda d: "done" in d.find_element(By.ID, "out").text)
        browser.find_element(By.ID, "f").submit()
        WebDriverWait(browser, 30).until(lambda d: "/api/judge" in d.current_url)
    finally:
        evil.shutdown()
        evil.server_close()
    left_slot = shown[0]["left"]["slot"]
    assert [(j.reviewer, j.choice) for j in app.store.judgements()] == [("ann", str(left_slot))]

    browser.get(target + "/")
    browser.execute_script("localStorage.clear()")  # another browser: ann's token is not here
    browser.refresh()
    field = browser.find_element(By.ID, "reviewer")
    field.clear()
    field.send_keys("ann")
    browser.find_element(By.ID, "start").click()
    WebDriverWait(browser, 30).until(lambda d: "taken" in d.find_element(By.ID, "status").text)
    assert not browser.find_element(By.ID, "work").is_displayed()
    assert len(app.store.judgements()) == 1
