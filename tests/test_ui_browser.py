"""`tuneforge ui` in headless Chromium (Debian's chromium and chromedriver; .ci/run installs them): fill the launch
form for a tiny run, launch it, watch its loss chart gain points while it trains, open its results, compare it with a
second run, chat with it; and a sweep's trials. In `make test-heavy` (a run in another process: about a minute)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TEST_PRECISION, qa_records, write_jsonl
from tests.test_sweep import sweep_config
from tuneforge.api import chat, sweep, train
from tuneforge.web.ui import start_ui

pytestmark = pytest.mark.heavy


def fill(driver, values: dict[str, str]) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select

    for key, value in values.items():
        field = driver.find_element(By.ID, f"f-{key}")
        if field.tag_name == "select":
            Select(field).select_by_visible_text(value)
        else:
            field.clear()
            field.send_keys(value)


def test_launch_watch_compare_and_chat_in_the_browser(tmp_path, tiny_model_dir, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    root = tmp_path / "runs"
    train_file = write_jsonl(tmp_path / "train.jsonl", qa_records(24))
    test_file = write_jsonl(tmp_path / "test.jsonl", qa_records(4))
    common = {"model": str(tiny_model_dir), "data": {"train": str(train_file), "test": str(test_file),
                                                     "max_seq_len": 64},
              "eval": {"metrics": ["loss", "exact_match"], "max_new_tokens": 4, "max_examples": 4}}
    train({**common, "method": {"name": "lora", "r": 4}, "train": {"max_steps": 4, "batch_size": 4,
                                                                  "precision": TEST_PRECISION},
           "output": {"dir": str(root / "second"), "tensorboard": False}}, quiet=True)
    server = start_ui(root, port=0, background=True)
    wait = WebDriverWait(browser, 180)
    try:
        browser.get(server.url)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr[data-id='second']"))
        # a finished run's settings fill the form ("Launch like this"), and check as they are
        browser.get(server.url.split("#")[0] + "#/launch/second")
        wait.until(lambda d: d.find_element(By.ID, "f-train.max_steps").get_attribute("value") == "4")
        assert browser.find_element(By.ID, "f-method.r").get_attribute("value") == "4"
        assert browser.find_element(By.ID, "f-model.path").get_attribute("value") == str(tiny_model_dir)
        fill(browser, {"name": "again"})
        browser.find_element(By.ID, "check").click()
        wait.until(lambda d: "max_steps: 4" in d.find_element(By.ID, "yaml").text)
        assert not browser.find_element(By.ID, "form-error").text
        browser.get(server.url.split("#")[0] + "#/runs")
        browser.find_element(By.ID, "nav-launch").click()
        wait.until(lambda d: d.find_elements(By.ID, "f-train.max_steps"))
        fill(browser, {"name": "from-the-form", "model.path": str(tiny_model_dir), "data.train": str(train_file),
                       "data.test": str(test_file), "data.max_seq_len": "64", "method.name": "lora",
                       "method.r": "4", "train.max_steps": "150", "train.batch_size": "2", "train.lr": "1e-3",
                       "train.precision": TEST_PRECISION, "eval.metrics": "[loss, exact_match]",
                       "eval.max_new_tokens": "4", "eval.max_examples": "4"})
        if browser.find_element(By.ID, "f-output.tensorboard").is_selected():
            browser.find_element(By.ID, "f-output.tensorboard").click()
        browser.find_element(By.ID, "f-train.max_steps").clear()
        browser.find_element(By.ID, "f-train.max_steps").send_keys("0")  # refused, as the CLI refuses it
        browser.find_element(By.ID, "check").click()
        wait.until(lambda d: "train.max_steps" in d.find_element(By.ID, "form-error").text)
        assert "bad" in browser.find_element(By.ID, "f-train.max_steps").get_attribute("class")
        fill(browser, {"train.max_steps": "150"})
        browser.find_element(By.ID, "check").click()
        wait.until(lambda d: "max_steps: 150" in d.find_element(By.ID, "yaml").text)
        assert "tuneforge train" in browser.find_element(By.ID, "command").text
        browser.find_element(By.ID, "launch").click()
        link = wait.until(lambda d: d.find_elements(By.LINK_TEXT, "from-the-form"))
        link[0].click()
        wait.until(lambda d: d.find_element(By.ID, "status").text == "training"
                   and d.execute_script("return window.tf.points") > 0)
        first = browser.execute_script("return window.tf.points")
        wait.until(lambda d: d.execute_script("return window.tf.points") > first + 5)
        assert browser.find_element(By.ID, "status").text == "training"  # points arrived while it trained
        assert browser.find_element(By.ID, "stop").is_enabled() and not browser.find_element(By.ID, "chat").is_enabled()
        assert browser.execute_script("return Object.keys(window.tf.charts)").count("loss") == 1
        wait.until(lambda d: d.find_element(By.ID, "status").text == "complete")
        wait.until(lambda d: "exact_match" in d.find_element(By.ID, "scores").text
                   and len(d.find_elements(By.CSS_SELECTOR, "#scores tr")) >= 3)
        wait.until(lambda d: d.find_element(By.ID, "chat").is_enabled())
        assert not browser.find_element(By.ID, "stop").is_enabled()  # nothing to stop now
        # compare with the second run
        browser.find_element(By.ID, "nav-runs").click()
        for ident in ("from-the-form", "second"):
            wait.until(lambda d, i=ident: d.find_elements(By.CSS_SELECTOR, f"tr[data-id='{i}'] .pick"))[0].click()
        browser.find_element(By.ID, "compare").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#compare-table tr")) == 3)
        differences = browser.find_element(By.ID, "config-diff").text
        assert "train.max_steps" in differences and "150" in differences
        wait.until(lambda d: d.execute_script("return window.tf.charts.loss && "
                                              "window.tf.charts.loss.data.datasets.length") >= 2)
        # chat with it: the answer is `tuneforge chat`'s at temperature 0
        browser.get(server.url.split("#")[0] + "#/chat/from-the-form")
        wait.until(lambda d: d.find_elements(By.ID, "prompt"))
        browser.find_element(By.ID, "max-tokens").clear()
        browser.find_element(By.ID, "max-tokens").send_keys("8")
        browser.find_element(By.ID, "prompt").send_keys("Repeat the number 3")
        browser.find_element(By.ID, "send").click()
        reply = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#answer-0 .reply"))[0].text
        expected = chat(root / "from-the-form", max_new_tokens=8).say("Repeat the number 3")
        assert reply == f"model: {expected}".strip()
        assert not browser.find_element(By.ID, "chat-error").text
        # A/B: the same message to both runs, each answering as its own `tuneforge chat`
        browser.get(server.url.split("#")[0] + "#/chat/from-the-form,second")
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".answers > div")) == 2)
        browser.find_element(By.ID, "max-tokens").clear()
        browser.find_element(By.ID, "max-tokens").send_keys("8")
        browser.find_element(By.ID, "prompt").send_keys("Repeat the number 5")
        browser.find_element(By.ID, "send").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#answer-1 .reply"))
        for index, run in enumerate(("from-the-form", "second")):
            shown = browser.find_element(By.CSS_SELECTOR, f"#answer-{index} .reply").text
            assert shown == f"model: {chat(root / run, max_new_tokens=8).say('Repeat the number 5')}".strip()
    finally:
        server.stop()
    record = json.loads((root / "from-the-form" / "run.json").read_text())
    assert record["status"] == "complete" and record["train"]["steps"] == 150


def test_a_sweeps_trials_in_the_browser(tmp_path, tiny_model_dir, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    root = tmp_path / "runs"
    result = sweep(sweep_config(tmp_path, tiny_model_dir, pruner="none", trials=3), root / "lr-sweep", quiet=True)
    server = start_ui(root, port=0, background=True)
    try:
        browser.get(server.url.split("#")[0] + "#/sweeps")
        WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.LINK_TEXT, "lr-sweep"))[0].click()
        rows = WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#trials tr"))
        assert len(rows) == 1 + 3
        text = browser.find_element(By.ID, "trials").text
        assert "train.lr" in text and "COMPLETE" in text and "loss" in text
        best = browser.find_elements(By.CSS_SELECTOR, "#trials tr.best")
        assert [row.find_element(By.CSS_SELECTOR, "td").text for row in best] == [str(result.best[0]["number"])]
        assert browser.find_elements(By.CSS_SELECTOR, "#parallel canvas")
        best[0].find_element(By.CSS_SELECTOR, "a").click()  # a trial is a run: its page opens
        WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "status").text == "complete")
    finally:
        server.stop()
