"""The feedback database: prompts with two sampled responses ("items"), and each reviewer's judgement of
an item (which response is better or a tie, a 1–5 rating of each, a corrected answer).

SQLite is the store, in WAL mode (readers never block the writer, so several reviewers vote at once) with
`synchronous=FULL` (a vote the page was told is saved survives a crash or restart). Every request opens its
own connection; each write is one transaction.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from tuneforge.errors import ConfigError
from tuneforge.runs.paths import require_writable_dir

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    prompt_key TEXT NOT NULL UNIQUE,      -- the conversation as canonical JSON: one item per prompt
    prompt TEXT NOT NULL,                 -- JSON list of role/content messages, ending with the user's turn
    response_1 TEXT NOT NULL,
    response_2 TEXT NOT NULL,
    model_1 TEXT NOT NULL,
    model_2 TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS judgements (
    id INTEGER PRIMARY KEY,
    item_id INTEGER NOT NULL REFERENCES items(id),
    reviewer TEXT NOT NULL,
    choice TEXT CHECK (choice IN ('1', '2', 'tie')),   -- NULL: ratings or a correction only
    shown_first INTEGER CHECK (shown_first IN (1, 2)), -- which response the page showed on the left
    rating_1 INTEGER CHECK (rating_1 BETWEEN 1 AND 5),
    rating_2 INTEGER CHECK (rating_2 BETWEEN 1 AND 5),
    correction TEXT,
    updated REAL NOT NULL,
    UNIQUE (item_id, reviewer)            -- a reviewer who judges an item again revises their judgement
);
CREATE TABLE IF NOT EXISTS reviewers (
    name TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL,           -- the secret the server issued to whoever took the name (never stored)
    created REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Item:
    id: int
    prompt: list[dict[str, str]]
    responses: tuple[str, str]
    models: tuple[str, str]


@dataclass(frozen=True)
class Judgement:
    item_id: int
    reviewer: str
    choice: str | None = None  # "1", "2" or "tie"
    shown_first: int | None = None
    ratings: tuple[int | None, int | None] = (None, None)
    correction: str | None = None


class FeedbackStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise ConfigError(f"--db {self.path}: the directory {self.path.parent} does not exist\n  fix: create it, "
                              "or give another path")
        try:
            with closing(self._open()) as db:
                db.execute("PRAGMA journal_mode=WAL")  # stored in the file: every later connection uses it
                db.executescript(SCHEMA)
                db.execute("SELECT id, prompt_key, response_1 FROM items LIMIT 0")  # an older file of another shape
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"--db {self.path}: not a tuneforge feedback database ({exc})\n  fix: give the file "
                              "`tuneforge feedback serve --db` wrote, or a new path to start one") from None

    def _open(self) -> sqlite3.Connection:
        try:
            return sqlite3.connect(self.path, timeout=30, isolation_level=None)
        except sqlite3.Error as exc:
            raise ConfigError(f"--db {self.path}: cannot open the feedback database: {exc}\n  fix: give a "
                              "writable path") from None

    @contextmanager
    def connect(self, *, write: bool = False) -> Iterator[sqlite3.Connection]:
        """One connection, in one transaction (committed on success, rolled back on an error); a writer takes
        the write lock at the start, so its checks and its write see the same database."""
        with closing(self._open()) as db:
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # ------------------------------------------------------------------------------------------ items

    def has_item(self, prompt: Sequence[dict]) -> bool:
        with self.connect() as db:
            return db.execute("SELECT 1 FROM items WHERE prompt_key = ?", (_key(prompt),)).fetchone() is not None

    def add_item(self, prompt: Sequence[dict], responses: tuple[str, str], models: tuple[str, str]) -> int:
        """The item of this prompt (an existing one is kept: a restarted server does not sample it again)."""
        key = _key(prompt)
        with self.connect(write=True) as db:
            db.execute("INSERT OR IGNORE INTO items (prompt_key, prompt, response_1, response_2, model_1, model_2, "
                       "created) VALUES (?, ?, ?, ?, ?, ?, ?)", (key, json.dumps(list(prompt)), *responses, *models,
                                                                time.time()))
            return db.execute("SELECT id FROM items WHERE prompt_key = ?", (key,)).fetchone()[0]

    def next_item_for(self, reviewer: str) -> Item | None:
        """The oldest item this reviewer has not judged, those others judged first (their votes then give
        agreement figures); None when they have judged every item there is."""
        with self.connect() as db:
            row = db.execute(
                "SELECT i.id, i.prompt, i.response_1, i.response_2, i.model_1, i.model_2 FROM items i "
                "WHERE NOT EXISTS (SELECT 1 FROM judgements j WHERE j.item_id = i.id AND j.reviewer = ?) "
                "ORDER BY (SELECT COUNT(*) FROM judgements j WHERE j.item_id = i.id) > 0 DESC, i.id LIMIT 1",
                (reviewer,)).fetchone()
        return _item(row) if row else None

    def items(self) -> list[Item]:
        with self.connect() as db:
            rows = db.execute("SELECT id, prompt, response_1, response_2, model_1, model_2 FROM items ORDER BY id")
            return [_item(row) for row in rows.fetchall()]

    # -------------------------------------------------------------------------------------- reviewers

    def claim_reviewer(self, name: str, token: str) -> bool:
        """Give `name` to whoever holds `token`, unless someone took the name first; True when it is theirs now
        (taken now, or taken before with the same token)."""
        with self.connect(write=True) as db:
            row = db.execute("SELECT token_sha256 FROM reviewers WHERE name = ?", (name,)).fetchone()
            if row is None:
                db.execute("INSERT INTO reviewers (name, token_sha256, created) VALUES (?, ?, ?)",
                           (name, token_digest(token), time.time()))
                return True
        return hmac.compare_digest(row[0], token_digest(token))

    def reviewer_of(self, token: str) -> str | None:
        """The name whose token this is, or None."""
        with self.connect() as db:
            row = db.execute("SELECT name FROM reviewers WHERE token_sha256 = ?", (token_digest(token),)).fetchone()
        return row[0] if row else None

    # ------------------------------------------------------------------------------------- judgements

    def judge(self, judgement: Judgement) -> None:
        """Save (or revise) a reviewer's judgement of an item; a judgement that says nothing is refused."""
        if not judgement.reviewer.strip():
            raise ValueError("a judgement needs the reviewer's name")
        if judgement.choice is None and judgement.ratings == (None, None) and not (judgement.correction or "").strip():
            raise ValueError("a judgement needs a choice, a rating or a correction")
        with self.connect(write=True) as db:
            if db.execute("SELECT 1 FROM items WHERE id = ?", (judgement.item_id,)).fetchone() is None:
                raise ValueError(f"no item {judgement.item_id}")
            db.execute(
                "INSERT INTO judgements (item_id, reviewer, choice, shown_first, rating_1, rating_2, correction, "
                "updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (item_id, reviewer) DO UPDATE SET "
                "choice = excluded.choice, shown_first = excluded.shown_first, rating_1 = excluded.rating_1, "
                "rating_2 = excluded.rating_2, correction = excluded.correction, updated = excluded.updated",
                (judgement.item_id, judgement.reviewer.strip(), judgement.choice, judgement.shown_first,
                 *judgement.ratings, (judgement.correction or "").strip() or None, time.time()))

    def judgements(self) -> list[Judgement]:
        with self.connect() as db:
            rows = db.execute("SELECT item_id, reviewer, choice, shown_first, rating_1, rating_2, correction "
                              "FROM judgements ORDER BY item_id, reviewer").fetchall()
        return [Judgement(r[0], r[1], r[2], r[3], (r[4], r[5]), r[6]) for r in rows]

    def count_for(self, reviewer: str) -> int:
        with self.connect() as db:
            return db.execute("SELECT COUNT(*) FROM judgements WHERE reviewer = ?", (reviewer,)).fetchone()[0]


