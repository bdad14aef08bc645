"""Several tasks, one base model: the adapters of several runs loaded onto one copy of the base, switched
per request without reloading anything (peft's named adapters)."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tuneforge.config import RunConfig, load_config
from tuneforge.data.render import end_of_turn_ids, generation_prompt_ids, use_chat_template
from tuneforge.engine import precision
from tuneforge.errors import ConfigError
from tuneforge.evaluation.generate import generate_batch
from tuneforge.methods import get_method, validate_method_params
from tuneforge.methods.peft_adapter import ADAPTER_DIR, quiet_peft
from tuneforge.models.load import load_causal_lm
from tuneforge.runs.identity import verify_weights
from tuneforge.runs.layout import ADAPTERS, RUN_FILE, read_json


@dataclass
class AdapterSet:
    """One base model carrying a named adapter per run. `generate(name, conversations)` answers with that
    run's adapter; switching is a flag in peft, not a reload."""

    model: object
    tokenizer: object
    configs: dict[str, RunConfig]
    autocast: object
    active: str | None = None

    @property
    def names(self) -> list[str]:
        return list(self.configs)

    def use(self, name: str) -> None:
        if name not in self.configs:
            raise ConfigError(f"no adapter named '{name}'\n  fix: use one of: {', '.join(self.configs)}")
        if name != self.active:
            self.model.set_adapter(name)
            self.active = name

    def generate(self, name: str, conversations: Sequence[Sequence[dict]], *, max_new_tokens: int = 64,
                 temperature: float = 0.0, top_p: float = 1.0) -> list[str]:
        """The next assistant turn of each conversation, from adapter `name`."""
        self.use(name)
        chat = use_chat_template(self.tokenizer, self.configs[name].data.template)
        return Responder(name, self.model, self.tokenizer, chat, self.autocast).reply(
            conversations, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)


def adapter_runs(run_dirs: Sequence[str | Path]) -> list[Path]:
    """Run directories as `chat` and `merge` take them: a per-task multitask run stands for its adapters."""
    expanded = []
    for run_dir in run_dirs:
        strategy = read_json(Path(run_dir) / RUN_FILE).get("strategy") or {}
        if strategy.get("name") == "multitask" and strategy.get("adapters") == "per_task":
            expanded += [Path(run_dir) / ADAPTERS / task for task in strategy["tasks"]]
        else:
            expanded.append(Path(run_dir))
    return expanded


def load_adapter_set(runs: Mapping[str, str | Path] | Sequence[str | Path]) -> AdapterSet:
    """Load the base once, then each run's adapter under its name (the run directory's name by default).
    Every run must have trained a peft adapter (lora, dora, qlora, ia3, prompt, prefix, ptuning) on the
    same base model."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    named = {name: Path(path) for name, path in
             (runs.items() if isinstance(runs, Mapping) else ((Path(r).name, r) for r in runs))}
    configs = {name: adapter_config(name, path) for name, path in named.items()}
    first = next(iter(configs.values()))
    bases = {(c.model.path, get_method(c.method.name).base_kwargs is not None) for c in configs.values()}
    if len(bases) > 1:
        raise ConfigError(f"the runs were trained on different base models {sorted(bases)}; one base serves only "
                          "adapters trained on it\n  fix: load runs of the same model.path (and quantization)")
    device, chosen = precision.inference_placement(first.train.precision)
    method = get_method(first.method.name)
    base = load_causal_lm(first.model, **method.load_base_kwargs(validate_method_params(first.method),
                                                                 precision.dtype(chosen)))
    (name, path), *others = named.items()
    with quiet_peft():
        # is_trainable: each adapter's weights are trained ones, kept in the dtype they trained in
        model = PeftModel.from_pretrained(base, str(path / ADAPTER_DIR), adapter_name=name, is_trainable=True)
        for name, path in others:
            model.load_adapter(str(path / ADAPTER_DIR), adapter_name=name, is_trainable=True)
    precision.ready_for_inference(model, chosen, device)
    tokenizer = AutoTokenizer.from_pretrained(next(iter(named.values())) / "tokenizer")
    return AdapterSet(model, tokenizer, configs, precision.autocast_factory(chosen, device))


def adapter_config(name: str, path: Path) -> RunConfig:
    """The config of a run whose adapter will be loaded, its weight files checked against run.json first."""
    if not (path / "config.yaml").is_file() or not (path / ADAPTER_DIR).is_dir():
        raise ConfigError(f"run '{name}' ({path}) has no peft adapter to load\n  fix: give finished runs of lora, "
                          "dora, qlora, ia3, prompt, prefix or ptuning")
    verify_weights(path)
    return load_config(path / "config.yaml").run


@dataclass
class Responder:
    """A model that answers conversations: a finished run (base + what it trained) or a base model."""

    name: str
    model: object
    tokenizer: object
    chat: bool
    autocast: object

    def reply(self, conversations: Sequence[Sequence[dict]], *, max_new_tokens: int = 128, temperature: float = 0.0,
              top_p: float = 1.0) -> list[str]:
        prompts = [generation_prompt_ids(self.tokenizer, list(c), chat=self.chat) for c in conversations]
        with self.autocast():
            return generate_batch(self.model, self.tokenizer, prompts, max_new_tokens=max_new_tokens,
                                  stop_ids=end_of_turn_ids(self.tokenizer), temperature=temperature, top_p=top_p)


def responder_of(trained) -> Responder:
    """A finished run's model as a `Responder`, with the chat template its data was rendered with."""
    return Responder(trained.run_dir.name, trained.model, trained.tokenizer,
                     use_chat_template(trained.tokenizer, trained.config.data.template), trained.autocast)


