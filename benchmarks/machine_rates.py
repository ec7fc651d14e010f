"""What this machine's arithmetic and memory can do, the numbers docs/benchmarks.md reasons with.

- fp32 and bf16 matmul rates on the shapes of a flan-t5-base PPO step (a CPU without
  avx512_bf16 or AMX runs bf16 matmuls far slower than fp32);
- the rate of a decoding-step matmul: 16 rows times a weight too large for the caches;
- memory bandwidth, from copying a large tensor;
- with ``--skinny``, each linear layer shape of the built-in model and of flan-t5-base at 1 to 256
  rows: ``F.linear`` against the weight-first product of ``detox.models.skinny``, and whether the
  layer takes that path (its size and row limits). The weights stay in the caches here, as a small
  layer's do in a model; a large layer's are streamed from memory there, so the gain inside a model
  is smaller (``generation_floor.py`` measures that). ``--dtype bfloat16`` times the same in bf16
  (the path takes fp32 only: where the weights are bf16, this says whether it should);
- with ``--packed``, flan-t5-base's layer shapes at 2 to 64 rows: weight-first against oneDNN's packed
  weights (``generation.skinny_matmul: packed``), each cycling through copies of its weight that
  together exceed the caches, so the weights come from memory as in a decoding step; with ``--dtype
  bfloat16``, ``F.linear`` against packed weights in bf16 (the path's bf16 kernel).

    python benchmarks/machine_rates.py
    python benchmarks/machine_rates.py --skinny --seconds 0.3
    python benchmarks/machine_rates.py --skinny --seconds 0.2 --dtype bfloat16
    python benchmarks/machine_rates.py --packed --seconds 0.5
    python benchmarks/machine_rates.py --packed --seconds 0.5 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch

from common import calls_per_second, copy_gbps, matmul_gflops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measured shape")
    parser.add_argument("--skinny", action="store_true", help="only the skinny-matmul table")
    parser.add_argument("--packed", action="store_true", help="only the weight-first against packed weights table")
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="the dtype of the --skinny table (weight-first: the path takes it in fp32 only) and the --packed one",
    )
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    if args.skinny:
        skinny_table(args.seconds, getattr(torch, args.dtype))
        return 0
    if args.packed:
        return packed_table(args.seconds, getattr(torch, args.dtype))
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
    print(f"copy of 1 GiB: {copy_gbps(cpu):.1f} GB/s (read + write)")
    return 0


SKINNY_ROWS = (1, 4, 16, 64, 256)
# (d_in, d_out): the built-in model's attention, feed-forward and LM head; flan-t5-base's
LAYER_SHAPES = ((128, 128), (128, 320), (320, 128), (128, 1024), (768, 768), (768, 2048), (2048, 768), (768, 32128))


def skinny_table(seconds: float, dtype: torch.dtype = torch.float32) -> None:
    """F.linear against weight-first at each layer shape and row count, in turn, same inputs."""
    from detox.models.skinny import MAX_ROWS, MIN_WEIGHT, weight_first

    def rate(call: Callable[[], object], flop: float) -> float:
        return flop * calls_per_second(call, seconds) / 1e9

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {str(dtype).removeprefix('torch.')}; "
        f"F.linear -> weight-first GFLOP/s (ratio); * = the layer takes the path (fp32, weight >= {MIN_WEIGHT} "
        f"elements, 2 to {MAX_ROWS} rows)"
    )
    print(f"{'d_in x d_out':>14} " + " ".join(f"{f'{rows} rows':>22}" for rows in SKINNY_ROWS))
    for d_in, d_out in LAYER_SHAPES:
        weight = (torch.randn(d_out, d_in) / d_in**0.5).to(dtype)
        cells = []
        for rows in SKINNY_ROWS:
            x = torch.randn(rows, d_in, dtype=dtype)
            flop = 2 * rows * d_in * d_out
            plain = rate(lambda x=x, w=weight: torch.nn.functional.linear(x, w), flop)
            first = rate(lambda x=x, w=weight: weight_first(x, w), flop)
            takes = dtype == torch.float32 and weight.numel() >= MIN_WEIGHT and 1 < rows <= MAX_ROWS
            taken = "*" if takes else " "
            cells.append(f"{plain:6.1f} -> {first:6.1f} ({first / plain:4.2f}){taken}")
        print(f"{f'{d_in} x {d_out}':>14} " + " ".join(f"{c:>22}" for c in cells))


PACKED_ROWS = (2, 4, 8, 16, 32, 64)
STREAMED_BYTES = 256 * 1024 * 1024  # the copies of a weight cycled through: more than the caches hold


def packed_table(seconds: float, dtype: torch.dtype = torch.float32) -> int:
    """Weight-first (fp32) or F.linear (bf16: the path has no weight-first there) against oneDNN's packed
    weights at flan-t5-base's layer shapes, weights from memory."""
    from itertools import cycle

    import torch.nn.functional as F

    from detox.models.skinny import PACKED_MIN_ROWS, pack, packed_available, packed_product, weight_first

    if not packed_available(dtype):
        print(
            f"no oneDNN packed linear in {str(dtype).removeprefix('torch.')} here "
            "(detox.models.skinny.packed_available; bf16 also needs avx512_bf16 or AMX)"
        )
        return 1
    plain, name = (weight_first, "weight-first") if dtype == torch.float32 else (F.linear, "F.linear")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {str(dtype).removeprefix('torch.')}, weights "
        f"from memory (copies cycled, {STREAMED_BYTES >> 20} MiB or more per shape); {name} -> packed microseconds "
        f"a call (speed-up); * = the packed path takes it ({PACKED_MIN_ROWS} rows or more)"
    )
    print(f"{'d_in x d_out':>14} " + " ".join(f"{f'{rows} rows':>24}" for rows in PACKED_ROWS))
    size = torch.empty((), dtype=dtype).element_size()
    for d_in, d_out in LAYER_SHAPES[4:]:  # flan-t5-base's
        copies = max(2, -(-STREAMED_BYTES // (d_in * d_out * size)))
        weights = [(torch.randn(d_out, d_in) / d_in**0.5).to(dtype) for _ in range(copies)]
        cells = []
        for rows in PACKED_ROWS:
            x = torch.randn(rows, d_in).to(dtype)
            packs = [pack(w, rows) for w in weights]
            plain_weights, packed_weights = cycle(weights), cycle(packs)
            first = 1e6 / calls_per_second(lambda x=x, w=plain_weights: plain(x, next(w)), seconds)
            packed = 1e6 / calls_per_second(lambda x=x, w=packed_weights: packed_product(x, next(w), None), seconds)
            taken = "*" if rows >= PACKED_MIN_ROWS else " "
            cells.append(f"{first:7.0f} -> {packed:7.0f} ({first / packed:4.2f}){taken}")
            del packs
        print(f"{f'{d_in} x {d_out}':>14} " + " ".join(f"{c:>24}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
