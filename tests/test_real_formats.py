"""Published dataset layouts, read as their authors meant them. Each file in tests/data/real/ is a small
sample written in the exact field layout of the real files (Stanford Alpaca, ShareGPT, OpenAI chat with tools,
LLaMA-Factory's Glaive tool-call, DPO and KTO files, UltraFeedback-binarized, TRL's implicit-prompt pairs and
unpaired KTO, Anthropic HH-RLHF, a CSV exported with a byte order mark, a gzipped JSON Lines file); each test
asserts what is trained, token by token."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tests.conftest import tiny_config, write_jsonl
from tests.test_label_masks import trained_runs
from tuneforge.api import train
from tuneforge.config import DataConfig, DatasetSpec
from tuneforge.data.dataset import encode_examples, load_examples
from tuneforge.errors import DataError

REAL = Path(__file__).parent / "data" / "real"
END = "<|im_end|>"


def load(name: str, **spec) -> tuple[list, list[str]]:
    notes: list[str] = []
    return load_examples([DatasetSpec(path=str(REAL / name), **spec)], seed=0, notes=notes), notes


def trained(example, tokenizer) -> list[list[str]]:
    """Per sequence of the example (chosen, then rejected), its trained runs of text."""
    [item], _ = encode_examples([example], tokenizer, DataConfig(train=["x"], max_seq_len=1024, cache=False))
    return [trained_runs(sequence, tokenizer) for sequence in item.sequences]


def test_stanford_alpaca(tokenizer):
    examples, notes = load("alpaca.json")
    assert len(examples) == 2 and not notes
    assert examples[1].messages[0] == {"role": "user", "content": "Identify the odd one out.\n\nTwitter, Instagram, "
                                                                  "Telegram"}
    assert trained(examples[1], tokenizer) == [["Telegram" + END]]


def test_gzipped_json_lines(tokenizer):
    examples, _ = load("alpaca.jsonl.gz")
    assert [trained(e, tokenizer) for e in examples] == [[["chat" + END]], [["chien" + END]]]


def test_sharegpt_every_gpt_turn_is_trained(tokenizer):
    examples, notes = load("sharegpt.json")
    assert not notes  # the conversation id is bookkeeping, not an unread field
    gpt = [t["value"] for t in json.loads((REAL / "sharegpt.json").read_text())[0]["conversations"][1::2]]
    assert trained(examples[0], tokenizer) == [[text + END for text in gpt]]


def test_openai_messages_with_tool_calls_and_tool_results(tokenizer):
    [example], notes = load("openai_tools.jsonl")
    assert not notes
    roles = [m["role"] for m in example.messages]
    assert roles == ["system", "user", "assistant", "tool", "assistant"]
    assert '"name": "get_current_weather"' in example.messages[0]["content"]  # the tool definitions are shown
    call = ('<tool_call>\n{"name": "get_current_weather", "arguments": {"location": "San Francisco, USA", '
            '"format": "celsius"}}\n</tool_call>')
    # the call and the final answer are trained; the tool's result is input, never trained
    assert trained(example, tokenizer) == [[call + END, "It is 18 degrees and fogy in San Francisco." + END]]


def test_sharegpt_function_call_and_observation(tokenizer):
    [example], _ = load("glaive_toolcall_sharegpt.json")
    assert [m["role"] for m in example.messages] == ["system", "user", "assistant", "user", "assistant", "tool",
                                                     "assistant"]
    assert "search_recipes" in example.messages[0]["content"]
    runs = trained(example, tokenizer)[0]
    assert len(runs) == 3 and runs[1].startswith('<tool_call>\n{"name": "search_recipes", "arguments": '
                                                 '{"ingredients": ["chicken", "bell peppers", "rice"]}}')
    assert not any("Stir Fry\"}" in run for run in runs)  # the observation is not trained


@pytest.mark.parametrize(("name", "prompt", "chosen", "rejected"), [
    ("ultrafeedback_binarized.jsonl", "Which animal has two hands, a hyrax or a dog?",
     "Neither a hyrax nor a dog has hands.", "A dog has two hands."),
    ("trl_implicit_prompt.jsonl", "What color is the sky?", "It is blue.", "It is green."),
    ("dpo_llamafactory_sharegpt.json", "Hi! I'd like to create a new language game simulating the first person "
     "perspective of a character named Angela.", "That sounds like a fun and engaging idea! Start with the "
     "character's name and background.", "Hello!"),
    ("dpo_llamafactory_alpaca.json", "Write a haiku about rain.",
     "Soft rain on the roof\nthe garden drinks in silence\nclouds let go of grey", "Rain is wet."),
])
def test_preference_pairs_in_published_layouts(tokenizer, name, prompt, chosen, rejected):
    [example], _ = load(name)
    assert example.is_pair and example.messages[example.prompt_turns - 1] == {"role": "user", "content": prompt}
    assert trained(example, tokenizer) == [[chosen + END], [rejected + END]]


def test_ultrafeedback_scores_are_reported_as_unread(tokenizer):
    _, notes = load("ultrafeedback_binarized.jsonl")
    assert len(notes) == 1 and "score_chosen" in notes[0] and "score_rejected" in notes[0]


def test_anthropic_hh_rlhf_transcripts(tokenizer):
    examples, _ = load("hh_rlhf.jsonl")
    first = examples[0]
    assert [m["role"] for m in first.messages[: first.prompt_turns]] == ["user", "assistant", "user"]
    # only the final answers differ and are trained; the earlier assistant turn is part of the prompt
    assert trained(first, tokenizer) == [["They can hurt people, and I try to avoid that." + END],
                                         ["Fine, here is a list." + END]]
    assert trained(examples[1], tokenizer) == [["Humans and dinosaurs didn't live at the same time, so it's hard "
                                                "to say." + END], ["I don't know." + END]]


@pytest.mark.parametrize(("name", "completions"), [
    ("kto_llamafactory_alpaca.json", ["Red.", "Purple."]),
    ("kto_llamafactory_sharegpt.json", ["Science/Tech! The FTC wants to stop spyware.", "5"]),
    ("trl_kto.jsonl", [" blue.", " green."]),
])
def test_kto_files_are_rated_records(tokenizer, name, completions):
    examples, _ = load(name)
    assert [e.desirable for e in examples] == [True, False]
    assert [trained(e, tokenizer) for e in examples] == [[[c + END]] for c in completions]


def test_a_kto_file_never_trains_as_sft(tmp_path, tiny_model_dir):
    config = tiny_config(tmp_path, tiny_model_dir, data={"train": str(REAL / "kto_llamafactory_alpaca.json"),
                                                         "test": None})
    with pytest.raises(DataError, match="whatever its label"):
        train(config, quiet=True)
    assert not (tmp_path / "run").exists()


def test_csv_with_a_byte_order_mark_and_a_column_mapping(tokenizer):
    examples, notes = load("qa_bom.csv", columns={"prompt": "question", "completion": "answer"})
    assert not notes
    assert examples[0].messages[0]["content"] == "What is the capital of France?"
    assert trained(examples[1], tokenizer) == [['Eight, like "8"' + END]]
    with pytest.raises(DataError, match=r"keys \['answer', 'question', 'source'\]"):  # no BOM in the name
        load("qa_bom.csv")
    with pytest.raises(DataError, match=r"qa_bom.csv:2: field 'asker': no such column"):
        load("qa_bom.csv", columns={"prompt": "asker", "completion": "answer"})


# ------------------------------------------------------------------------ bad records and where they are


def test_bad_records_stop_by_default_and_are_counted_when_skipped(tmp_path):
    good = {"prompt": "q", "completion": "a"}
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join([json.dumps(good), '{"prompt": "broken', json.dumps(good), json.dumps({"prompt": 3}),
                               json.dumps(good)]) + "\n")
    with pytest.raises(DataError, match=r"mixed.jsonl:2: malformed JSON"):
        load_examples([DatasetSpec(path=str(path))], seed=0)
    notes: list[str] = []
    examples = load_examples([DatasetSpec(path=str(path))], seed=0, bad_records="skip", notes=notes)
    assert [e.where for e in examples] == [1, 3, 5]
    assert "skipped 2 bad records" in notes[0] and "mixed.jsonl:2" in notes[0] and "mixed.jsonl:4" in notes[0]


def test_a_non_utf8_byte_is_reported_on_its_own_line(tmp_path):
    lines = [json.dumps({"prompt": f"q{i}", "completion": "a"}).encode() for i in range(600)]
    lines[500] = lines[500].replace(b"q500", b"q\xff500")
    (tmp_path / "data.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(DataError, match=r"data.jsonl:501: not valid UTF-8"):
        load_examples([DatasetSpec(path=str(tmp_path / "data.jsonl"))], seed=0)
    (tmp_path / "data.csv").write_bytes(b"prompt,completion\n" + b"q,a\n" * 30 + b"q\xff,a\n")
    with pytest.raises(DataError, match=r"data.csv:32: not valid UTF-8"):
        load_examples([DatasetSpec(path=str(tmp_path / "data.csv"))], seed=0)
    with gzip.open(tmp_path / "data.jsonl.gz", "wb") as handle:
        handle.write(b"\n".join(lines) + b"\n")
    with pytest.raises(DataError, match=r"data.jsonl.gz:501: not valid UTF-8"):
        load_examples([DatasetSpec(path=str(tmp_path / "data.jsonl.gz"))], seed=0)


def test_unread_keys_next_to_a_known_format_are_reported(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "q", "completion": "a", "reference_answer": "b"}])
    notes: list[str] = []
    load_examples([DatasetSpec(path=str(path))], seed=0, notes=notes)
    assert "d.jsonl:1: keys ['reference_answer'] are not read by the prompt_completion format" in notes[0]


def test_data_check_shows_non_ascii_text_whole(tokenizer):
    from tuneforge.data.check import marked_text
    from tuneforge.data.formats import Example

    example = Example("f.jsonl", 1, messages=({"role": "user", "content": "Café? ☕"},
                                              {"role": "assistant", "content": "東京の喫茶店 – très bien"}))
    [item], _ = encode_examples([example], tokenizer, DataConfig(train=["x"], cache=False))
    shown = marked_text(item, tokenizer)
    assert "Café? ☕" in shown and "⟦東京の喫茶店 – très bien<|im_end|>⟧" in shown and "�" not in shown


FRANCE = [("user", "What is the capital of France?"), ("assistant", "The capital of France is Paris."),
          ("user", "And of Italy?"), ("assistant", "Rome.")]
HAIKU = [("user", "Write a haiku about rain."),
         ("assistant", "Soft rain on the roof,\nthe kettle hums in the dark,\nsleep comes slow and warm.")]


def turns(example) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in example.messages]


@pytest.mark.parametrize("name", ["oasst1_messages.jsonl", "oasst1_trees.jsonl"])
def test_openassistant_rows_and_trees_become_conversations(name, tokenizer):
    """Issue 31: OpenAssistant's message rows were trained as plain text, the prompter's words included. Each tree
    is rebuilt: the best-ranked reply at every turn; deleted and review-rejected messages left out; only the
    assistant's turns trained."""
    examples, notes = load(name)
    assert not notes  # every oasst1 key is read or known
    assert [turns(e) for e in examples] == [FRANCE, HAIKU]
    assert trained(examples[0], tokenizer) == [["The capital of France is Paris." + END, "Rome." + END]]
    assert examples[0].location.endswith(":1")
    every, _ = load(name, tree="all")  # one conversation per path to a leaf (the deleted answer is no path)
    assert sorted(turns(e) for e in every) == sorted([FRANCE, [*FRANCE[:1], ("assistant", "Paris, I think.")], HAIKU])
    [pair], _ = load(name, tree="pairs")  # ranked siblings: the best against the worst
    assert pair.is_pair and turns(pair)[:1] == FRANCE[:1] and pair.prompt_turns == 1
    assert pair.messages[1]["content"] == "The capital of France is Paris."
    assert pair.rejected[1]["content"] == "Paris, I think."


