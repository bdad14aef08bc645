"""Classification tasks: sequence classification, token classification (BIO tags) and regression on
BERT-style encoders (and a decoder with a classification head): the losses against hand-computed values, the
records' checks (located, before any model loads), training end to end with the head trained and saved under
every kind of method, the metrics (scikit-learn, seqeval), and what a finished run is used for (eval, chat,
export)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.conftest import TEST_PRECISION, classification_config, sentiment_records, write_jsonl
from tuneforge.api import train
from tuneforge.config import load_config
from tuneforge.data.kinds.labels import LabelledReader, LabelSet, collate_labeled, encode_labeled
from tuneforge.data.sources import RawRecord
from tuneforge.errors import ConfigError, DataError
from tuneforge.objectives.classify import class_cross_entropy, squared_error

# --- losses, by hand ---------------------------------------------------------------------------------------

def test_class_cross_entropy_with_smoothing_and_ignored_tokens_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    targets = torch.tensor([0, 1, -100])  # the third is not a labelled token
    log_p = [[2 - math.log(math.exp(2) + 1), -math.log(math.exp(2) + 1)],
             [-math.log(1 + math.e), 1 - math.log(1 + math.e)]]
    plain = -(log_p[0][0] + log_p[1][1])
    assert float(class_cross_entropy(logits, targets)) == pytest.approx(plain, rel=1e-6)
    # smoothing 0.2 over 2 classes: the target gets 0.9, the other 0.1
    smoothed = -sum(0.9 * row[t] + 0.1 * row[1 - t] for row, t in zip(log_p, (0, 1), strict=True))
    assert float(class_cross_entropy(logits, targets, 0.2)) == pytest.approx(smoothed, rel=1e-6)
    per_token = class_cross_entropy(logits[None], targets[None])  # [batch, tokens, classes]
    assert float(per_token) == pytest.approx(plain, rel=1e-6)


def test_squared_error_by_hand():
    assert float(squared_error(torch.tensor([[1.0], [3.0]]), torch.tensor([2.0, 0.5]))) == pytest.approx(1 + 6.25)


def test_sft_label_smoothing_matches_torch_and_keeps_the_plain_nll(tiny_model_dir, tokenizer):
    from tuneforge.config import DataConfig, ModelConfig
    from tuneforge.data.batching import collate
    from tuneforge.data.dataset import encode_examples, load_examples
    from tuneforge.models.load import load_causal_lm
    from tuneforge.models.parts import label_logits
    from tuneforge.objectives import LossContext, get_objective
    from tuneforge.objectives.params import SmoothedParams

    model = load_causal_lm(ModelConfig(path=str(tiny_model_dir)))
    cfg = DataConfig(train=["quickstart:train"], max_seq_len=64, cache=False)
    encoded, _ = encode_examples(load_examples(cfg.train, seed=0)[:4], tokenizer, cfg)
    batch = collate(encoded, tokenizer.pad_token_id)
    count = sum(e.num_label_tokens for e in encoded)
    out = get_objective("sft").loss(model, batch, LossContext(count, params=SmoothedParams(label_smoothing=0.1)))
    logits, targets, _ = label_logits(model, batch)
    expected = torch.nn.functional.cross_entropy(logits, targets, label_smoothing=0.1)
    assert float(out.loss) == pytest.approx(float(expected), rel=1e-5)
    assert out.metrics["nll"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, targets)), rel=1e-5)
    assert out.metrics["nll"] < float(out.loss)  # smoothing adds the uniform part's cost


# --- records and their checks -------------------------------------------------------------------------------

def record(data: dict, where: int = 3) -> RawRecord:
    return RawRecord("data.jsonl", where, data)


def test_records_read_with_the_published_layouts():
    read = LabelledReader("sequence_classification")
    assert read(record({"sentence": "good", "label": 1})).label == "1"  # SST-2: integer labels, kept as names
    pair = read(record({"premise": "a", "hypothesis": "b", "label": "entailment"}))
    assert (pair.text, pair.text_pair, pair.label) == ("a", "b", "entailment")
    named = LabelledReader("sequence_classification", ["neg", "pos"])(record({"text": "x", "label": 1}))
    assert named.label == "pos"
    tagged = LabelledReader("token_classification", ["O", "B-PER", "I-PER"])(
        record({"tokens": ["Ada", "Lovelace", "wrote"], "ner_tags": [1, 2, 0]}))  # CoNLL / HF layout
    assert tagged.tags == ("B-PER", "I-PER", "O")
    assert LabelledReader("regression")(record({"text": "x", "score": "3.5"})).label == 3.5  # a CSV cell


@pytest.mark.parametrize(("task", "data", "problem"), [
    ("sequence_classification", {"text": "no label here"}, "field 'label': missing"),
    ("sequence_classification", {"label": "positive"}, "field 'text': missing"),
    ("sequence_classification", {"text": "x", "label": [1, 2]}, "a class label must be a string or an integer"),
    ("regression", {"text": "x", "label": "high"}, "a regression target must be a finite number, got 'high'"),
    ("regression", {"text": "x", "label": float("nan")}, "must be a finite number"),
    ("token_classification", {"tokens": ["Ada", "wrote"], "tags": ["B-PER"]},
     "the tags do not line up with the words: 1 tags for 2 words"),
    ("token_classification", {"tokens": ["Ada"], "tags": ["PERSON"]}, "is not a BIO tag"),
])
def test_a_bad_record_is_refused_with_its_file_line_and_field(task, data, problem):
    with pytest.raises(DataError) as caught:
        LabelledReader(task)(record(data))
    assert str(caught.value).startswith("data.jsonl:3: ") and problem in str(caught.value)
    assert "\n  fix: " in str(caught.value)


def test_a_test_label_training_never_saw_is_refused(tmp_path, tiny_bert_dir):
    from tuneforge.data.kinds import load_splits
    from tuneforge.data.kinds.labels import labelled_splits
    from tuneforge.objectives import get_objective

    config = classification_config(tmp_path, tiny_bert_dir)
    write_jsonl(Path(config["data"]["test"]), [*sentiment_records(3), {"text": "so so", "label": "mixed"}])
    loaded = load_config(config)
    with pytest.raises(DataError, match=r"test.jsonl:4: field 'label': label 'mixed' never occurs in the training"):
        labelled_splits(loaded, load_splits(loaded, get_objective("classify"), []))


def test_a_stratified_split_refuses_a_class_with_one_example(tmp_path, tiny_bert_dir):
    from tuneforge.data.kinds import load_splits
    from tuneforge.data.kinds.labels import labelled_splits
    from tuneforge.objectives import get_objective

    config = classification_config(tmp_path, tiny_bert_dir, data={"test": None, "test_fraction": 0.3,
                                                                   "stratify": True})
    write_jsonl(Path(config["data"]["train"]), [*sentiment_records(12), {"text": "once", "label": "rare"}])
    loaded = load_config(config)
    splits = load_splits(loaded, get_objective("classify"), [])
    with pytest.raises(DataError, match=r"train.jsonl:13: field 'label': class 'rare' has a single example"):
        labelled_splits(loaded, splits)
    write_jsonl(Path(config["data"]["train"]), sentiment_records(30))
    splits = load_splits(loaded, get_objective("classify"), [])
    train_records, test_records, labels = labelled_splits(loaded, splits)
    assert len(train_records) == 21 and len(test_records) == 9
    assert {r.label for r in test_records} == set(labels.names)  # 3 of each class


def test_bad_data_stops_the_cli_with_exit_2_before_any_model_loads(tmp_path, tiny_bert_dir):
    from typer.testing import CliRunner

    from tuneforge.cli import app

    config = classification_config(tmp_path, tiny_bert_dir, model="/nonexistent/model")  # never reached
    write_jsonl(Path(config["data"]["train"]), [*sentiment_records(4), {"text": "x", "label": None}])
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(config))
    result = CliRunner().invoke(app, ["train", str(path), "--quiet"])
    assert result.exit_code == 2
    assert "train.jsonl:5: field 'label': missing" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("overrides", "problem"), [
    (["objective=dpo"], "objective 'dpo' does not train task 'sequence_classification'"),
    (["eval.metrics=[exact_match]"], "['exact_match'] do not apply to task sequence_classification"),
    (["train.early_stopping_metric=acuracy"], "did you mean 'accuracy'?"),
    (["strategy=sequential"], "strategy 'sequential' trains language models only so far"),
])
def test_config_mistakes_of_a_classification_run_are_named(tmp_path, tiny_bert_dir, overrides, problem):
    from tuneforge.runs.recipe import read_recipe
    from tuneforge.strategies import strategy_for

    with pytest.raises(ConfigError) as caught:  # what the strategy needs is its registry entry's to say (issue 29)
        loaded = load_config(classification_config(tmp_path, tiny_bert_dir), overrides)
        strategy_for(loaded)
        read_recipe(loaded)
    assert problem in str(caught.value)


def test_first_sub_token_labelling_and_the_batch(encoder_tokenizer):
    read = LabelledReader("token_classification")
    records = [read(record({"tokens": ["Lovelace", "wrote"], "tags": ["B-PER", "O"]}))]
    labels = LabelSet.of("token_classification", records)
    assert labels.names == ("O", "B-PER")  # O first
    [example], stats = encode_labeled(records, encoder_tokenizer, labels, 32)
    assert stats.summary()["label_tokens"] == 2  # the tagged words, not the records
    pieces = encoder_tokenizer.convert_ids_to_tokens(list(example.input_ids))
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]" and len(pieces) > 4  # "lovelace" is several pieces
    expected = [-100] * len(pieces)
    expected[1], expected[pieces.index("wrote")] = 1, 0
    assert list(example.target) == expected and example.num_label_tokens == 2
    batch = collate_labeled([example, example], encoder_tokenizer.pad_token_id)
    assert batch["labels"].shape == batch["input_ids"].shape and int(batch["num_label_tokens"]) == 4


# --- training end to end -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sentiment_run(tmp_path_factory, tiny_bert_dir) -> Path:
    tmp = tmp_path_factory.mktemp("sentiment")
    result = train(classification_config(tmp, tiny_bert_dir, eval={"compare_base": True}), quiet=True)
    return result.run_dir


def test_a_lora_classifier_learns_and_reports_every_metric(sentiment_run):
    evaluation = json.loads((sentiment_run / "eval.json").read_text())
    before, after = evaluation["before"], evaluation["after"]
    assert after["accuracy"] == 100.0 and after["loss"] < before["loss"]
    assert set(after["per_class"]) == {"negative", "neutral", "positive"}
    assert after["confusion"]["matrix"] == [[3, 0, 0], [0, 3, 0], [0, 0, 3]]
    assert after["f1"] == after["f1_micro"] == 100.0
    assert json.loads((sentiment_run / "labels.json").read_text()) == {
        "task": "sequence_classification", "names": ["negative", "neutral", "positive"]}
    assert (sentiment_run / "confusion.png").stat().st_size > 1000
    sample = evaluation["samples"][0]
    assert sample["prediction"] == sample["reference"] and sum(sample["probabilities"].values()) == pytest.approx(1,
                                                                                                              abs=1e-3)
    # the head and BERT's pooler are saved with the adapter, in peft's format
    config = json.loads((sentiment_run / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and {"classifier", "pooler.dense"} <= set(config["modules_to_save"])


def test_eval_and_chat_on_a_finished_classification_run(sentiment_run):
    from typer.testing import CliRunner

    from tuneforge.cli import app

    run_config = load_config(sentiment_run / "config.yaml").run
    result = CliRunner().invoke(app, ["eval", str(sentiment_run), "--data", run_config.data.test[0].path])
    assert result.exit_code == 0, result.stderr
    assert "accuracy  100.0000" in result.stdout and "per_class" not in result.stdout
    chat = CliRunner().invoke(app, ["chat", str(sentiment_run), "--message", "great thing number 500"])
    assert chat.exit_code == 0, chat.stderr
    assert "assistant: positive  (positive 0." in chat.stdout


def test_serve_refuses_a_classifier_with_the_command_that_scores_it(sentiment_run):
    from tuneforge.runs.serving import load_served

    with pytest.raises(ConfigError, match=r"(?s)labels texts.*cannot be served.*tuneforge eval"):
        load_served([sentiment_run])


def test_the_merged_export_is_a_plain_transformers_classifier(sentiment_run, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tuneforge.runs.export import export_run

    out = export_run(sentiment_run, tmp_path / "export", merge=True)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    texts = [r["text"] for r in sentiment_records(9, offset=100)]
    with torch.no_grad():
        predicted = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.argmax(-1).tolist()
    assert [model.config.id2label[i] for i in predicted] == [r["label"] for r in sentiment_records(9, offset=100)]


@pytest.mark.parametrize("method", ["bitfit", "adapter", "ia3", "full"])
def test_every_kind_of_method_trains_reloads_and_exports_the_head(tmp_path, tiny_bert_dir, method):
    from transformers import AutoModelForSequenceClassification

    from tuneforge.runs.evaluate import evaluate_run
    from tuneforge.runs.export import export_run
    from tuneforge.runs.trained import load_trained

    config = classification_config(tmp_path, tiny_bert_dir, train={"lr": 3e-3 if method == "full" else 2e-2})
    config["method"] = {"name": method}
    result = train(config, quiet=True)
    after = json.loads((result.run_dir / "eval.json").read_text())["after"]
    trained = load_trained(result.run_dir)
    reloaded, samples = evaluate_run(trained, config["data"]["test"], ["loss"])
    assert reloaded["accuracy"] == after["accuracy"] and reloaded["loss"] == pytest.approx(after["loss"], rel=1e-4)
    assert after["accuracy"] > 34  # better than a constant guess
    if method == "adapter":  # bottleneck adapters add computation the base lacks: not mergeable
        return
    exported = AutoModelForSequenceClassification.from_pretrained(export_run(result.run_dir, tmp_path / "out",
                                                                             merge=True)).eval()
    texts = [r["text"] for r in sentiment_records(9, offset=100)]
    inputs = trained.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        predicted = [exported.config.id2label[i] for i in exported(**inputs).logits.argmax(-1).tolist()]
    assert predicted == [s["prediction"] for s in samples]  # the plain transformers model labels as the run did


def test_token_classification_scores_entities_with_seqeval(tmp_path, tiny_bert_dir):
    records = [{"tokens": [name, "visited", place, "."], "tags": ["B-PER", "O", "B-LOC", "O"]}
               for name, place in zip(["Ada", "Tom", "Omar", "Lars"] * 5, ["Paris", "Oslo", "Lima", "Kyoto"] * 5,
                                      strict=True)]
    config = classification_config(tmp_path, tiny_bert_dir, task="token_classification",
                                   train={"max_steps": 30, "lr": 2e-2})
    write_jsonl(Path(config["data"]["train"]), records)
    write_jsonl(Path(config["data"]["test"]), records[:4])
    result = train(config, quiet=True)
    after = json.loads((result.run_dir / "eval.json").read_text())["after"]
    assert set(after["per_class"]) == {"PER", "LOC"}  # entity types, not tags
    assert after["f1"] == 100.0 and after["accuracy"] == 100.0
    assert json.loads((result.run_dir / "eval.json").read_text())["samples"][0]["prediction"] == "B-PER O B-LOC O"


def test_regression_reports_mse_and_pearson(tmp_path, tiny_bert_dir):
    records = [{"text": f"{word} item {i}", "label": value} for i, (word, value) in
               enumerate([("tiny", 0.0), ("small", 1.0), ("big", 2.0), ("huge", 3.0)] * 6)]
    config = classification_config(tmp_path, tiny_bert_dir, task="regression", train={"max_steps": 25, "lr": 3e-3})
    config["method"] = {"name": "full"}
    write_jsonl(Path(config["data"]["train"]), records)
    write_jsonl(Path(config["data"]["test"]), records[:8])
    result = train(config, quiet=True)
    after = json.loads((result.run_dir / "eval.json").read_text())["after"]
    assert set(after) >= {"loss", "mse", "pearson"} and after["mse"] == pytest.approx(after["loss"], rel=1e-4)
    assert after["pearson"] > 0.9 and after["mse"] < 0.5


def test_a_decoder_with_a_classification_head_trains(tmp_path, tiny_model_dir):
    config = classification_config(tmp_path, tiny_model_dir)
    result = train(config, quiet=True)
    config_json = json.loads((result.run_dir / "adapter" / "adapter_config.json").read_text())
    assert "score" in config_json["modules_to_save"]
    after = json.loads((result.run_dir / "eval.json").read_text())["after"]
    assert after["accuracy"] > 34


# --- regularisation and schedules ----------------------------------------------------------------------------

def test_layer_wise_learning_rate_decay_scales_by_depth(tiny_bert_dir):
    from tuneforge.config import ModelConfig
    from tuneforge.engine.optim import layer_lr_decay
    from tuneforge.models.load import Head, load_model

    model = load_model(ModelConfig(path=str(tiny_bert_dir)), Head("sequence_classification", ("a", "b")))
    scale = layer_lr_decay(model, 0.5)  # 2 layers
    assert scale("classifier.weight") == scale("bert.pooler.dense.weight") == 1.0
    assert scale("bert.encoder.layer.1.attention.self.query.weight") == 1.0
    assert scale("base_model.model.bert.encoder.layer.0.output.dense.lora_A.default.weight") == 0.5
    assert scale("bert.embeddings.word_embeddings.weight") == 0.25


def test_dropout_override_reaches_the_model_config(tiny_bert_dir):
    from tuneforge.config import ModelConfig
    from tuneforge.models.load import Head, load_model

    model = load_model(ModelConfig(path=str(tiny_bert_dir), hidden_dropout=0.3, attention_dropout=0.0),
                       Head("sequence_classification", ("a", "b")))
    assert model.config.hidden_dropout_prob == 0.3 and model.config.attention_probs_dropout_prob == 0.0


def test_plateau_schedule_and_early_stopping_watch_a_metric(tmp_path, tiny_bert_dir):
    from tuneforge.runs.layout import read_metrics

    # a learning rate too small to move accuracy: it plateaus, the rate is halved each evaluation, then it stops
    config = classification_config(tmp_path, tiny_bert_dir, train={
        "lr": 1e-7, "max_steps": 12, "eval_every": 2, "schedule": "plateau", "plateau_patience": 1,
        "early_stopping_metric": "accuracy", "early_stopping_patience": 3})
    result = train(config, quiet=True)
    assert result.train["stopped_early"] and result.steps == 8  # evaluations at 2 (best), 4, 6, 8
    rates = {r["step"]: r["lr"] for r in read_metrics(result.run_dir) if r["kind"] == "train"}
    assert rates[1] == pytest.approx(1e-7) and rates[5] == pytest.approx(0.5e-7) and rates[7] == pytest.approx(0.25e-7)



# --- padding-free encoder batches ----------------------------------------------------------------------------

@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("task", ["sequence_classification", "token_classification"])
def test_a_packed_batch_gives_the_padded_batchs_logits_and_loss(tiny_bert_dir, encoder_tokenizer, task, attention):
    from tuneforge.config import ModelConfig
    from tuneforge.data.kinds.labels import collate_labeled_packed
    from tuneforge.models.load import Head, load_model
    from tuneforge.objectives import LossContext
    from tuneforge.objectives.classify import classify_loss, head_logits

    if task == "token_classification":
        raw = [{"tokens": ["word"] * (1 + i % 7) + ["Ada"], "tags": ["O"] * (1 + i % 7) + ["B-PER"]}
               for i in range(9)]
    else:
        raw = [{"text": "so " * (1 + 3 * i) + "good", "text_pair": "yes" if i % 2 else "no", "label": str(i % 3)}
               for i in range(9)]
    records = [LabelledReader(task)(record(r, i)) for i, r in enumerate(raw)]
    labels = LabelSet.of(task, records)
    examples, _ = encode_labeled(records, encoder_tokenizer, labels, 64)
    model = load_model(ModelConfig(path=str(tiny_bert_dir)), Head(task, labels.names),
                       attn_implementation=attention).eval()
    padded, packed = collate_labeled(examples, 0), collate_labeled_packed(examples, 0)
    assert packed["input_ids"].numel() < padded["input_ids"].numel()  # the padding is gone
    assert packed["attention_mask"].dim() == 4 and packed["position_ids"].max() == max(len(e) for e in examples) - 1
    real = padded["attention_mask"].bool() if task == "token_classification" else slice(None)  # not the padding
    widths = []  # a label per text: the last layer's feed-forward runs on each text's [CLS] alone
    hook = model.bert.encoder.layer[-1].intermediate.register_forward_hook(
        lambda module, args, out: widths.append(args[0].shape[:-1]))
    torch.testing.assert_close(head_logits(model, packed)[real], head_logits(model, padded)[real], atol=1e-5,
                               rtol=1e-5)
    hook.remove()
    packed_tokens = packed["input_ids"].shape
    assert widths[0] == ((len(examples),) if task == "sequence_classification" else packed_tokens)
    ctx = LossContext(num_label_tokens=sum(e.num_label_tokens for e in examples), num_examples=len(examples))
    assert float(classify_loss(model, packed, ctx).loss) == pytest.approx(float(classify_loss(model, padded,
                                                                                              ctx).loss), rel=1e-5)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_a_packed_batch_gives_the_padded_batchs_gradients(tiny_bert_dir, encoder_tokenizer, checkpointing):
    """The first-token-only last layer trains what the whole layer would; a checkpointed layer (recomputed in the
    backward pass, after the forward's context closed) is left whole and gives them too."""
    from tuneforge.config import ModelConfig
    from tuneforge.data.kinds.labels import collate_labeled_packed
    from tuneforge.models.load import Head, load_model
    from tuneforge.objectives.classify import head_logits

    raw = [{"text": "so " * (1 + 3 * i) + "good", "label": str(i % 3)} for i in range(9)]
    records = [LabelledReader("sequence_classification")(record(r, i)) for i, r in enumerate(raw)]
    labels = LabelSet.of("sequence_classification", records)
    examples, _ = encode_labeled(records, encoder_tokenizer, labels, 64)
    model = load_model(ModelConfig(path=str(tiny_bert_dir)), Head("sequence_classification", labels.names))
    model.train().requires_grad_(True)  # loaded frozen: a method chooses what trains
    if checkpointing:
        from tuneforge.engine.precision import enable_gradient_checkpointing

        enable_gradient_checkpointing(model)
    grads = []
    for batch in (collate_labeled(examples, 0), collate_labeled_packed(examples, 0)):
        model.zero_grad()
        (head_logits(model, batch) * torch.arange(1.0, 4.0)).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == len(list(model.parameters()))
    for name in grads[0]:
        # fp32 sums in another order: an error of ~5e-7 of the tensor's largest gradient (3e-5 of 61 seen on the
        # embeddings after other tests ran in the process), so the absolute tolerance scales with it
        scale = max(1.0, float(grads[0][name].abs().max()))
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5 * scale, rtol=1e-4, msg=name)