def load_responder(spec: str | Path) -> Responder:
    """A run directory (anything `tuneforge train` finished) or a model: 'default', a local Hugging Face
    model directory, or a hub id."""
    from tuneforge.config import ModelConfig
    from tuneforge.models.load import load_tokenizer
    from tuneforge.runs.trained import load_trained

    path = Path(spec)
    if (path / "config.yaml").is_file():
        return responder_of(load_trained(path))
    cfg = ModelConfig(path=str(spec))
    device, chosen = precision.inference_placement("auto")
    model = precision.ready_for_inference(load_causal_lm(cfg, precision.dtype(chosen)), chosen, device)
    tokenizer = load_tokenizer(cfg)
    return Responder(str(spec), model, tokenizer, use_chat_template(tokenizer, "auto"),
                     precision.autocast_factory(chosen, device))


class Chat:
    """A conversation with finished runs: one run on its own, or several adapter runs on one base (the one
    answering is `current`, switched with `use` without reloading anything). A classifier labels each message on
    its own. `note` says what a person should know first (a model with no chat template, a classifier)."""

    def __init__(self, reply, names: list[str], system: str | None = None, note: str | None = None):
        self._reply, self.names, self.system, self.note = reply, names, system, note
        self.current = names[0]
        self.history: list[dict[str, str]] = []
        self.reset()

    def use(self, name: str) -> None:
        if name not in self.names:
            raise ConfigError(f"no adapter named '{name}'\n  fix: use one of: {', '.join(self.names)}")
        self.current = name

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        self.history = [{"role": "system", "content": self.system}] if self.system else []

    def handle(self, text: str) -> str | None:
        """A line as a person types it: `/reset` forgets the conversation, `/use NAME` switches adapter, anything
        else is said; what to show them in reply (None: nothing)."""
        command = text.strip()
        if command == "/reset":
            self.reset()
            return None
        if command.startswith("/use "):
            wanted = command[5:].strip()
            if wanted not in self.names:
                return f"no adapter '{wanted}'; loaded: {', '.join(self.names)}"
            self.use(wanted)
            return f"using {wanted}"
        answer = self.say(text)
        return f"{self.current if len(self.names) > 1 else 'assistant'}: {answer}"

    def say(self, text: str) -> str:
        """The answer to `text`, the conversation so far before it."""
        if not text.strip():
            raise ConfigError("an empty message\n  fix: say something")
        self.history.append({"role": "user", "content": text})
        answer = self._reply(self.current, self.history)
        self.history.append({"role": "assistant", "content": answer})
        return answer


