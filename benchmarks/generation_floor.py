"""Generation against its floors, compute and memory: one ``generate`` call, timed and counted.

The call samples ``--new-tokens`` tokens (every row the full length, so the work is fixed) for the
first ``--batch`` test dialogues, with params.yaml's sampling settings, the way the pipeline calls
``generate``. The script

- counts the call's matmul and attention FLOPs (``torch.utils.flop_counter``), the encoder's apart;
- counts the bytes the call must read from memory at least (:func:`memory_traffic`): every weight the
  encoder uses once; at each decoding step every decoder weight and the LM head, and the KV cache the
  step attends to (its own keys and values so far, the cross-attention's over the prompt);
- measures the device's best matmul rate on the model's own shapes (``common.matmul_gflops``) and its
  memory bandwidth (``common.copy_gbps``, a large copy);
- times the call ``--repeats`` times: the encoder alone and the whole call;
- prints the **compute floor** (the FLOPs at the best rate), the **memory floor** (the bytes at the
  bandwidth) and how far each time is above the larger of the two. On a CPU the compute floor is the
  larger; on a GPU, at the batch sizes of a rollout, the memory floor (the bandwidth bound).

``--device cuda`` and ``--dtype bfloat16`` run the call on a GPU and/or in bf16 weights (the rates,
the bandwidth and the bytes are then the GPU's and bf16's). Skinny matmuls apply on the CPU only (in
bf16 its packed weights only, where the CPU multiplies bf16), so on a GPU both timed paths are ``F.linear``.

The pipeline's path takes ``generation.skinny_matmul`` from params.yaml (``--no-skinny`` makes it
``off``, ``F.linear``); the other path (``off``, or ``packed`` where the pipeline's is ``off``) is timed
beside it, the paths taking turns first, and the script prints their ratio and the share of sampled
tokens they have in common. Where the pipeline's path is ``packed`` and takes oneDNN's packed weights
(``detox.models.skinny``, from 8 rows), ``weight_first`` is timed in turn as well, a third path.

``--sampler`` also times the call with the other ``generation.sampler`` (``multinomial`` or
``inverse_cdf``, :mod:`detox.models.sampling`), in turn with the pipeline's path, and prints their ratio
and what one draw of each takes (``batch`` rows of the vocabulary, timed alone). The two samplers draw from the
same distribution but other tokens, so no share of equal tokens is printed: the test suite checks the
distribution.

``--static`` also times transformers' static KV cache (``cache_implementation="static"``) without
compiling, in turn with the plain call. ``--compile`` times the static cache with ``torch.compile`` on
the model's forward: the first call (which compiles) apart, the median after it. Both print the
share of sampled tokens equal to the plain call's (same seed).

``--profile`` runs the decoding steps of one call (the encoder's output given) under torch.profiler
and prints the top operators by self CPU time: what a faster decoding step has to cut.

    python benchmarks/generation_floor.py --size base --batch 16 --new-tokens 32 --compile
    python benchmarks/generation_floor.py --size base --batch 16 --new-tokens 48
    python benchmarks/generation_floor.py --size base --batch 16 --new-tokens 48 --repeats 4 --static --profile
    python benchmarks/generation_floor.py --size builtin --batch 64 --new-tokens 48
    python benchmarks/generation_floor.py --size base --batch 16 --new-tokens 48 --repeats 4 --sampler
    python benchmarks/generation_floor.py --size base --batch 16 --new-tokens 48 --dtype bfloat16
    python benchmarks/generation_floor.py --size base --batch 16 --new-tokens 48 --device cuda --dtype bfloat16
    python benchmarks/generation_floor.py --size base --batch 64 --new-tokens 48 --device cuda --dtype bfloat16
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from common import (
    add_generation_arguments,
    check_inputs,
    copy_gbps,
    fixed_length_generation,
    matmul_gflops,
    synchronize,
)
from detox.common.allocator import keep_freed_memory
from detox.common.params import load_params
from detox.common.params.base import SAMPLERS
from detox.models.sampling import sampler
from detox.models.skinny import PACKED_MIN_ROWS, large_layers, packed_available, skinny_matmuls

SEED = 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_generation_arguments(parser, batch=16, new_tokens=32)
    parser.add_argument("--params", default="params.yaml", help="generation.*, prompt")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per path")
    parser.add_argument(
        "--no-skinny", action="store_true", help="time the pipeline's path with generation.skinny_matmul off"
    )
    parser.add_argument("--sampler", action="store_true", help="also time the other generation.sampler, in turn")
    parser.add_argument("--static", action="store_true", help="also time a static KV cache, not compiled")
    parser.add_argument("--compile", action="store_true", help="also time a static KV cache with torch.compile")
    parser.add_argument("--profile", action="store_true", help="top operators of the decoding steps (torch.profiler)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the call runs")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="the model's weights")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here (torch.cuda.is_available() is False)")
    keep_freed_memory()  # as every stage does (detox.common.allocator)
    if min(args.batch, args.new_tokens, args.repeats) < 1:
        parser.error("--batch, --new-tokens and --repeats must be at least 1")
    check_inputs(args, ("policy", "data", "params"))
    params = load_params(Path(args.params))
    model, tokenizer, enc, kwargs = fixed_length_generation(args, params, parser)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model = model.to(device=device, dtype=dtype)
    enc = enc.to(device)
    encoder = model.get_encoder()

    mode = "off" if args.no_skinny else params.generation.skinny_matmul
    other_mode = "packed" if mode == "off" else "off"
    draw = params.generation.sampler
    other_draw = next(name for name in SAMPLERS if name != draw)

    @torch.no_grad()
    def generate(mode: str = mode, draw: str = draw, **extra) -> torch.Tensor:
        torch.manual_seed(SEED)
        with skinny_matmuls(model, mode), sampler(draw):
            tokens = model.generate(**enc, **kwargs, **extra)
        synchronize(device)  # a GPU's queued work is part of the call's time
        return tokens

    @torch.no_grad()
    def encode() -> None:
        encoder(**enc)
        synchronize(device)

    plain = generate()  # warm-up, and the tokens the compiled path is compared with
    with FlopCounterMode(display=False) as counter:
        encode()
    encoder_gflop = counter.get_total_flops() / 1e9
    with FlopCounterMode(display=False) as counter:
        generate()
    total_gflop = counter.get_total_flops() / 1e9

    other = generate(other_mode)
    # the pipeline's path packs weights (from 8 rows, where this torch has oneDNN): weight-first is a third path
    # on the CPU where the kernel runs in the model's dtype (bf16: where the CPU multiplies it); on a GPU neither
    unpacked_too = (
        mode == "packed"
        and device.type == "cpu"
        and packed_available(dtype)
        and args.batch >= PACKED_MIN_ROWS
        and bool(large_layers(model))
    )
    unpacked = generate("weight_first") if unpacked_too else None
    if args.sampler:
        generate(draw=other_draw)  # warm-up
    static = generate(cache_implementation="static") if args.static else None
    times: dict[str, list[float]] = {
        "encoder": [],
        "generate": [],
        "other": [],
        "unpacked": [],
        "sampler": [],
        "static": [],
    }
    calls = [("encoder", encode), ("generate", generate), ("other", lambda: generate(other_mode))]
    if unpacked_too:
        calls.append(("unpacked", lambda: generate("weight_first")))
    if args.sampler:
        calls.append(("sampler", lambda: generate(draw=other_draw)))
    if args.static:
        calls.append(("static", lambda: generate(cache_implementation="static")))
    for repeat in range(args.repeats):
        # the generate paths take turns in first place: a call's place in the round must not decide a ratio
        turn = repeat % (len(calls) - 1)
        for name, call in [calls[0], *calls[1 + turn :], *calls[1 : 1 + turn]]:
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)

    config = model.config
    shapes = (
        (args.batch, config.d_model, config.d_ff),
        (args.batch, config.d_model, config.vocab_size),
        (enc["input_ids"].numel(), config.d_model, config.d_ff),
    )
    rates = matmul_gflops(device, dtype, shapes=shapes)
    best = max(rates.values())
    bandwidth = copy_gbps(device)
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(
        f"torch {torch.__version__}, {where}; size {args.size} ({params_m:.1f}M parameters, {args.dtype}), "
        f"{args.batch} prompts of {enc['input_ids'].shape[1]} tokens (padded), {args.new_tokens} new tokens each"
    )
    print(
        f"{args.dtype} matmul GFLOP/s on the model's shapes: "
        + ", ".join(f"{s} {r:.0f}" for s, r in rates.items())
        + f"; memory bandwidth {bandwidth:.1f} GB/s (a copy of 1 GiB, read + write)"
    )
    traffic = memory_traffic(model, args.batch, enc["input_ids"].shape[1], args.new_tokens)
    encoder_gb, decoding_gb = (n / 1e9 for n in traffic)
    decoding_gflop = total_gflop - encoder_gflop
    encoder_s, generate_s = statistics.median(times["encoder"]), statistics.median(times["generate"])
    rows = (
        ("encoder", encoder_gflop, encoder_gb, encoder_s, times["encoder"]),
        ("decoding", decoding_gflop, decoding_gb, generate_s - encoder_s, None),
        ("generate", total_gflop, encoder_gb + decoding_gb, generate_s, times["generate"]),
    )
    print(
        f"{'part':<9} {'GFLOP':>10} {'GB read':>10} {'compute s':>10} {'memory s':>10} {'median s':>10} {'min s':>10} "
        f"{'x floor':>8} {'GFLOP/s':>8} {'GB/s':>8}"
    )
    for name, gflop, gb, measured, values in rows:
        compute, memory = gflop / best, gb / bandwidth
        shown = f"{min(values):10.4g}" if values else f"{'-':>10}"
        print(
            f"{name:<9} {gflop:10.4g} {gb:10.4g} {compute:10.4g} {memory:10.4g} {measured:10.4g} {shown} "
            f"{measured / max(compute, memory):8.2f} {gflop / measured:8.1f} {gb / measured:8.1f}"
        )
    total_compute, total_memory = total_gflop / best, (encoder_gb + decoding_gb) / bandwidth
    bound = "compute" if total_compute >= total_memory else "memory bandwidth"
    print(
        f"generate: {args.batch * args.new_tokens / generate_s:.1f} sampled tokens/s; its floor is the {bound}'s "
        f"({max(total_compute, total_memory):.4g} s), x floor = the median over the larger of the two floors"
    )
    layers = len(large_layers(model))
    skinny = f"skinny matmuls ({layers} layers"
    names = {"packed": f"{skinny}, packed)", "weight_first": f"{skinny}, weight-first)", "off": "F.linear"}

    def against(label: str, key: str, tokens: torch.Tensor) -> None:
        """One timed path set against the pipeline's: its median, its floor multiple, the speed-up, equal tokens."""
        path_s = statistics.median(times[key])
        print(
            f"{label} ({path_s:.4g} s median, {path_s / max(total_compute, total_memory):.2f}x the floor): "
            f"{path_s / generate_s:.3f}x as fast; {equal_share(tokens, plain):.1%} of the tokens equal"
        )

    against(f"{names[mode]} (the path above) against {names[other_mode]}", "other", other)
    if unpacked is not None:
        against("the same with oneDNN's packed weights against weight-first without them", "unpacked", unpacked)

    if args.sampler:
        sampler_s = statistics.median(times["sampler"])
        drawing = draw_seconds(args.batch, config.vocab_size, device)
        print(
            f"sampler {draw} (the path above; one draw {drawing[draw] * 1e3:.3f} ms) against {other_draw} "
            f"({sampler_s:.4g} s median, {sampler_s / max(total_compute, total_memory):.2f}x the floor; one draw "
            f"{drawing[other_draw] * 1e3:.3f} ms): {sampler_s / generate_s:.3f}x as fast; other draws of the same "
            "distribution"
        )
    if static is not None:
        static_s = statistics.median(times["static"])
        print(
            f"static KV cache, not compiled ({static_s:.4g} s median): {static_s / generate_s:.3f}x the time of the "
            f"path above; {equal_share(static, plain):.1%} of the tokens equal"
        )
    if args.profile:
        with torch.no_grad():
            encoder_outputs = encoder(**enc)
            with torch.profiler.profile() as profile:
                generate(encoder_outputs=encoder_outputs)
        print(f"decoding steps of one call ({names[mode]}), top operators by self CPU time:")
        print(profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))

    if args.compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # weights as constants: inductor may prepack them for its kernels
        model.forward = torch.compile(model.forward)
        started = time.perf_counter()
        compiled = generate(cache_implementation="static")
        first = time.perf_counter() - started
        runs = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            compiled = generate(cache_implementation="static")
            runs.append(time.perf_counter() - started)
        same = equal_share(compiled, plain)
        median = statistics.median(runs)
        print(
            f"static cache + torch.compile: first call {first:.1f} s (compiles), then median {median:.3f} s, "
            f"min {min(runs):.3f} s: {generate_s / median:.2f}x the plain call; {same:.1%} of the tokens equal"
        )
    return 0


