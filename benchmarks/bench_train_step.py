"""Training-step throughput of clipmini against open_clip's model of the same architecture.

One step is forward, symmetric cross-entropy, backward and an AdamW step. Both models hold the
same weights and see the same batch; their timings are interleaved (the order alternates every
repetition) so that load on the machine affects both alike. The figure that matters is the ratio.

    python benchmarks/bench_train_step.py --quick
    python benchmarks/bench_train_step.py --models small-vit --precisions fp32 --reps 7 --steps 5 --out results.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from clipmini.config import CLIPConfig, get_config
from clipmini.model import CLIP

DEFAULT_BATCH = {"tiny-vit": 64, "small-vit": 16}
QUICK_BATCH = {"tiny-vit": 32, "small-vit": 8}
# Without bf16 matrix units a CPU emulates bf16 matmuls; small-vit then takes about a minute a
# step, so --quick leaves that pair out unless it is asked for explicitly.
QUICK_SKIP = {("small-vit", "bf16")}


def open_clip_twin(config: CLIPConfig):
    """open_clip's CLIP with clipmini's architecture (ViT configs only)."""
    from open_clip.model import CLIP as OpenClipCLIP

    v, t = config.vision, config.text
    if not v.is_vit:
        raise ValueError("the benchmark compares ViT configs only")
    vision = dict(image_size=v.image_size, layers=v.layers, width=v.width, patch_size=v.patch_size, head_width=v.head_width)
    text = dict(context_length=t.context_length, vocab_size=t.vocab_size, width=t.width, heads=t.heads, layers=t.layers)
    return OpenClipCLIP(config.embed_dim, vision, text, quick_gelu=config.quick_gelu)


def symmetric_loss(logits_per_image: torch.Tensor) -> torch.Tensor:
    labels = torch.arange(logits_per_image.shape[0])
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_image.t(), labels)) / 2


def make_step(model, is_clipmini: bool, precision: str):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6)
    autocast = precision == "bf16"

    def step(images, tokens):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            if is_clipmini:
                logits_per_image, _ = model(images, tokens)
            else:
                image_features, text_features, logit_scale = model(images, tokens)
                logits_per_image = logit_scale * image_features @ text_features.t()
            loss = symmetric_loss(logits_per_image.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def bench_one(name: str, precision: str, batch: int, reps: int, steps: int, warmup: int, trim: bool = True) -> dict:
    torch.manual_seed(0)
    config = get_config(name)
    ours = CLIP(config).train()
    ours.trim_padding = trim
    theirs = open_clip_twin(config).train()
    theirs.load_state_dict(ours.state_dict())
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, config.vision.image_size, config.vision.image_size, generator=g)
    tokens = torch.randint(1, config.text.vocab_size - 1, (batch, config.text.context_length), generator=g)
    # EOT mid-sequence, zero padding after: open_clip runs all positions, clipmini (by default)
    # only those up to EOT, since no later one can change the result.
    tokens[:, config.text.context_length // 2] = config.text.vocab_size - 1
    tokens[:, config.text.context_length // 2 + 1 :] = 0
    steps_fn = {"clipmini": make_step(ours, True, precision), "open_clip": make_step(theirs, False, precision)}
    for fn in steps_fn.values():
        for _ in range(warmup):
            fn(images, tokens)
    rates = {k: [] for k in steps_fn}
    for rep in range(reps):
        order = list(steps_fn) if rep % 2 == 0 else list(reversed(steps_fn))
        for key in order:
            start = time.perf_counter()
            for _ in range(steps):
                steps_fn[key](images, tokens)
            rates[key].append(batch * steps / (time.perf_counter() - start))
    summary = {k: {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": v} for k, v in rates.items()}
    # Each repetition times the two models back to back, so their ratio cancels slow drifts in
    # the machine's load; the median of these paired ratios is the headline figure.
    paired = sorted(a / b for a, b in zip(rates["clipmini"], rates["open_clip"]))
    return {
        "model": name,
        "precision": precision,
        "trim_padding": trim,
        "eot_position": config.text.context_length // 2,
        "batch": batch,
        "reps": reps,
        "steps_per_rep": steps,
        "samples_per_s": summary,
        "ratio_paired_median": statistics.median(paired),
        "ratio_of_medians": summary["clipmini"]["median"] / summary["open_clip"]["median"],
        "ratio_paired_min": paired[0],
        "ratio_paired_max": paired[-1],
    }


def cpu_name() -> str:
    try:  # run as `python -m benchmarks.bench_train_step` or as a script
        from benchmarks.common import cpu_model
    except ImportError:
        from common import cpu_model
    return cpu_model()


def write_json_merged(path: Path, results: dict) -> None:
    """Merge `results` into the JSON at `path` (keys replaced), written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(path.read_text()) if path.is_file() else {}
    existing.update(results)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(existing, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny-vit", "small-vit"])
    parser.add_argument("--precisions", nargs="+", default=None, choices=["fp32", "bf16"], help="default: both")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: per model)")
    parser.add_argument("--reps", type=int, default=7, help="interleaved repetitions per model")
    parser.add_argument("--steps", type=int, default=5, help="training steps per repetition")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--no-trim", action="store_true", help="run clipmini's text tower over the whole context (trim_padding=False)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads; 1 keeps a shared machine from oversubscribing (0: torch's default)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="5 reps x 2 steps, small batches, no small-vit bf16: 1-3 minutes"
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/<host>.json)")
    raw_args = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(raw_args)
    skip = set()
    if args.quick:
        args.reps, args.steps, args.warmup = 5, 2, 1
        if args.precisions is None:
            skip = QUICK_SKIP
    args.precisions = args.precisions or ["fp32", "bf16"]
    if args.threads:
        torch.set_num_threads(args.threads)
    host = socket.gethostname()
    out = args.out or Path(__file__).resolve().parent / "results" / f"{host}.json"

    results = {}
    print(f"{'model':<10} {'prec':<5} {'batch':>5} {'clipmini/s':>11} {'open_clip/s':>11} {'ratio':>6}  range", flush=True)
    for name in args.models:
        for precision in args.precisions:
            if (name, precision) in skip:
                print(f"{name:<10} {precision:<5} skipped in --quick mode (emulated bf16 matmuls)", flush=True)
                continue
            batch = args.batch or (QUICK_BATCH if args.quick else DEFAULT_BATCH).get(name, 16)
            r = bench_one(name, precision, batch, args.reps, args.steps, args.warmup, trim=not args.no_trim)
            r.update(command=" ".join(["python", "benchmarks/bench_train_step.py", *raw_args]), torch=torch.__version__, threads=torch.get_num_threads(), host=host, cpu=cpu_name())
            ours, theirs = r["samples_per_s"]["clipmini"], r["samples_per_s"]["open_clip"]
            print(
                f"{name:<10} {precision:<5} {batch:>5} {ours['median']:>11.1f} {theirs['median']:>11.1f} "
                f"{r['ratio_paired_median']:>6.3f}  [{r['ratio_paired_min']:.3f}, {r['ratio_paired_max']:.3f}]",
                flush=True,
            )
            results[f"train_step/{name}/{precision}/b{batch}" + ("/no-trim" if args.no_trim else "")] = r
    write_json_merged(out, results)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