def open_chat(runs: Sequence[str | Path], *, max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
              system: str | None = None, adapter: str | None = None) -> Chat:
    """A `Chat` with the runs (a per-task multitask run stands for its adapters), starting with `adapter`."""
    from tuneforge.runs.evaluate import describe_predictions
    from tuneforge.runs.trained import load_trained

    run_dirs = adapter_runs(runs)
    options = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}
    if len(run_dirs) > 1:
        adapters = load_adapter_set(run_dirs)
        chat = Chat(lambda name, history: adapters.generate(name, [history], **options)[0], adapters.names, system)
    else:
        trained = load_trained(run_dirs[0])
        if trained.labels is not None:  # a classifier: each message is a text to label
            note = f"a {trained.config.task} model: each message is labelled on its own"
            chat = Chat(lambda name, history: describe_predictions(trained, [history[-1]["content"]])[0],
                        [run_dirs[0].name], system, note)
        else:
            responder = responder_of(trained)
            note = None if responder.chat else ("note: this model has no chat template; each message is completed as "
                                                "plain text, without history")
            chat = Chat(lambda name, history: responder.reply([history], **options)[0], [responder.name], system, note)
    if adapter is not None:
        if adapter not in chat.names:
            raise ConfigError(f"--adapter {adapter}: not one of the runs given\n  fix: use one of: "
                              f"{', '.join(chat.names)}")
        chat.use(adapter)
    return chat


@dataclass
class Served:
    """Finished runs as `tuneforge serve` answers with them: one model (a run, or a base carrying each adapter run
    under its name), the tokenizer, and per name whether its data was rendered with the chat template."""

    model: object
    tokenizer: object
    autocast: object
    chat: dict[str, bool]
    select: object  # select(name): that run's adapter answers next (nothing to do for one run)

    @property
    def names(self) -> list[str]:
        return list(self.chat)

    def prompt_ids(self, name: str, messages: Sequence[dict]) -> list[int]:
        """The prompt for the next assistant turn (without a chat template: the last user message, as `chat`)."""
        return generation_prompt_ids(self.tokenizer, list(messages), chat=self.chat[name])

    def text_ids(self, text: str) -> list[int]:
        """A raw completion prompt: text, its control-token lookalikes encoded as text."""
        return generation_prompt_ids(self.tokenizer, [{"role": "user", "content": text}], chat=False)

    @functools.cached_property
    def stop_ids(self) -> set[int]:
        return end_of_turn_ids(self.tokenizer)


def load_served(runs: Mapping[str, str | Path] | Sequence[str | Path]) -> Served:
    """The runs under their names (the run directory's name by default; a per-task multitask run stands for its
    adapters). Several runs share one base as peft adapters; one run may be any generative run."""
    from tuneforge.runs.trained import load_trained

    named = dict(runs.items()) if isinstance(runs, Mapping) else {}
    if not named:
        for run_dir in adapter_runs(list(runs)):
            name = Path(run_dir).name
            if name in named:
                raise ConfigError(f"two runs are named '{name}' ({named[name]}, {run_dir}); a model name must be "
                                  f"unique\n  fix: name them: NAME=PATH")
            named[name] = Path(run_dir)
    if len(named) > 1:
        adapters = load_adapter_set(named)
        return Served(adapters.model, adapters.tokenizer, adapters.autocast,
                      {n: use_chat_template(adapters.tokenizer, c.data.template) for n, c in adapters.configs.items()},
                      adapters.use)
    (name, path), = named.items()
    trained = load_trained(path)
    if trained.labels is not None:
        raise ConfigError(f"{path}: a {trained.config.task} model labels texts; it does not generate, so it cannot "
                          "be served as a chat model\n  fix: serve a causal_lm run (`tuneforge eval` scores this one)")
    chat = use_chat_template(trained.tokenizer, trained.config.data.template)
    return Served(trained.model, trained.tokenizer, trained.autocast, {name: chat}, lambda _: None)