# --------------------------------------------------------------------------------------- export, stats


def export(store: FeedbackStore, out_dir: Path) -> dict[str, int]:
    """Training data from the judgements, each file written whole or not at all:
    - preferences.jsonl (prompt, chosen, rejected) for `reward`, `dpo` and the DPO family: an item's
      majority choice over its reviewers (ties and split votes give no pair);
    - rated.jsonl (prompt, completion, label) for `kto`: a response's mean rating, 4 or more desirable,
      2 or less undesirable;
    - sft.jsonl (prompt, completion) for `sft`: every correction a reviewer wrote.
    An empty response is judged like any other, but makes no training record (counted in `skipped_empty`)."""
    items = {item.id: item for item in store.items()}
    by_item: dict[int, list[Judgement]] = {}
    for judgement in store.judgements():
        by_item.setdefault(judgement.item_id, []).append(judgement)
    preferences, rated, corrections = [], [], []
    for item_id, judgements in by_item.items():
        item = items[item_id]
        prompt = _prompt_field(item.prompt)
        votes = Counter(j.choice for j in judgements if j.choice in ("1", "2"))
        if votes["1"] != votes["2"]:
            winner = 0 if votes["1"] > votes["2"] else 1
            preferences.append({"prompt": prompt, "chosen": item.responses[winner],
                                "rejected": item.responses[1 - winner]})
        for side in (0, 1):
            scores = [j.ratings[side] for j in judgements if j.ratings[side] is not None]
            mean = sum(scores) / len(scores) if scores else None
            if mean is not None and (mean >= 4 or mean <= 2):
                rated.append({"prompt": prompt, "completion": item.responses[side], "label": mean >= 4})
        corrections += [{"prompt": prompt, "completion": j.correction} for j in judgements if j.correction]
    files = {"preferences.jsonl": preferences, "rated.jsonl": rated, "sft.jsonl": corrections}
    skipped = 0
    for name, records in files.items():
        kept = [r for r in records if all(str(r.get(k, "x")).strip() for k in ("chosen", "rejected", "completion"))]
        skipped += len(records) - len(kept)
        files[name] = kept
    require_writable_dir(out_dir, "--out")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, records in files.items():
        _write_jsonl(out_dir / name, records)
    return {name: len(records) for name, records in files.items()} | {"skipped_empty": skipped}


