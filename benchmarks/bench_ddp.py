"""Training throughput of the real trainer at world size 1 and 2 (DDP, gloo, CPU).

Each run is `python -m clipmini.train --config params/train-tiny.yaml` (world size 1) or the same under
`torchrun --standalone --nproc_per_node=2` (world size 2), with a short step count, no evaluation, and
a temporary `out_dir`. The trainer logs samples/s (global batch / wall time) every `--log-every` steps
to `metrics.jsonl`; the first window (first-step costs) is dropped and we report the median and spread
of the rest, and the ratio world-2 / world-1. The runs alternate, so drift in machine load hits both.

Both world sizes get the same cores: world size 1 runs with `--threads` torch threads, each of the 2
processes with half as many. On a 2-core machine the two processes share the cores that the single
process had to itself, so the ratio is not a scaling figure: it weighs DDP's costs (gradient
all-reduce, the features' all-gather, two copies of the model and data pipeline) against how well one
process spreads small matmuls over its intra-op threads. On a loaded machine a multi-threaded single
process suffers most (each parallel region waits for its slowest thread), which favours world size 2.

    .venv/bin/python benchmarks/bench_ddp.py                     # ~2-3 minutes on 2 idle cores
    .venv/bin/python benchmarks/bench_ddp.py --quick --out /tmp/ddp.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    from benchmarks.common import ROOT, command_line, default_results_path, merge_into, summarize
except ModuleNotFoundError:  # run as a script: python benchmarks/bench_ddp.py
    from common import ROOT, command_line, default_results_path, merge_into, summarize

KEY = "bench_ddp"
METRICS_FILE = "metrics.jsonl"  # clipmini.train writes its log here, in out_dir


def trainer_command(world_size: int, config: str, out_dir: Path, steps: int, batch_size: int, log_every: int,
                    threads: int, model: str | None) -> list[str]:
    """The command line of one training run (`torchrun` for world size > 1)."""
    flags = [
        "--config", config, "--steps", str(steps), "--batch_size", str(batch_size), "--log_every", str(log_every),
        "--out_dir", str(out_dir), "--device", "cpu", "--threads", str(threads),
        "--eval_every", "0", "--eval_tasks", "--checkpoint_every", "0", "--warmup_steps", "1", "--no-progress",
    ]
    if model:
        flags += ["--model", model]
    if world_size == 1:
        return [sys.executable, "-m", "clipmini.train", *flags]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world_size}",
            "-m", "clipmini.train", *flags]


def read_rates(out_dir: Path) -> list[float]:
    """samples/s of each logged window, in order, from the trainer's JSONL log."""
    path = out_dir / METRICS_FILE
    if not path.is_file():
        raise RuntimeError(f"the trainer wrote no {METRICS_FILE} in {out_dir}")
    rates = []
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            if "samples_per_s" in entry and not entry.get("skipped"):
                rates.append(float(entry["samples_per_s"]))
    if not rates:
        raise RuntimeError(f"{path} has no samples_per_s entries; has clipmini.train's log format changed?")
    return rates


def run_once(command: list[str], out_dir: Path, threads: int, timeout: float) -> dict:
    # The trainer's --threads sets torch's pool; OpenMP's variable says the same (torchrun would set 1 and warn).
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"training run failed (exit {done.returncode}): {shlex.join(command)}\n{done.stderr[-3000:]}")
    rates = read_rates(out_dir)
    return {"window_samples_per_s": rates, "wall_s": round(wall, 2)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="params/train-tiny.yaml", help="the trainer's YAML profile")
    parser.add_argument("--model", default=None, help="override the profile's model (a clipmini.config name)")
    parser.add_argument("--steps", type=int, default=17, help="training steps per run")
    parser.add_argument("--batch-size", type=int, default=256, help="global batch (split over the processes)")
    parser.add_argument("--log-every", type=int, default=4, help="steps per logged samples/s window")
    parser.add_argument("--reps", type=int, default=2, help="runs per world size, alternating")
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads for world size 1; each of n processes gets threads // n (at least 1)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds before a run is abandoned")
    parser.add_argument("--quick", action="store_true", help="batch 64, 7 steps, one run each: ~1 minute")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/results/<machine>.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.batch_size, args.log_every, args.reps = 7, 64, 2, 1
    if args.steps < 2 * args.log_every:
        parser.error(f"--steps ({args.steps}) must be at least 2 x --log-every ({args.log_every}): the first window is dropped")
    if args.reps < 1 or args.threads < 1:
        parser.error("--reps and --threads must be >= 1")
    for n in args.world_sizes:
        if n < 1 or args.batch_size % n:
            parser.error(f"--batch-size {args.batch_size} must split evenly over world size {n}")
    out = args.out or default_results_path()
    cores = os.cpu_count() or 1

    runs: dict[int, list[dict]] = {n: [] for n in args.world_sizes}
    commands: dict[int, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench_ddp_") as tmp:
        for rep in range(args.reps):
            order = args.world_sizes if rep % 2 == 0 else args.world_sizes[::-1]
            for n in order:
                out_dir = Path(tmp) / f"ws{n}-rep{rep}"
                threads = max(1, args.threads // n)
                command = trainer_command(n, args.config, out_dir, args.steps, args.batch_size, args.log_every,
                                          threads, args.model)
                commands[n] = shlex.join(
                    ["python" if c == sys.executable else ("<tmp>/" + out_dir.name if c == str(out_dir) else c) for c in command]
                )
                r = run_once(command, out_dir, threads, args.timeout)
                r["threads_per_process"] = threads
                runs[n].append(r)
                kept = r["window_samples_per_s"][1:]
                print(f"world size {n} (rep {rep + 1}/{args.reps}, {threads} thread(s) each): "
                      f"{statistics.median(kept):8.1f} samples/s over {len(kept)} windows; run took {r['wall_s']:.0f} s",
                      flush=True)

    per_size = {}
    for n, rs in runs.items():
        kept = [rate for r in rs for rate in r["window_samples_per_s"][1:]]
        per_size[str(n)] = {
            "processes": n,
            "threads_per_process": rs[0]["threads_per_process"],
            "samples_per_s": summarize(kept),
            "runs": rs,
            "command": commands[n],
        }
    report = {
        "command": command_line([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": args.config,
        "model": args.model,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "log_every": args.log_every,
        "reps": args.reps,
        "cores": cores,
        "backend": "gloo",
        "note": (f"the processes share this machine's {cores} core(s), with the same total threads at every world "
                 "size: the ratio weighs DDP's costs against one process's intra-op threading, it is not a scaling figure"),
        "world_sizes": per_size,
    }
    if "1" in per_size and "2" in per_size:
        report["ratio_2_over_1"] = per_size["2"]["samples_per_s"]["median"] / per_size["1"]["samples_per_s"]["median"]
        print(f"samples/s, 2 processes / 1 process: {report['ratio_2_over_1']:.3f} ({report['note']})")
    merge_into(out, KEY, report)
    print(f"wrote {out} [{KEY}]")
    return report


if __name__ == "__main__":
    main()
