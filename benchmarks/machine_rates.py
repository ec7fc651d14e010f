"""What this machine's arithmetic and memory can do, the numbers docs/benchmarks.md reasons with.

- fp32 and bf16 matmul rates on the shapes of a flan-t5-base PPO step (a CPU without
  avx512_bf16 or AMX runs bf16 matmuls far slower than fp32);
- the rate of a decoding-step matmul: 16 rows times a weight too large for the caches;
- memory bandwidth, from copying a large tensor.

    python benchmarks/machine_rates.py
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from common import matmul_gflops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measured shape")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    cpu = torch.device("cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for dtype in (torch.float32, torch.bfloat16):
        shapes = ((256, 768, 2048), (1760, 768, 2048))
        rates = matmul_gflops(cpu, dtype, args.seconds, shapes)
        print(
            f"matmul {str(dtype).removeprefix('torch.'):<9} "
            + ", ".join(f"{s} {r:.2f} GFLOP/s" for s, r in rates.items())
        )
    weight_rows, weight_cols = 768 * 4, 768 * 16  # 151 MB of fp32: streamed from memory on every call
    rate = matmul_gflops(cpu, torch.float32, args.seconds, ((16, weight_rows, weight_cols),))
    gflops = next(iter(rate.values()))
    weight_gb = weight_rows * weight_cols * 4 / 1e9
    print(
        f"decoding-step matmul 16x{weight_rows}x{weight_cols} ({weight_gb * 1e3:.0f} MB weight): {gflops:.1f} GFLOP/s, "
        f"{gflops / (2 * 16 * weight_rows * weight_cols / 1e9) * weight_gb:.1f} GB/s of weights"
    )
    source = torch.randn(256 * 1024 * 1024)  # 1 GiB
    target = torch.empty_like(source)
    target.copy_(source)
    started, repeats = time.perf_counter(), 5
    for _ in range(repeats):
        target.copy_(source)
    elapsed = (time.perf_counter() - started) / repeats
    print(f"copy of 1 GiB: {2 * source.numel() * 4 / elapsed / 1e9:.1f} GB/s (read + write)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