def memory_traffic(model: nn.Module, batch: int, prompt_tokens: int, new_tokens: int) -> tuple[int, int]:
    """The bytes a ``generate`` call of a T5 model must read at least: ``(encoder, decoding)``.

    - encoder: each of its weights once (the embedding table is looked up, a few rows: not counted);
    - decoding, at each of the ``new_tokens`` steps: every decoder weight and the LM head (a step multiplies
      each by its ``batch`` rows), and the KV cache it attends to, the self-attention's ``t`` positions at step
      ``t`` and the cross-attention's ``prompt_tokens``, in every layer; the cross-attention's key and value
      weights only once (their products over the prompt are cached at the first step).

    A lower bound: activations, logits and the cache's own copies are left out (they may stay in the caches).
    """
    config = model.config
    embedding = model.get_input_embeddings().weight

    def size(params) -> int:
        return sum(p.numel() * p.element_size() for p in params)

    encoder = size(p for p in model.get_encoder().parameters() if p is not embedding)
    once = [
        p
        for name, module in model.get_decoder().named_modules()
        if name.endswith(("EncDecAttention.k", "EncDecAttention.v"))
        for p in module.parameters()
    ]
    skip = {id(embedding), *map(id, once)}
    head = model.get_output_embeddings().weight  # the LM head reads its whole weight, tied or not
    step_weights = size(p for p in model.get_decoder().parameters() if id(p) not in skip) + size([head])
    element = embedding.element_size()  # the cache holds the model's dtype
    per_position = config.num_decoder_layers * 2 * batch * config.num_heads * config.d_kv * element  # K and V
    cache = sum(per_position * (step + prompt_tokens) for step in range(1, new_tokens + 1))
    return encoder, size(once) + new_tokens * step_weights + cache


def draw_seconds(rows: int, vocab: int, device: torch.device, repeats: int = 50) -> dict[str, float]:
    """Median seconds of one draw of a token per row from ``(rows, vocab)`` probabilities, for each sampler."""
    probs = torch.softmax(torch.randn(rows, vocab, device=device, generator=torch.Generator(device).manual_seed(0)), -1)
    seconds: dict[str, list[float]] = {name: [] for name in SAMPLERS}
    for _ in range(repeats):
        for name in SAMPLERS:
            with sampler(name):
                started = time.perf_counter()
                torch.multinomial(probs, num_samples=1)
                synchronize(device)
                seconds[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in seconds.items()}


def equal_share(tokens: torch.Tensor, plain: torch.Tensor) -> float:
    """The share of sampled tokens equal to the plain call's (0 when the shapes differ)."""
    return (tokens == plain).float().mean().item() if tokens.shape == plain.shape else 0.0


if __name__ == "__main__":
    sys.exit(main())
