"""What fraction of this machine's matmul peak a clipmini training step reaches (fp32, CPU).

The peak is the best FLOP/s of a large fp32 `torch.matmul` (2048 x 2048 by default), measured in this
same run, before and after the model steps. A training step is forward (both towers, normalized
features, the logits), `clip_loss`, backward and an AdamW step; its model FLOPs come from the config
(`benchmarks.common.clip_flops`: every matmul, backward = 2x forward). Achieved TFLOP/s = model FLOPs
per step / seconds per step; the fraction = achieved / peak. Small models sit far below the peak:
their matrices are narrow (W = 64 for tiny-vit), and LayerNorm, softmax, GELU and the optimizer,
which do no matmul FLOPs, take a large share of the time.

    .venv/bin/python benchmarks/bench_peak.py                     # tiny-vit and small-vit, ~2 minutes
    .venv/bin/python benchmarks/bench_peak.py --quick --out /tmp/peak.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

try:
    from benchmarks.common import clip_flops, command_line, default_results_path, merge_into, summarize
except ModuleNotFoundError:  # run as a script: python benchmarks/bench_peak.py
    from common import clip_flops, command_line, default_results_path, merge_into, summarize

from clipmini.losses import clip_loss
from clipmini.model import create_model

KEY = "bench_peak"
DEFAULT_BATCH = {"tiny-vit": 64, "small-vit": 16}  # bench_train_step's batches
QUICK_BATCH = {"tiny-vit": 32, "small-vit": 8}


def matmul_tflops(size: int, reps: int) -> list[float]:
    """TFLOP/s of `reps` fp32 [size, size] @ [size, size] products (2 * size^3 FLOPs each)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g)  # [S, S]
    b = torch.randn(size, size, generator=g)  # [S, S]
    out = torch.empty(size, size)
    torch.matmul(a, b, out=out)  # warm-up: threads, packing buffers
    rates = []
    for _ in range(reps):
        start = time.perf_counter()
        torch.matmul(a, b, out=out)
        rates.append(2 * size**3 / (time.perf_counter() - start) / 1e12)
    return rates


def train_step_seconds(name: str, batch: int, reps: int, steps: int, warmup: int) -> tuple[list[float], int, object]:
    """Seconds per training step (one value per rep, the mean of `steps` steps), the text length run, the config."""
    torch.manual_seed(0)
    model = create_model(name).train()
    config = model.config
    R, L, V = config.vision.image_size, config.text.context_length, config.text.vocab_size
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, R, R, generator=g)  # [B, 3, R, R]
    tokens = torch.randint(1, V - 1, (batch, L), generator=g)  # [B, L]
    eot = L // 2  # captions end mid-context, zero padding after (as in bench_train_step)
    tokens[:, eot] = V - 1
    tokens[:, eot + 1:] = 0

    def step() -> None:
        image_features = model.encode_image(images, normalize=True)  # [B, E]
        text_features = model.encode_text(tokens, normalize=True)  # [B, E]
        loss = clip_loss(image_features, text_features, model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    model.validate_inputs = False  # as the trainer does after its first batch
    for _ in range(warmup):
        step()
    seconds = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        seconds.append((time.perf_counter() - start) / steps)
    return seconds, eot + 1, config


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny-vit", "small-vit"], help="ViT names from clipmini.config")
    parser.add_argument("--batch", type=int, default=None, help="pairs per step (default: 64 tiny-vit, 16 small-vit)")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions (median and spread over these)")
    parser.add_argument("--steps", type=int, default=3, help="training steps per repetition")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--size", type=int, default=2048, help="matmul side for the peak")
    parser.add_argument("--matmul-reps", type=int, default=5, help="matmuls timed before and again after the models")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for both the peak and the steps (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="smaller batches, 2 reps x 2 steps, 1024 matmuls: ~30 s")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/results/<machine>.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.steps, args.warmup, args.size, args.matmul_reps = 2, 2, 1, 1024, 3
    for flag in ("reps", "steps", "size", "matmul_reps"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or default_results_path()

    before = matmul_tflops(args.size, args.matmul_reps)
    print(f"matmul fp32 {args.size}x{args.size}: best {max(before):.3f} TFLOP/s (median {statistics.median(before):.3f})", flush=True)
    timed = {}
    for name in args.models:
        batch = args.batch or (QUICK_BATCH if args.quick else DEFAULT_BATCH).get(name, 16)
        seconds, text_length, config = train_step_seconds(name, batch, args.reps, args.steps, args.warmup)
        timed[name] = (batch, seconds, text_length, config)
    after = matmul_tflops(args.size, args.matmul_reps)
    peak = max(before + after)
    print(f"matmul again: best {max(after):.3f} TFLOP/s; peak used: {peak:.3f} TFLOP/s", flush=True)

    models = {}
    print(f"{'model':<10} {'batch':>5} {'GFLOP/step':>11} {'s/step':>8} {'TFLOP/s':>8} {'of peak':>8}", flush=True)
    for name, (batch, seconds, text_length, config) in timed.items():
        flops = clip_flops(config, batch, text_length=text_length)
        tflops = [flops["train_step"] / s / 1e12 for s in seconds]
        record = {
            "batch": batch,
            "text_length": text_length,
            "flops_per_step": flops["train_step"],
            "flops": flops,  # per step: each term of the forward, the forward, the training step
            "step_s": summarize(seconds),
            "samples_per_s": summarize([batch / s for s in seconds]),
            "tflops": summarize(tflops),
            "fraction_of_peak": statistics.median(tflops) / peak,
            "fraction_of_peak_best": max(tflops) / peak,
        }
        models[name] = record
        print(
            f"{name:<10} {batch:>5} {flops['train_step'] / 1e9:>11.2f} {statistics.median(seconds):>8.3f} "
            f"{statistics.median(tflops):>8.4f} {record['fraction_of_peak']:>8.1%}",
            flush=True,
        )
    report = {
        "command": command_line([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "matmul": {
            "size": args.size,
            "dtype": "float32",
            "tflops_before": summarize(before),
            "tflops_after": summarize(after),
            "peak_tflops": peak,
        },
        "flops_convention": "matmul FLOPs only (2 per multiply-add); train step = 3 x forward - patch embedding",
        "models": models,
    }
    merge_into(out, KEY, report)
    print(f"wrote {out} [{KEY}]")
    return report


if __name__ == "__main__":
    main()