def test_a_record_is_never_trained_in_a_shape_it_does_not_have(tmp_path):
    """Issue 31: a record whose keys show a structure the chosen format does not read is refused, naming the
    format that reads it (it was trained as text with an 'unread keys' warning)."""
    with pytest.raises(DataError, match=r"(?s)oasst1_messages.jsonl:1: field 'parent_id': this record is a message "
                                        r"of a message tree \(parent_id\), which the text format does not read.*"
                                        r"fix: use format: oasst"):
        load("oasst1_messages.jsonl", format="text")
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "q", "completion": "a", "parent_id": "x"}])
    with pytest.raises(DataError, match=r"(?s)rows.jsonl:1: .*prompt_completion format does not read.*oasst"):
        load(str(rows), format="prompt_completion")
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"text": "q a", "chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError, match=r"(?s)a preference pair \(chosen\).*fix: use format: preference"):
        load(str(pairs), format="text")


def test_a_tree_missing_a_parent_is_refused_by_line(tmp_path):
    rows = [json.loads(line) for line in (REAL / "oasst1_messages.jsonl").read_text().splitlines()]
    path = write_jsonl(tmp_path / "part.jsonl", rows[2:5])  # the answers without their prompt
    with pytest.raises(DataError, match=r"(?s)part.jsonl:1: field 'parent_id'.*not a message of this dataset.*"
                                        r"whole trees"):
        load(str(path))


