"""How fast the caption world makes (image, caption) pairs on one CPU thread, at 32, 64 and 96 pixels.

    .venv/bin/python benchmarks/bench_data.py                 # writes benchmarks/results/<hostname>.json
    .venv/bin/python benchmarks/bench_data.py --sizes 32 --reps 7 --out /tmp/data.json

Each rep draws `--batches` batches of `--batch-size` pairs (images rendered, normalized and turned into
a torch tensor; captions written) with `torch.set_num_threads(1)`. Reported per size: the median and
spread (min, max) of pairs per second over the reps, both by wall clock and by this process's CPU time
(the CPU-time figure is the one to trust on a shared machine), and the captions-only rate. The result
is merged into the JSON file under the key "bench_data" (other benchmarks' keys are kept), written atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path

import torch

from clipmini.data import CaptionWorld, WorldConfig
from clipmini.fileio import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent


def _exe() -> str:
    """The interpreter as the reader would type it (".venv/bin/python" inside the repository)."""
    try:
        return str(Path(sys.executable).relative_to(ROOT))
    except ValueError:
        return Path(sys.executable).name


def measure(world: CaptionWorld, batch_size: int, batches: int, reps: int, captions_only: bool = False) -> dict:
    make = world.captions if captions_only else world.batch
    make(0, batch_size)  # warm-up: builds the per-resolution textures and glyphs
    walls, cpus = [], []
    index = 1
    for _ in range(reps):
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(batches):
            make(index, batch_size)
            index += 1
        walls.append(batch_size * batches / (time.perf_counter() - w0))
        cpus.append(batch_size * batches / max(time.process_time() - c0, 1e-9))
    return {
        "pairs_per_s_wall": {"median": statistics.median(walls), "min": min(walls), "max": max(walls)},
        "pairs_per_s_cpu": {"median": statistics.median(cpus), "min": min(cpus), "max": max(cpus)},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 96], help="image sizes to time")
    parser.add_argument("--batch-size", type=int, default=256, help="pairs per batch")
    parser.add_argument("--batches", type=int, default=8, help="batches per rep")
    parser.add_argument("--reps", type=int, default=5, help="timed reps per size")
    parser.add_argument("--text-rate", type=float, default=0.0, help="WorldConfig.text_rate (written words cost a little)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / f"{socket.gethostname()}.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    results = {}
    for size in args.sizes:
        world = CaptionWorld(WorldConfig(image_size=size, text_rate=args.text_rate))
        batches = max(1, args.batches * 32 // size) if size > 32 else args.batches  # similar time per rep
        r = measure(world, args.batch_size, batches, args.reps)
        r["captions_only"] = measure(world, args.batch_size, batches, args.reps, captions_only=True)["pairs_per_s_cpu"]
        r["pairs_per_rep"] = args.batch_size * batches
        results[str(size)] = r
        wall, cpu = r["pairs_per_s_wall"], r["pairs_per_s_cpu"]
        print(
            f"{size:>4} px: {cpu['median']:>8.0f} pairs/s CPU time (min {cpu['min']:.0f}, max {cpu['max']:.0f}); "
            f"{wall['median']:>8.0f} wall (min {wall['min']:.0f}, max {wall['max']:.0f}); "
            f"captions only {r['captions_only']['median']:.0f}/s"
        )
    entry = {
        "command": " ".join([_exe(), *sys.argv]),
        "threads": 1,
        "batch_size": args.batch_size,
        "reps": args.reps,
        "text_rate": args.text_rate,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "sizes": results,
    }
    data = {}
    if args.out.exists():
        try:
            data = json.loads(args.out.read_text())
        except json.JSONDecodeError:
            data = {}
    data["bench_data"] = entry
    atomic_write_text(args.out, json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out}")
    return entry


if __name__ == "__main__":
    main()