def stats(store: FeedbackStore) -> dict:
    """Counts, each reviewer's share, position bias, and agreement between reviewers on the items that
    several judged: pairwise agreement and Fleiss' κ over {response 1, response 2, tie}."""
    judgements = store.judgements()
    choices = [j for j in judgements if j.choice]
    decided = [j for j in choices if j.choice != "tie" and j.shown_first]
    by_item: dict[int, list[str]] = {}
    for j in choices:
        by_item.setdefault(j.item_id, []).append(j.choice)
    shared = {item: votes for item, votes in by_item.items() if len(votes) >= 2}
    return {
        "items": len(store.items()),
        "judgements": len(judgements),
        "reviewers": dict(Counter(j.reviewer for j in judgements).most_common()),
        "choices": dict(Counter(j.choice for j in choices)),
        "ratings": sum((r is not None) for j in judgements for r in j.ratings),
        "corrections": sum(1 for j in judgements if j.correction),
        "left_wins": (sum(int(j.choice) == j.shown_first for j in decided) / len(decided)) if decided else None,
        "items_with_several_votes": len(shared),
        "pairwise_agreement": pairwise_agreement(list(shared.values())),
        "fleiss_kappa": fleiss_kappa(list(shared.values())),
    }


def pairwise_agreement(votes_per_item: list[list[str]]) -> float | None:
    """Of all pairs of reviewers who voted on the same item, the share that chose the same option."""
    pairs = [a == b for votes in votes_per_item for a, b in itertools.combinations(votes, 2)]
    return sum(pairs) / len(pairs) if pairs else None


def fleiss_kappa(votes_per_item: list[list[str]]) -> float | None:
    """Fleiss' κ (1971) with a varying number of raters per item: observed agreement P̄ = mean over items of
    Σ_j n_ij (n_ij − 1) / (n_i (n_i − 1)), chance agreement P_e = Σ_j p_j² from the overall category shares;
    κ = (P̄ − P_e) / (1 − P_e). None when undefined (no item with two votes, or a single category used)."""
    items = [Counter(votes) for votes in votes_per_item if len(votes) >= 2]
    if not items:
        return None
    observed = sum(sum(n * (n - 1) for n in c.values()) / (sum(c.values()) * (sum(c.values()) - 1))
                   for c in items) / len(items)
    totals = sum(items, Counter())
    everything = sum(totals.values())
    chance = sum((n / everything) ** 2 for n in totals.values())
    return None if chance == 1 else (observed - chance) / (1 - chance)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _key(prompt: Sequence[dict]) -> str:
    return json.dumps(list(prompt), sort_keys=True, ensure_ascii=False)


def _item(row) -> Item:
    return Item(row[0], json.loads(row[1]), (row[2], row[3]), (row[4], row[5]))


def _prompt_field(prompt: list[dict]) -> str | list[dict]:
    """A lone user turn as plain text (the simplest record), a longer conversation as messages."""
    return prompt[0]["content"] if len(prompt) == 1 and prompt[0]["role"] == "user" else prompt


def _write_jsonl(path: Path, records: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    tmp.replace(path)