def test_glue_tab_separated_and_conll_column_files(tmp_path):
    """Issue 31: `.tsv` (GLUE's SST-2: a header, no quoting: a quote is text) and CoNLL-2003's column text (word POS
    chunk NER, blank lines between sentences, -DOCSTART- skipped) were refused."""
    from tuneforge.data.kinds.labels import LabelledReader

    def read(name: str, task: str, **spec) -> list:
        return load_examples([DatasetSpec(path=str(REAL / name), **spec)], seed=0, reader=LabelledReader(task))

    sst = read("sst2_train.tsv", "sequence_classification")
    assert [(r.text, r.label) for r in sst][2:] == [
        ("that loves its characters and communicates something rather beautiful about human nature ", "1"),
        ('the "greatest" movie of the year ', "1")]
    assert sst[0].location.endswith("sst2_train.tsv:2")
    conll = read("conll2003_train.conll", "token_classification")
    assert [(r.words, r.tags) for r in conll] == [
        (("EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."),
         ("B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O")),
        (("Peter", "Blackburn"), ("B-PER", "I-PER"))]
    assert [r.location.rsplit(":", 1)[1] for r in conll] == ["3", "13"]  # each sentence's first line
    chunks = read("conll2003_train.conll", "token_classification", columns={"tags": "column_2"})
    assert chunks[1].tags == ("B-NP", "I-NP")  # the chunk column, chosen
    ragged = tmp_path / "ragged.conll"
    ragged.write_text("EU B-ORG\nrejects VBZ O\n")
    with pytest.raises(DataError, match=r"(?s)ragged.conll:1: .*\[2, 3\] columns.*fix: give every line"):
        load_examples([DatasetSpec(path=str(ragged))], seed=0, reader=LabelledReader("token_classification"))
    text = tmp_path / "eng.train.txt"
    text.write_text("EU B-ORG\n")
    with pytest.raises(DataError, match=r"(?s)unsupported file type '.train.txt'.*name it .conll"):
        load_examples([DatasetSpec(path=str(text))], seed=0)


def test_a_misspelt_file_type_names_the_nearest_and_ndjson_is_json_lines(tmp_path):
    for name, says in (("train.jsnol", "did you mean .jsonl?"), ("train.xlsx", "save the sheet as CSV")):
        (tmp_path / name).write_text('{"text": "x"}\n')
        with pytest.raises(DataError, match=rf"(?s){name}: unsupported file type.*{says}"):
            load_examples([DatasetSpec(path=str(tmp_path / name))], seed=0)
    (tmp_path / "train.ndjson").write_text('{"text": "x"}\n')
    assert load_examples([DatasetSpec(path=str(tmp_path / "train.ndjson"))], seed=0)[0].text == "x"
