"""Shared pieces of the benchmarks: the workload, the matmul peak, FLOP counts, result tables.

Every system runs in its own fresh subprocess on the same tokens, so neither warms the other's caches
or allocator, and peak memory is that process's own.
"""

from __future__ import annotations

import json
import random
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

WORDS = (
    "the", "model", "data", "time", "people", "water", "history", "system", "river", "music", "light",
    "number", "city", "energy", "language", "market", "garden", "bridge", "theory", "animal", "winter",
    "paper", "window", "forest", "signal", "engine", "story", "planet", "answer", "question", "reason",
    "method", "result", "change", "power", "value", "table", "field", "object", "process", "memory", "network",
)


def write_chat_workload(path: Path, examples: int, seed: int) -> Path:
    """Chat records with realistic, varied prompt and answer lengths (log-normal), so padding matters."""
    rng = random.Random(seed)
    with path.open("w") as handle:
        for _ in range(examples):
            messages = [{"role": "user", "content": lognormal_words(rng, 60, 5, 300)},
                        {"role": "assistant", "content": lognormal_words(rng, 45, 3, 200)}]
            handle.write(json.dumps({"messages": messages}) + "\n")
    return path


def measure_matmul_peak(dtype_name: str, sizes: tuple[int, ...] = (1024, 2048, 3072), seconds: float = 2.0) -> float:
    """Best sustained FLOP/s of square matmuls in `dtype_name` on the device the benchmark trains on (the
    GPU when there is one, else this process's CPU threads): the best over several sizes, since one size
    alone can land on a slow blocking or a noisy moment."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    cuda = torch.cuda.is_available()
    if cuda:
        sizes = (4096, 8192)
    best = 0.0
    for size in sizes:
        a, b = (torch.randn(size, size, dtype=dtype, device="cuda" if cuda else "cpu") for _ in range(2))
        torch.mm(a, b)
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            if cuda:  # ten products per timing, so launch latency does not count
                torch.cuda.synchronize()
                started = time.perf_counter()
                for _ in range(10):
                    torch.mm(a, b)
                torch.cuda.synchronize()
                best = max(best, 10 * 2 * size**3 / (time.perf_counter() - started))
            else:
                started = time.perf_counter()
                torch.mm(a, b)
                best = max(best, 2 * size**3 / (time.perf_counter() - started))
    return best


@dataclass
class ModelShape:
    """What FLOP counts need to know about a decoder."""

    layers: int
    hidden: int
    heads: int
    head_dim: int
    kv_heads: int
    intermediate: int
    vocab: int

    @classmethod
    def of(cls, config) -> ModelShape:
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(config.num_hidden_layers, config.hidden_size, config.num_attention_heads, head_dim,
                   config.num_key_value_heads, config.intermediate_size, config.vocab_size)

    @property
    def body_params(self) -> int:
        """Weights of the decoder's linear layers (attention and MLP), applied once per token."""
        q_o = 2 * self.hidden * self.heads * self.head_dim
        k_v = 2 * self.hidden * self.kv_heads * self.head_dim
        return self.layers * (q_o + k_v + 3 * self.hidden * self.intermediate)

    def lora_params(self, rank: int) -> int:
        attention = self.heads * self.head_dim
        kv = self.kv_heads * self.head_dim
        per_layer = (rank * (self.hidden + attention) * 2 + rank * (self.hidden + kv) * 2
                     + rank * (self.hidden + self.intermediate) * 3)
        return self.layers * per_layer


def lora_step_flops(shape: ModelShape, rank: int, lengths: list[int], label_tokens: int) -> float:
    """Useful FLOPs of one LoRA training step over examples of these lengths (padding excluded).

    Frozen weights cost 4N per token (forward, and backward to the inputs), LoRA weights 6N; attention
    12·L·H·d per token per position attended (PaLM's formula); the tied, frozen LM head 4·d·V at the
    label positions only, since that is all the loss needs.
    """
    per_token = 4 * shape.body_params + 6 * shape.lora_params(rank)
    attention = 12 * shape.layers * shape.heads * shape.head_dim
    return sum(n * per_token + attention * n * n for n in lengths) + label_tokens * 4 * shape.hidden * shape.vocab


