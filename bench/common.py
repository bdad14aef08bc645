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

    def words(median: float, low: int, high: int) -> str:
        count = int(min(high, max(low, rng.lognormvariate(0, 0.7) * median)))
        return " ".join(rng.choice(WORDS) for _ in range(count))

    with path.open("w") as handle:
        for _ in range(examples):
            messages = [{"role": "user", "content": words(60, 5, 300)},
                        {"role": "assistant", "content": words(45, 3, 200)}]
            handle.write(json.dumps({"messages": messages}) + "\n")
    return path


def measure_matmul_peak(dtype_name: str, sizes: tuple[int, ...] = (1024, 2048, 3072), seconds: float = 2.0) -> float:
    """Best sustained FLOP/s of square matmuls in `dtype_name` on this process's threads: the best over
    several sizes, since one size alone can land on a slow blocking or a noisy moment."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    best = 0.0
    for size in sizes:
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        torch.mm(a, b)
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
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
    startup_s: float = 0.0
    extra: dict = field(default_factory=dict)


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


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
