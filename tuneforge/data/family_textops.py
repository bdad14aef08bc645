"""The bundled task family for meta-learning and few-shot curves: `textops`, seventeen small text tasks of four
kinds (transformations of words, format conversions, lookups, classification with verbalised labels), twelve for
meta-training and five held-out targets that meta-training never sees, each target related to some meta-training
tasks but not a copy of one (small letters after capital letters, alphabetical order after reversed order, a
lookup table and a label set of its own, the reverse of a conversion).

Written in tuneforge's family layout (`data.family`): family.json, and per task train.jsonl (a pool of 256
records from which k-shot support sets are drawn by seed) and test.jsonl (up to 50 records, none of whose inputs is
in the pool, none asked twice), each record {"input", "output"} plus "options" for the classification tasks.
Regenerate with `python -m tuneforge.data.family_textops` (seeded, so the files are the same each time)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

from tuneforge.data.bundled import CAPITALS, WORDS, in_words

OUT_DIR = Path(__file__).parent / "families" / "textops"
SEED = 2026
POOL, TEST = 256, 50
PLURALS = {"child": "children", "mouse": "mice", "foot": "feet", "tooth": "teeth", "man": "men", "woman": "women",
           "person": "people", "goose": "geese", "box": "boxes", "bus": "buses", "city": "cities", "leaf": "leaves",
           "knife": "knives", "wolf": "wolves", "baby": "babies", "dish": "dishes", "church": "churches",
           "story": "stories", **{w: w + "s" for w in WORDS if not w.endswith(("s", "x", "h", "y"))}}
NAMES = ["Ana", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Iris", "Jonas", "Kemal", "Lina"]
POSITIVE = ["great", "lovely", "excellent", "wonderful", "delightful", "superb", "pleasant", "brilliant"]
NEGATIVE = ["awful", "terrible", "boring", "dreadful", "poor", "disappointing", "horrible", "bland"]
THINGS = ["film", "meal", "hotel", "book", "concert", "service", "game", "trip"]
ANIMALS = ["horse", "tiger", "rabbit", "eagle", "dolphin", "fox", "camel", "parrot", "whale", "zebra", "owl", "bear",
           "lion", "sheep", "goat", "donkey", "penguin", "shark", "monkey", "giraffe", "wolf", "deer", "frog", "duck",
           "goose", "hamster", "otter", "badger", "salmon", "turtle"]
VEHICLES = ["truck", "bicycle", "tram", "scooter", "ferry", "helicopter", "van", "canoe", "tractor", "taxi", "jet",
            "motorbike", "bus", "train", "yacht", "submarine", "airplane", "glider", "rickshaw", "sled", "limousine",
            "ambulance", "bulldozer", "minivan", "kayak", "skateboard", "airship", "trolleybus", "hovercraft",
            "caravan"]
ROMAN = [("X", 10), ("IX", 9), ("V", 5), ("IV", 4), ("I", 1)]


def roman(number: int) -> str:
    """1-99 as a Roman numeral."""
    tens, out = [("XC", 90), ("L", 50), ("XL", 40)], ""
    for symbol, value in [*tens, *ROMAN]:
        while number >= value:
            out, number = out + symbol, number - value
    return out


def _part(values: list, part: str) -> list:
    """A lookup's keys for one split: every third for the test set, the rest for the training pool, so a support
    set never shows the answer to a test question."""
    return [v for i, v in enumerate(values) if (i % 3 == 0) == (part == "test")]


def _words(rng: random.Random, low: int = 2, high: int = 5) -> list[str]:
    return rng.sample(WORDS, rng.randint(low, high))


def _person(rng: random.Random) -> tuple[str, int, str]:
    return rng.choice(NAMES), rng.randint(18, 90), rng.choice(list(CAPITALS.values()))


def _review(rng: random.Random, part: str) -> tuple[str, str]:
    label = rng.choice(["positive", "negative"])
    word = rng.choice(_part(POSITIVE if label == "positive" else NEGATIVE, part))
    return f"The {rng.choice(THINGS)} was {word}.", label


def _lookup(table: dict[str, str]) -> Callable[[random.Random, str], tuple[str, str]]:
    def make(rng: random.Random, part: str) -> tuple[str, str]:
        key = rng.choice(_part(list(table), part))
        return key, table[key]
    return make


# instruction, make(rng, "train" | "test") -> (input, output), the label set of a classification task
Task = tuple[str, Callable[[random.Random, str], tuple[str, str]], tuple[str, ...]]


def _text(words: list[str]) -> str:
    return " ".join(words)


TASKS: dict[str, Task] = {
    # meta-training tasks
    "upper": ("Rewrite the words in capital letters.", lambda r, _: (_text(w := _words(r)), _text(w).upper()), ()),
    "reverse_words": ("Write the words in reverse order.",
                      lambda r, _: (_text(w := _words(r)), _text(w[::-1])), ()),
    "first_word": ("Write the first word.", lambda r, _: (_text(w := _words(r)), w[0]), ()),
    "last_word": ("Write the last word.", lambda r, _: (_text(w := _words(r)), w[-1]), ()),
    "count_words": ("How many words are there? Answer with a number.",
                    lambda r, _: (_text(w := _words(r, 1, 8)), str(len(w))), ()),
    "number_words": ("Write the number in words.", lambda r, _: (str(n := r.randint(1, 99)), in_words(n)), ()),
    "capital": ("What is the capital of this country?", _lookup(CAPITALS), ()),
    "plural": ("Write the plural of the noun.", _lookup(PLURALS), ()),
    "to_json": ("Convert the record to JSON.",
                lambda r, _: (f"name: {(p := _person(r))[0]}, age: {p[1]}, city: {p[2]}",
                              json.dumps({"name": p[0], "age": p[1], "city": p[2]})), ()),
    "sentiment": ("Is the review positive or negative?", _review, ("positive", "negative")),
    "even_odd": ("Is the number even or odd?",
                 lambda r, _: (str(n := r.randint(1, 999)), "even" if n % 2 == 0 else "odd"), ("even", "odd")),
    "add": ("Add the two numbers. Answer with the number only.",
            lambda r, _: (f"{(a := r.randint(1, 50))} and {(b := r.randint(1, 50))}", str(a + b)), ()),
    # held-out targets
    "lower": ("Rewrite the words in small letters.",
              lambda r, _: (_text(w := [x.upper() if r.random() < 0.5 else x.capitalize() for x in _words(r)]),
                            _text(w).lower()), ()),
    "sort_words": ("Write the words in alphabetical order.",
                   lambda r, _: (_text(w := _words(r)), _text(sorted(w))), ()),
    "roman": ("Write the number as a Roman numeral.", _lookup({str(n): roman(n) for n in range(1, 100)}), ()),
    "from_json": ("Convert the JSON to a record of the form 'name: ..., age: ..., city: ...'.",
                  lambda r, _: (json.dumps({"name": (p := _person(r))[0], "age": p[1], "city": p[2]}),
                                f"name: {p[0]}, age: {p[1]}, city: {p[2]}"), ()),
    "animal_or_vehicle": ("Is it an animal or a vehicle?",
                          _lookup({**dict.fromkeys(ANIMALS, "animal"), **dict.fromkeys(VEHICLES, "vehicle")}),
                          ("animal", "vehicle")),
}
TARGETS = ("lower", "sort_words", "roman", "from_json", "animal_or_vehicle")


def generate() -> dict:
    """family.json's content and each task's records: {task: {"train": [...], "test": [...]}}."""
    rng = random.Random(SEED)
    records = {}
    for name, (_, make, options) in TASKS.items():
        train = [dict(zip(("input", "output"), make(rng, "train"), strict=True)) for _ in range(POOL)]
        seen, test = {row["input"] for row in train}, []
        for _ in range(100 * TEST):  # no test question is in the training pool, nor asked twice
            row = dict(zip(("input", "output"), make(rng, "test"), strict=True))
            if row["input"] not in seen:
                test.append(row)
                seen.add(row["input"])
            if len(test) == TEST:
                break
        records[name] = {split: [{**row, "options": list(options)} for row in rows] if options else rows
                         for split, rows in (("train", train), ("test", test))}
    family = {"name": "textops", "meta_train": [t for t in TASKS if t not in TARGETS], "targets": list(TARGETS),
              "instructions": {name: instruction for name, (instruction, _, _) in TASKS.items()}}
    return {"family": family, "records": records}


def write(out: Path = OUT_DIR) -> None:
    made = generate()
    out.mkdir(parents=True, exist_ok=True)
    (out / "family.json").write_text(json.dumps(made["family"], indent=1) + "\n")
    for task, splits in made["records"].items():
        (out / task).mkdir(exist_ok=True)
        for split, rows in splits.items():
            (out / task / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


if __name__ == "__main__":
    write()
