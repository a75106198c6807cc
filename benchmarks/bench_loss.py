"""Plain vs chunked symmetric InfoNCE on the CPU: forward+backward time and peak memory, N = 1,024 .. 32,768.

How memory is measured: every (N, form) runs in a FRESH Python subprocess. After importing torch and
building the inputs, the subprocess reads its peak resident set size (``resource.getrusage(...).ru_maxrss``,
the kernel's own high-water mark); after the timed loss calls it reads it again. The difference
(``loss_peak_mib``) is the extra memory the loss needed at its worst moment, whatever allocated it
(PyTorch's CPU allocator returns large blocks to the OS, so RSS follows the tensors). No tracing hooks
run during the timed calls, so the times are not distorted by the measurement.

Plain runs stop where their predicted extra memory exceeds ``--max-plain-gib`` (8 GiB): the prediction
is bytes-per-N² measured at the largest plain size so far, times N².

    .venv/bin/python benchmarks/bench_loss.py            # ~4-5 minutes on 2 idle CPU cores
    .venv/bin/python benchmarks/bench_loss.py --sizes 1024 2048 --reps 3 --out /tmp/quick.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_SIZES = [1024, 2048, 4096, 8192, 16384, 32768]
KEY = "bench_loss"


def _rss_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def worker(n: int, form: str, dim: int, chunk_size: int, reps: int, warmup: int, threads: int) -> dict:
    """Runs inside a fresh subprocess: time `reps` forward+backward passes of one loss form."""
    import torch
    import torch.nn.functional as F

    from clipmini.losses import clip_loss

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(n)
    image = F.normalize(torch.randn(n, dim, generator=g), dim=1).requires_grad_()  # [N, E]
    text = F.normalize(torch.randn(n, dim, generator=g), dim=1).requires_grad_()  # [N, E]
    logit_scale = torch.tensor(100.0, requires_grad=True)
    kw = {"chunk_size": chunk_size} if form == "chunked" else {}
    # load the BLAS/oneDNN code paths (and their workspaces) with a small call, so they are not counted
    small = min(n, 256)
    clip_loss(image[:small].detach().requires_grad_(), text[:small].detach(), logit_scale, **kw).backward()
    logit_scale.grad = None
    baseline = _rss_peak_bytes()
    times, loss_value = [], None
    for i in range(warmup + reps):
        image.grad = text.grad = logit_scale.grad = None
        start = time.perf_counter()
        loss = clip_loss(image, text, logit_scale, **kw)
        loss.backward()
        elapsed = time.perf_counter() - start
        loss_value = loss.item()
        del loss
        if i >= warmup:
            times.append(elapsed)
    peak = _rss_peak_bytes()
    return {
        "n": n,
        "form": form,
        "chunk_size": chunk_size if form == "chunked" else None,
        "reps": reps,
        "warmup": warmup,
        "times_s": [round(t, 4) for t in times],
        "median_s": round(statistics.median(times), 4),
        "baseline_rss_mib": round(baseline / 2**20, 1),
        "peak_rss_mib": round(peak / 2**20, 1),
        "loss_peak_mib": round((peak - baseline) / 2**20, 1),
        "nxn_fp32_mib": round(n * n * 4 / 2**20, 1),
        "loss": loss_value,
    }


def run_in_subprocess(n, form, args) -> dict:
    reps = args.reps if args.reps else (3 if n <= 8192 else 1)  # the big sizes cost tens of seconds a pass
    warmup = 1 if n <= 2048 else 0  # bigger sizes: the median of the timed passes (or the one pass) only
    cmd = [
        sys.executable, __file__, "--worker", "--n", str(n), "--form", form, "--dim", str(args.dim),
        "--chunk-size", str(args.chunk_size), "--reps", str(reps), "--warmup", str(warmup), "--threads", str(args.threads),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="JSON file (default benchmarks/results/<hostname>.json); other keys are kept")
    parser.add_argument("--sizes", type=int, nargs="+", default=DEFAULT_SIZES)
    parser.add_argument("--dim", type=int, default=512, help="feature width E (ViT-B/32's embed_dim)")
    parser.add_argument("--chunk-size", type=int, default=1024, help="rows of logits per chunk")
    parser.add_argument(
        "--reps", type=int, default=0, help="timed repetitions (0: 3 up to N = 8192, then 1; one pass at 32,768 takes minutes)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run (this machine has 2 cores)")
    parser.add_argument("--max-plain-gib", type=float, default=8.0, help="skip plain runs predicted to need more")
    # internal: one measurement in a fresh process
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--form", choices=["plain", "chunked"], help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args.n, args.form, args.dim, args.chunk_size, args.reps, args.warmup, args.threads)))
        return

    from clipmini.fileio import atomic_write_json

    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"{socket.gethostname()}.json"
    started, load_before = time.time(), os.getloadavg()  # other processes sharing the cores slow every run
    bytes_per_n2 = 6 * 4.0  # prior: ~6 fp32 N×N buffers alive at the worst moment; replaced by measurement
    runs, skipped = [], []
    for n in sorted(args.sizes):
        predicted_gib = bytes_per_n2 * n * n / 2**30
        if predicted_gib <= args.max_plain_gib:
            r = run_in_subprocess(n, "plain", args)
            bytes_per_n2 = max(r["loss_peak_mib"] * 2**20 / (n * n), 4.0)
            runs.append(r)
            print(f"N={n:6d} plain   {r['median_s']:8.3f} s  +{r['loss_peak_mib']:8.1f} MiB", flush=True)
        else:
            skipped.append({"n": n, "form": "plain", "predicted_gib": round(predicted_gib, 1)})
            print(f"N={n:6d} plain   skipped: predicted {predicted_gib:.1f} GiB > {args.max_plain_gib} GiB", flush=True)
        r = run_in_subprocess(n, "chunked", args)
        runs.append(r)
        print(f"N={n:6d} chunked {r['median_s']:8.3f} s  +{r['loss_peak_mib']:8.1f} MiB", flush=True)

    by = {(r["n"], r["form"]): r for r in runs}
    common = [n for n in sorted(args.sizes) if (n, "plain") in by and (n, "chunked") in by]
    summary = {}
    if common:
        n = common[-1]
        p, c = by[(n, "plain")], by[(n, "chunked")]
        summary["largest_n_both"] = {
            "n": n,
            "time_ratio_chunked_over_plain": round(c["median_s"] / p["median_s"], 3),
            "memory_ratio_chunked_over_plain": round(c["loss_peak_mib"] / max(p["loss_peak_mib"], 1e-9), 4),
            "loss_abs_diff": abs(c["loss"] - p["loss"]),
        }
    largest = max(args.sizes)
    if (largest, "chunked") in by:
        summary["largest_n_chunked"] = {k: by[(largest, "chunked")][k] for k in ("n", "median_s", "loss_peak_mib", "peak_rss_mib")}

    import torch

    record = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_s": round(time.time() - started, 1),
        "loadavg_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "machine": {"hostname": socket.gethostname(), "cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "config": {"dim": args.dim, "chunk_size": args.chunk_size, "threads": args.threads, "max_plain_gib": args.max_plain_gib,
                   "memory": "ru_maxrss delta in a fresh subprocess per (N, form)", "dtype": "float32"},
        "runs": runs,
        "skipped": skipped,
        "summary": summary,
    }
    existing = {}
    if out.exists():
        try:
            existing = json.loads(out.read_text())
        except json.JSONDecodeError:
            existing = {}
    existing[KEY] = record
    atomic_write_json(out, existing)
    print(json.dumps(summary, indent=2))
    print(f"wrote {out} [{KEY}] in {record['wall_s']} s")


if __name__ == "__main__":
    main()