def test_packing_trains_the_same_weights_and_is_refused_where_it_cannot_work(tmp_path, tiny_bert_dir,
                                                                                 tiny_model_dir):
    from safetensors.torch import load_file

    from tuneforge.runs.layout import read_metrics

    runs, losses = {}, {}
    for packing in (False, True):
        (tmp_path / str(packing)).mkdir()
        config = classification_config(tmp_path / str(packing), tiny_bert_dir, train={"packing": packing,
                                                                                        "max_steps": 4})
        run_dir = train(config, quiet=True).run_dir
        runs[packing] = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
        losses[packing] = [r["loss"] for r in read_metrics(run_dir) if r["kind"] == "train"]
    # bf16 rounds a packed row's sums differently; Adam turns that into lr-sized weight differences, so there the
    # per-step losses are what is compared
    assert losses[True] == pytest.approx(losses[False], rel=1e-4 if TEST_PRECISION == "fp32" else 2e-2)
    if TEST_PRECISION == "fp32":
        for name, tensor in runs[False].items():
            torch.testing.assert_close(runs[True][name], tensor, atol=1e-4, rtol=1e-3)
    with pytest.raises(ConfigError, match="packing a sequence_classification batch needs a BERT-style encoder"):
        train(classification_config(tmp_path, tiny_model_dir, train={"packing": True}), quiet=True)


def test_data_check_shows_the_label_set_and_the_records_as_tokens(tmp_path, tiny_bert_dir):
    from typer.testing import CliRunner

    from tuneforge.cli import app

    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(classification_config(tmp_path, tiny_bert_dir)))
    result = CliRunner().invoke(app, ["data", "check", str(path), "--samples", "1"])
    assert result.exit_code == 0, result.stderr
    assert "3 labels, in the head's order: negative, neutral, positive" in result.stdout
    assert "negative 10, neutral 10, positive 10" in result.stdout
    assert "[CLS] great thing number 0 [SEP]  ->  positive" in result.stdout