@dataclass
class SystemResult:
    system: str
    ok: bool
    error: str = ""
    step_times: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    peak_rss_bytes: int = 0
    peak_memory_gib: float = 0.0  # max allocated on a GPU, the peak resident set on a CPU
    startup_s: float = 0.0
    extra: dict = field(default_factory=dict)


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_memory_gib() -> float:
    """What the tables call peak memory: max allocated on a GPU (the memory that limits a GPU run), the
    process's peak resident set on a CPU. tuneforge's own metrics measure the same."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return peak_rss_bytes() / 2**30


def run_worker(module: str, args: list[str], timeout: float) -> SystemResult:
    """Run `python -m module args` in a fresh process; it writes its SystemResult as JSON to --out."""
    out = Path(args[args.index("--out") + 1])
    try:
        proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return SystemResult(system=args[args.index("--worker") + 1], ok=False, error=f"timed out after {timeout}s")
    if proc.returncode != 0 or not out.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return SystemResult(system=args[args.index("--worker") + 1], ok=False, error=" | ".join(tail))
    return SystemResult(**json.loads(out.read_text()))


def save_result(result: SystemResult, out: Path) -> None:
    out.write_text(json.dumps(asdict(result)))


def steady(values: list[float], warmup: int) -> list[float]:
    return values[warmup:] if len(values) > warmup else values


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def lognormal_words(rng: random.Random, median: float, low: int, high: int) -> str:
    """A run of words whose count is log-normal around `median`, clipped to [low, high]."""
    count = int(min(high, max(low, rng.lognormvariate(0, 0.7) * median)))
    return " ".join(rng.choice(WORDS) for _ in range(count))


def run_side_by_side(module: str, args, steps: int, write_data, batch_shapes, **extra) -> dict:
    """The shared driver of the peer benchmarks: write the workload, describe every step's batch once,
    measure the matmul peak, then run each system's worker (`python -m module --worker NAME`) in a fresh
    process on the same spec."""
    import tempfile

    import torch

    from tuneforge.engine.precision import resolve_precision
    from tuneforge.models.default import default_model_dir

    precision = resolve_precision(args.precision, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    work = Path(tempfile.mkdtemp(prefix=f"tuneforge-{module.replace('.', '-')}-"))
    data = write_data(work / "data.jsonl", steps * args.batch_size, args.seed)
    model = str(default_model_dir()) if args.model == "default" else str(Path(args.model).resolve())
    spec = {"model": model, "data": str(data), "steps": steps, "batch_size": args.batch_size,
            "max_seq_len": args.max_seq_len, "lr": args.lr, "seed": args.seed, "precision": precision,
            "work": str(work), **extra}
    batches = batch_shapes(spec)
    peak = measure_matmul_peak(precision)
    run = {"spec": spec, "batches": batches, "peak_flops": peak, "results": _run_systems(module, args, spec, steps)}
    if getattr(args, "against_fp32", False) and precision != "fp32":
        # the same batches in fp32: how far each system's per-step losses stray from it in bf16
        run["fp32_results"] = _run_systems(module, args, {**spec, "precision": "fp32"}, steps, suffix="-fp32")
    return run


def _run_systems(module: str, args, spec: dict, steps: int, suffix: str = "") -> dict:
    work = Path(spec["work"])
    spec = {**spec, "work": str(work / f"run{suffix}")}
    Path(spec["work"]).mkdir(exist_ok=True)
    spec_path = work / f"spec{suffix}.json"
    spec_path.write_text(json.dumps(spec))
    results = {}
    for system in args.systems.split(","):
        print(f"running {system} in {spec['precision']} ({steps} steps) ...", flush=True)
        results[system] = run_worker(module, ["--worker", system, "--spec", str(spec_path), "--out",
                                              str(work / f"{system}{suffix}.json")], timeout=3600)
    return results


def tuneforge_result(run_dir: Path, started_wall: float, **per_step: str) -> SystemResult:
    """A tuneforge worker's figures from its run's metrics.jsonl; `per_step` names extra columns to keep."""
    from tuneforge.runs.layout import read_metrics

    rows = [r for r in read_metrics(run_dir) if r["kind"] == "train"]
    first_step_began = rows[0]["time"] - rows[0]["step_time_s"]  # metrics rows are stamped when a step ends
    return SystemResult("tuneforge", True, step_times=[r["step_time_s"] for r in rows],
                        losses=[r["loss"] for r in rows], peak_rss_bytes=peak_rss_bytes(),
                        peak_memory_gib=max(peak_memory_gib(), *(r.get("peak_memory_gib", 0.0) for r in rows)),
                        startup_s=first_step_began - started_wall,
                        extra={name: [r[key] for r in rows] for name, key in per_step.items()})


def trl_step_timer(started: float):
    """A transformers TrainerCallback timing each optimizer step, and the time to the first one."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self.memory: list[float] = []
            self.first_step: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.began = time.perf_counter()
            if not self.first_step:
                self.first_step.append(self.began - started)

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.began)
            self.memory.append(peak_memory_gib())

    return StepTimer()


