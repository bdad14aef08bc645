"""Task families: the bundled `textops` (held-out targets, test questions never in a support set, k-shot sets nested
and seeded), MetaICL's distributed layout, and located errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneforge.data import family_textops
from tuneforge.data.family import read_family
from tuneforge.errors import DataError

METAICL = Path(__file__).parent / "data" / "real" / "metaicl"


def prompt_and_answer(example) -> tuple[str, str]:
    *_, user, assistant = example.messages
    return user["content"], assistant["content"]


def test_bundled_family_is_the_generator_output():
    """The committed files are what the seeded generator writes (regenerate with python -m ...)."""
    made = family_textops.generate()
    family = read_family("textops")
    assert json.loads((family.root / "family.json").read_text()) == made["family"]
    for task, splits in made["records"].items():
        for split, rows in splits.items():
            lines = (family.root / task / f"{split}.jsonl").read_text().splitlines()
            assert [json.loads(line) for line in lines] == rows


def test_targets_are_held_out_and_test_questions_unseen():
    family = read_family("textops")
    assert set(family.meta_train).isdisjoint(family.targets) and len(family.targets) == 5
    for name in family.targets:
        task = family.tasks[name]
        pool = {prompt_and_answer(e)[0] for e in task.training()}
        tests = [prompt_and_answer(e)[0] for e in task.tests()]
        assert len(tests) >= 20 and len(set(tests)) == len(tests) and pool.isdisjoint(tests)
    system, user, assistant = family.tasks["roman"].tests()[0].messages
    assert (system["role"], system["content"]) == ("system", "Write the number as a Roman numeral.")
    assert (user["content"], assistant["content"]) == ("43", "XLIII")
    assert family.tasks["roman"].tests()[0].task == "roman"


def test_support_sets_are_seeded_and_nested():
    task = read_family("textops").tasks["sort_words"]
    four, sixteen = task.support(4, seed=0), task.support(16, seed=0)
    assert len(four) == 4 and sixteen[:4] == four and task.support(4, seed=0) == four
    assert task.support(4, seed=1) != four and task.support(0, seed=0) == []
    with pytest.raises(DataError, match="fewer than k=300"):
        task.support(300, seed=0)


def test_metaicl_layout():
    """MetaICL's files as distributed: {task}/{task}_{k}_{seed}_{split}.jsonl, tasks split by a config file."""
    family = read_family(str(METAICL), split=str(METAICL / "class_to_class.json"))
    assert family.meta_train == ("glue-sst2", "ag_news") and family.targets == ("superglue-cb",)
    sst = family.tasks["glue-sst2"]
    first = sst.support(4, seed=13)
    assert [prompt_and_answer(e)[1] for e in first] == ["positive", "negative", "positive", "positive"]
    assert prompt_and_answer(first[0])[0] == "it 's a charming and often affecting journey . "  # no instruction
    assert sst.support(4, seed=21) != first and len(sst.training()) == 6  # the 16,384-shot file
    assert [prompt_and_answer(e)[1] for e in sst.tests()] == ["negative", "negative"]
    with pytest.raises(DataError, match=r"no 16-shot training file for seed 13.*k=4 seed=13"):
        sst.support(16, seed=13)


def test_located_errors(tmp_path):
    with pytest.raises(DataError, match=r"no family\.json and no split file"):
        read_family(str(tmp_path))
    (tmp_path / "family.json").write_text(json.dumps({"meta_train": ["a", "b"], "targets": ["b"]}))
    with pytest.raises(DataError, match=r"family.json.*targets.*\['b'\] are both"):
        read_family(str(tmp_path))
    (tmp_path / "family.json").write_text(json.dumps({"meta_train": ["a"], "targets": ["b"]}))
    with pytest.raises(DataError, match="no folder for task a"):
        read_family(str(tmp_path))
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "train.jsonl").write_text('{"input": "x", "output": "y"}\n{"input": 3}\n')
        (tmp_path / name / "test.jsonl").write_text('{"input": "x", "output": "y"}\n')
    with pytest.raises(DataError, match=r"train.jsonl:2.*input.*expected a string"):
        read_family(str(tmp_path)).tasks["a"].training()
    (tmp_path / "a" / "train.jsonl").write_text('{"input": "x", "output": "y"}\nnot json\n')
    with pytest.raises(DataError, match=r"train.jsonl:2.*malformed JSON"):
        read_family(str(tmp_path)).tasks["a"].training()
