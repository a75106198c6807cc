"""Cold and warm speed of clipmini's tokenizer against ``open_clip.tokenize`` on the 80,000 ImageNet prompts.

Cold = a fresh Python process: import, vocabulary load, tokenize all prompts once. The two sides run
interleaved, several times each; we report median and spread, check once that the ids are identical,
and merge the figures into ``benchmarks/results/<hostname>.json`` under the key "tokenizer".

    .venv/bin/python benchmarks/bench_tokenizer.py            # 3 cold runs per side
    .venv/bin/python benchmarks/bench_tokenizer.py --reps 5 --out /tmp/bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIDES = ("clipmini", "open_clip")


def _child(side: str, prompts_path: str, save: str | None, warm: int) -> None:
    """Run in a fresh process: time import + load + tokenize, then ``warm`` repeats; print JSON."""
    prompts = json.loads(Path(prompts_path).read_text(encoding="utf-8"))
    t0 = time.perf_counter()
    if side == "clipmini":
        import clipmini.tokenizer as module

        t1 = time.perf_counter()
        tokenizer = module.default_tokenizer()
        t2 = time.perf_counter()

        def run():
            return tokenizer(prompts)
    else:
        import open_clip  # builds its tokenizer (vocabulary load) at import

        t1 = t2 = time.perf_counter()

        def run():
            return open_clip.tokenize(prompts)

    tokens = run()
    t3 = time.perf_counter()
    cold_done_epoch = time.time()  # the parent turns this into "process start -> tokens ready"
    warm_s = []
    for _ in range(warm):
        start = time.perf_counter()
        run()
        warm_s.append(time.perf_counter() - start)
    if save:
        import numpy as np

        np.save(save, tokens.numpy())
    print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "tokenize_s": t3 - t2, "cold_s": t3 - t0,
                      "warm_s": warm_s, "shape": list(tokens.shape), "cold_done_epoch": cold_done_epoch}))


def _spawn(side: str, prompts_path: Path, save: Path | None, warm: int) -> dict:
    command = [sys.executable, __file__, "--child", side, "--prompts", str(prompts_path), "--warm", str(warm)]
    if save is not None:
        command += ["--save", str(save)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    spawned = time.time()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{side} child failed:\n{result.stderr}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    # interpreter start + reading the prompts + import + load + tokenize; warm repeats and saving excluded
    figures["process_wall_s"] = figures.pop("cold_done_epoch") - spawned
    return figures


def _summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def _write_merged(out: Path, key: str, figures: dict) -> None:
    from clipmini.fileio import atomic_write_json

    merged: dict = {}
    if out.is_file():
        try:
            merged = json.loads(out.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise SystemExit(f"{out} exists but is not JSON; refusing to overwrite it") from None
    merged[key] = figures
    atomic_write_json(out, merged)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3, help="cold runs per side (interleaved)")
    parser.add_argument("--warm", type=int, default=2, help="warm repeats, in the first run of each side")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N prompts (quick checks)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / f"{socket.gethostname()}.json")
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--prompts", help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.prompts, args.save, args.warm)
        return
    if args.reps < 1:
        parser.error("--reps must be >= 1")

    import numpy as np
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    prompts = [template(name) for name in IMAGENET_CLASSNAMES for template in OPENAI_IMAGENET_TEMPLATES]
    prompts = prompts[: args.limit] if args.limit else prompts
    print(f"{len(prompts):,} prompts ({len(OPENAI_IMAGENET_TEMPLATES)} templates x {len(IMAGENET_CLASSNAMES)} classes)")

    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory() as folder:
        prompts_path = Path(folder) / "prompts.json"
        prompts_path.write_text(json.dumps(prompts), encoding="utf-8")
        for rep in range(args.reps):
            order = SIDES if rep % 2 == 0 else SIDES[::-1]  # interleave, alternating who goes first
            for side in order:
                save = Path(folder) / f"{side}.npy" if rep == 0 else None
                figures = _spawn(side, prompts_path, save, args.warm if rep == 0 else 0)
                runs[side].append(figures)
                print(f"  run {rep + 1}/{args.reps} {side:9s} cold {figures['cold_s']:6.2f} s "
                      f"(import {figures['import_s']:.2f}, load {figures['load_s']:.2f}, "
                      f"tokenize {figures['tokenize_s']:.2f}; process {figures['process_wall_s']:.2f})", flush=True)
        ours, theirs = (np.load(Path(folder) / f"{side}.npy") for side in SIDES)
    identical = ours.shape == theirs.shape and bool(np.array_equal(ours, theirs))
    assert identical, "clipmini and open_clip produced different token ids"

    report: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "n_prompts": len(prompts),
        "reps": args.reps,
        "identical_ids": identical,
    }
    for side in SIDES:
        report[side] = {name: _summary([r[name] for r in runs[side]])
                        for name in ("cold_s", "process_wall_s", "import_s", "load_s", "tokenize_s")}
        warm = runs[side][0]["warm_s"]
        report[side]["warm_s"] = _summary(warm) if warm else None
    ratio = report["open_clip"]["cold_s"]["median"] / report["clipmini"]["cold_s"]["median"]
    ratio_process = report["open_clip"]["process_wall_s"]["median"] / report["clipmini"]["process_wall_s"]["median"]
    tokenize_ratio = report["open_clip"]["tokenize_s"]["median"] / report["clipmini"]["tokenize_s"]["median"]
    report["speedup_cold"] = ratio
    report["speedup_cold_process"] = ratio_process
    report["speedup_tokenize_only_cold"] = tokenize_ratio
    if args.warm:
        warm_ours = statistics.median(runs["clipmini"][0]["warm_s"])
        warm_theirs = statistics.median(runs["open_clip"][0]["warm_s"])
        report["warm_prompts_per_s"] = {"clipmini": len(prompts) / warm_ours, "open_clip": len(prompts) / warm_theirs}
        report["speedup_warm"] = warm_theirs / warm_ours

    for side in SIDES:
        cold = report[side]["cold_s"]
        print(f"{side:9s} cold median {cold['median']:.2f} s (min {cold['min']:.2f}, max {cold['max']:.2f})")
    print(f"identical ids: {identical}")
    print(f"cold speedup (import + load + tokenize): {ratio:.1f}x; whole process: {ratio_process:.1f}x; "
          f"tokenize step alone: {tokenize_ratio:.1f}x")
    if args.warm:
        warm_rates = report["warm_prompts_per_s"]
        print(f"warm: clipmini {warm_rates['clipmini']:,.0f} prompts/s, open_clip {warm_rates['open_clip']:,.0f} "
              f"prompts/s ({report['speedup_warm']:.1f}x)")
    _write_merged(args.out, "tokenizer", report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