def tuneforge_config(spec: dict, *, objective: dict | None = None, checkpointing: bool = False) -> dict:
    """The tuneforge run of a spec: the same examples per step as the peer (dataset order, no shuffling or
    length grouping), packed into fewer rows without cross-attention."""
    return {
        "model": spec["model"], "method": {"name": "lora", **spec["lora"]},
        "objective": objective or {"name": "sft"},
        "data": {"train": spec["data"], "max_seq_len": spec["max_seq_len"]},
        "train": {"max_steps": spec["steps"], "batch_size": spec["batch_size"], "lr": spec["lr"],
                  "schedule": "constant", "seed": spec["seed"], "precision": spec["precision"], "shuffle": False,
                  "group_by_length": False, "gradient_checkpointing": checkpointing, "packing": True},
        "eval": {"metrics": []},
        "output": {"dir": str(Path(spec["work"]) / "tuneforge-run"), "tensorboard": False, "overwrite": True},
    }


def peft_lora_model(spec: dict):
    """The peer's model: the base in the run's precision (bf16 on a GPU, as TRL's docs load it; peft keeps the
    adapter in fp32) with the same LoRA, initialised from the same seed as tuneforge's."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(spec["seed"])
    dtype = torch.bfloat16 if spec["precision"] == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=dtype)
    lora = spec["lora"]
    return get_peft_model(model, LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                                            target_modules=lora["target_modules"], task_type="CAUSAL_LM"))


def machine_line() -> str:
    """The machine a figure was measured on: the CPU's name and its bf16 instructions (or the GPU), threads,
    torch."""
    import platform
    from pathlib import Path

    import torch

    if torch.cuda.is_available():
        where = torch.cuda.get_device_name()
    else:
        try:
            info = Path("/proc/cpuinfo").read_text()
        except OSError:
            info = ""
        name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                    platform.processor() or platform.machine())
        flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")),
                         []))
        bf16 = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
        vector = "avx512f" if "avx512f" in flags else "avx2"
        where = f"{name} ({', '.join(bf16) if bf16 else f'no bf16 instructions, {vector}'})"
        kernels = torch.backends.cpu.get_cpu_capability()  # ATEN_CPU_CAPABILITY=avx2 stands in for an AVX2 CPU
        if kernels.lower() != vector.lower() and not (bf16 and kernels.upper() == "AVX512"):
            where += f", torch's {kernels} kernels"
    return f"machine: {where}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def print_machine_and_header(spec: dict, peak: float, workload: str, header: str) -> None:
    """The machine and workload lines of a peer benchmark's report, then its table header."""
    print(f"\n{machine_line()}; precision {spec['precision']}; measured {spec['precision']} matmul peak "
          f"{peak / 1e9:.1f} GFLOP/s")
    print(f"workload: {workload}\n")
    print(header)
    print("-" * len(header))


def peer_parser(doc: str, systems: tuple[str, ...], *, full_steps: int, batch_size: int,
                batch_help: str = "examples per step", default_systems: tuple[str, ...] = ()):
    """The options every peer benchmark takes (and the hidden ones its workers are started with)."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps: finishes in under 10 minutes on 2 cores")
    parser.add_argument("--steps", type=int, help=f"optimizer steps per system (default {full_steps}, quick 6)")
    parser.add_argument("--warmup", type=int, default=2, help="steps excluded from the medians")
    parser.add_argument("--batch-size", type=int, default=batch_size, help=batch_help)
    parser.add_argument("--max-seq-len", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--systems", default=",".join(default_systems or systems))
    parser.add_argument("--model", default="default",
                        help="a Hugging Face model directory (e.g. one written by `python -m bench.random_model`); "
                             "default: the default model")
    parser.add_argument("--json", type=Path, help="also write all figures here")
    parser.add_argument("--against-fp32", action="store_true",
                        help="in bf16, also run every system in fp32 on the same batches and report how far each "
                             "one's per-step losses stray from its fp32 run")
    parser.add_argument("--worker", choices=systems, help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return parser


def peer_main(args, workers: dict, full_steps: int, run_all, report) -> None:
    """A worker process runs its one system; the driver runs them all side by side and reports."""
    if args.worker:
        workers[args.worker](json.loads(args.spec.read_text()), args.out)
        return
    steps = args.steps or (6 if args.quick else full_steps)
    report(run_all(args, steps), args, steps)


def print_system_rows(results: dict, summarise_row, leading) -> dict:
    """One table row per system: its own leading columns, then MFU, peak memory, final loss and startup."""
    figures = {}
    for system, result in results.items():
        if not result.ok:
            print(f"{system:<10} failed: {result.error}")
            continue
        figures[system] = row = summarise_row(result)
        print(f"{system:<10} {leading(row)} {100 * row['mfu']:5.1f}% {row['peak_memory_gib']:8.2f}G "
              f"{row['final_loss']:11.4f} {row['startup_s']:7.1f}s")
    return figures
