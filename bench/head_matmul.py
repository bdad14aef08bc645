"""The output head on a strided input: what transformers hands it during generation (the prompt's last position,
`hidden[:, -1:, :]`) against the same rows made contiguous, in fp32 and bf16, for the default model's head
(49,152 x 576) and a batch of 50 prompts of 52 tokens — why `evaluation.generate` makes the input contiguous.

    python -m bench.head_matmul
"""

from __future__ import annotations

import time

import torch

from bench.common import machine_line


def timed(inputs: torch.Tensor, weight: torch.Tensor) -> float:
    started = time.perf_counter()
    with torch.no_grad():
        torch.nn.functional.linear(inputs, weight)
    return time.perf_counter() - started


def main() -> None:
    print(machine_line())
    for dtype in (torch.float32, torch.bfloat16):
        weight = torch.randn(49152, 576, dtype=dtype)
        last = torch.randn(50, 52, 576, dtype=dtype)[:, -1:, :]
        timed(last.contiguous(), weight)  # warm-up
        strided, contiguous = timed(last, weight), timed(last.contiguous(), weight)
        print(f"{dtype!s:15} strided {strided:.3f} s   contiguous {contiguous:.3f} s")


if __name__ == "__main__":
    main()
