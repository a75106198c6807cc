"""Run every benchmark, one after the other, each in a fresh process, into one results file.

    make bench                                   # = .venv/bin/python -m benchmarks.run_all (~15 minutes on 2 idle cores)
    .venv/bin/python -m benchmarks.run_all --quick            # smoke run, ~4 minutes, into <machine>-quick.json
    .venv/bin/python -m benchmarks.run_all --list             # the commands, without running them
    .venv/bin/python -m benchmarks.run_all --only peak ddp --out /tmp/bench.json

Results go to `benchmarks/results/<machine>.json` (`<machine>` = the hostname, made file-safe). Every
script merges its own key into that file; this runner adds a `machine` block (CPU, cores, memory,
torch and its threads, Python, date, load average at start and end, git commit) and a `run_all` block
with, per benchmark, the exact command, its exit status, wall time and the keys it wrote. A `--quick`
run writes to `<machine>-quick.json` so that smoke figures never mix with a real run's. Benchmarks
never run in parallel (they would measure each other). A failing benchmark does not stop the others;
the exit status is 1 if any failed. The summary table at the end shows the headline ratios.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

try:
    from benchmarks.common import ROOT, cpu_flags, default_results_path, machine_block
except ModuleNotFoundError:  # run as a script: python benchmarks/run_all.py
    from common import ROOT, cpu_flags, default_results_path, machine_block

GOAL_TOKENIZER_PROMPTS = 80_000  # the tokenizer goal (cold start >= 3x open_clip) is on 1,000 classes x 80 templates

__all__ = ["Benchmark", "plan", "run_benchmark", "headlines", "format_table", "main"]


@dataclass(frozen=True)
class Benchmark:
    """One benchmark script and the arguments of a full and of a `--quick` run."""

    name: str  # what --only/--skip and the run_all block call it
    script: str  # path relative to the repository root (or absolute)
    args: tuple[str, ...] = ()  # a full run's arguments (without --out)
    quick_args: tuple[str, ...] | None = ()  # --quick's arguments; None = not part of a quick run
    what: str = ""  # one line for --list
    # "merge": the script merges its key(s) into the file named by --out (all but one do);
    # "document": it writes a whole JSON document to --out, which run_all merges under `key`.
    writes: str = "merge"
    key: str | None = None
    timeout: float | None = None  # seconds; None = the runner's --timeout

    def arguments(self, quick: bool) -> tuple[str, ...] | None:
        return self.quick_args if quick else self.args


def plan(flags: set[str] | None = None) -> list[Benchmark]:
    """The benchmarks in running order. `flags` are the CPU's (bf16 matmul units decide one entry)."""
    flags = cpu_flags() if flags is None else flags
    bf16_native = bool({"avx512_bf16", "amx_bf16"} & flags)
    # Without bf16 matrix units the CPU emulates bf16 matmuls: small-vit bf16 then takes about a minute
    # a step, so it is measured only where the hardware has them; tiny-vit bf16 runs with fewer steps.
    bf16_models = ("tiny-vit", "small-vit") if bf16_native else ("tiny-vit",)
    return [
        Benchmark("tokenizer", "benchmarks/bench_tokenizer.py", (), ("--reps", "1", "--warm", "1", "--limit", "8000"),
                  "cold + warm tokenization of the 80,000 ImageNet prompts, clipmini vs open_clip.tokenize"),
        Benchmark("data", "benchmarks/bench_data.py", (), ("--sizes", "32", "--reps", "2", "--batches", "2"),
                  "caption-world (image, caption) pairs/s at 32, 64, 96 px, one thread"),
        Benchmark("zeroshot", "benchmarks/bench_zeroshot.py", (), ("--images", "64", "--reps", "2"),
                  "zero-shot images/s with cached class prototypes vs rebuilt per batch (CIFAR-10, 18 templates)"),
        Benchmark("zeroshot_imagenet_templates", "benchmarks/bench_zeroshot.py", ("--templates", "imagenet"), None,
                  "the same with the 80 ImageNet templates"),
        Benchmark("loss", "benchmarks/bench_loss.py", (), ("--sizes", "1024", "2048", "--reps", "1"),
                  "plain vs chunked InfoNCE, time and peak memory, N = 1,024 .. 32,768"),
        Benchmark("train_step_fp32", "benchmarks/bench_train_step.py", ("--models", "tiny-vit", "small-vit", "--precisions", "fp32"),
                  ("--quick", "--precisions", "fp32"),
                  "training step samples/s vs open_clip's same architecture, fp32"),
        Benchmark("train_step_bf16", "benchmarks/bench_train_step.py",
                  ("--models", *bf16_models, "--precisions", "bf16", "--reps", "5", "--steps", "2"), None,
                  "the same under bf16 autocast"),
        Benchmark("train_loop", "benchmarks/bench_train_loop.py", ("--models", "tiny-vit", "--reps", "2", "--steps", "6"),
                  ("--models", "tiny-vit", "--batch_size", "64", "--steps", "2", "--reps", "1"),
                  "the trainer's loop vs a bare step on a fixed batch", writes="document", key="train_loop"),
        Benchmark("peak", "benchmarks/bench_peak.py", (), ("--quick",),
                  "fraction of the fp32 matmul peak a clipmini training step reaches"),
        Benchmark("ddp", "benchmarks/bench_ddp.py", (), ("--quick",),
                  "the trainer's samples/s at world size 1 and 2 (gloo, CPU)"),
    ]


# ----------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------


def _shown(arg: str) -> str:
    """An argument as a reader types it from the repository root (paths inside it made relative)."""
    if arg == sys.executable:
        try:
            return str(Path(arg).relative_to(ROOT))
        except ValueError:
            return "python"
    path = Path(arg)
    if path.is_absolute():
        try:
            return str(path.relative_to(ROOT))
        except ValueError:
            pass
    return arg


def _load(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise SystemExit(f"{path} exists but is not JSON; move it away or pass another --out") from None
    if not isinstance(data, dict):
        raise SystemExit(f"{path} holds a JSON {type(data).__name__}, not an object of results; pass another --out")
    return data


def _write(path: Path, data: dict) -> None:
    from clipmini.fileio import atomic_write_json

    atomic_write_json(path, data)


def _command(bench: Benchmark, quick: bool, out: Path) -> tuple[Path, Path | None, list[str]]:
    """The script, the temporary document path (for writes="document"), and the command line."""
    script = Path(bench.script) if Path(bench.script).is_absolute() else ROOT / bench.script
    document = Path(str(out) + f".{bench.name}.tmp") if bench.writes == "document" else None
    return script, document, [sys.executable, str(script), *(bench.arguments(quick) or ()), "--out", str(document or out)]


def run_benchmark(bench: Benchmark, quick: bool, out: Path, timeout: float, echo: Callable[[str], None] = print) -> dict:
    """Run one benchmark in a fresh process (output streamed through `echo`); return its record."""
    args = bench.arguments(quick)
    assert args is not None, f"{bench.name} is not part of this run"
    script, document, command = _command(bench, quick, out)
    record: dict[str, Any] = {"command": " ".join(shlex.quote(_shown(a)) for a in command), "what": bench.what}
    if not script.is_file():
        return {**record, "returncode": None, "wall_s": 0.0, "keys": [], "error": f"{bench.script} does not exist"}
    before = _load(out)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    tail: collections.deque[str] = collections.deque(maxlen=40)

    def pump(stream) -> None:  # echo the script's output as it comes, keeping the end for the record
        for line in stream:
            echo(f"  | {line.rstrip()}")
            tail.append(line.rstrip())

    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group, so a timeout stops its children too
    reader = threading.Thread(target=pump, args=(proc.stdout,), daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except BaseException:  # Ctrl-C: do not leave the benchmark running
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    reader.join(timeout=10)
    wall = time.perf_counter() - start
    record.update(returncode=proc.returncode, wall_s=round(wall, 1))
    if timed_out:
        record["error"] = f"stopped after {timeout:.0f} s (--timeout)"
    elif proc.returncode != 0:
        record["error"] = "\n".join(tail)[-3000:]

    after = _load(out)
    if document is not None:
        if proc.returncode == 0 and not timed_out:
            try:
                after[bench.key or bench.name] = json.loads(document.read_text(encoding="utf-8"))
                _write(out, after)
            except (OSError, json.JSONDecodeError) as err:
                record["error"] = f"wrote no readable JSON document to --out: {err}"
                record["returncode"] = record["returncode"] or 1
        document.unlink(missing_ok=True)
    record["keys"] = sorted(k for k in after if after.get(k) != before.get(k))
    if proc.returncode == 0 and not timed_out and not record["keys"] and "error" not in record:
        record["error"] = "exited 0 but wrote no results"
    return record


def _failed(record: dict) -> bool:
    return record.get("returncode") != 0 or "error" in record


# ----------------------------------------------------------------------------------------------
# The summary
# ----------------------------------------------------------------------------------------------


def _row(benchmark: str, figure: str, value: float | None, unit: str = "x", goal: float | None = None) -> dict:
    met = None if goal is None or value is None else bool(value >= goal)
    return {"benchmark": benchmark, "figure": figure, "value": value, "unit": unit, "goal": goal, "met": met}


def headlines(data: dict) -> list[dict]:
    """The headline figures of a results document, one row each (missing ones are simply absent).

    Goals: tokenizer cold start >= 3x open_clip's; fp32 training step >= 1.0x open_clip's.
    """
    rows: list[dict] = []
    written = None  # train_step keys of the latest run_all, when known
    benchmarks = (data.get("run_all") or {}).get("benchmarks") or {}
    if benchmarks:
        written = {k for b in benchmarks.values() for k in b.get("keys", []) if k.startswith("train_step/")}

    def guarded(build: Callable[[], None]) -> None:
        try:
            build()
        except (KeyError, TypeError, ValueError, ZeroDivisionError, StopIteration, AttributeError):
            pass  # a section in an unexpected layout is left out of the summary, not fatal

    def tokenizer() -> None:
        t = data["tokenizer"]
        # The goal is set on the 80,000 ImageNet prompts; a --quick run's fewer prompts leave the import dominant.
        goal = 3.0 if t["n_prompts"] >= GOAL_TOKENIZER_PROMPTS else None
        rows.append(_row("tokenizer", f"cold start, {t['n_prompts']:,} prompts (open_clip / clipmini time)", t["speedup_cold"], goal=goal))
        if "speedup_warm" in t:
            rows.append(_row("tokenizer", "warm tokenization (open_clip / clipmini time)", t["speedup_warm"]))

    def train_step() -> None:
        keys = sorted(k for k in data if k.startswith("train_step/"))
        if written:  # only this run's train_step entries (the file may hold older ones, e.g. other batch sizes)
            keys = [k for k in keys if k in written]
        for key in keys:
            r = data[key]
            goal = 1.0 if r["precision"] == "fp32" and not key.endswith("/no-trim") else None
            label = f"{r['model']} {r['precision']} b{r['batch']}" + (" no-trim" if key.endswith("/no-trim") else "")
            ratio = next(r[k] for k in ("ratio_paired_median", "ratio_median", "ratio_of_medians") if k in r)
            rows.append(_row("train_step", f"{label}: clipmini / open_clip samples/s", ratio, goal=goal))

    def loss() -> None:
        s = data["bench_loss"]["summary"]
        both = s["largest_n_both"]
        rows.append(_row("loss", f"N={both['n']:,}: chunked / plain time", both["time_ratio_chunked_over_plain"]))
        rows.append(_row("loss", f"N={both['n']:,}: chunked / plain peak memory", both["memory_ratio_chunked_over_plain"]))

    def zeroshot() -> None:
        for key, r in sorted(data["bench_zeroshot"].items()):
            rows.append(_row("zeroshot", f"{key}: cached / rebuilt prototypes images/s", r["speedup_cached_over_rebuild"]["median"]))

    def bench_data() -> None:
        for size, r in sorted(data["bench_data"]["sizes"].items(), key=lambda kv: int(kv[0])):
            rows.append(_row("data", f"{size} px pairs/s (CPU time, 1 thread)", r["pairs_per_s_cpu"]["median"], unit="/s"))

    def peak() -> None:
        p = data["bench_peak"]
        rows.append(_row("peak", f"fp32 matmul {p['matmul']['size']}: TFLOP/s", p["matmul"]["peak_tflops"], unit="TFLOP/s"))
        for name, r in p["models"].items():
            rows.append(_row("peak", f"{name} b{r['batch']} train step: fraction of matmul peak", r["fraction_of_peak"], unit="%"))

    def ddp() -> None:
        rows.append(_row("ddp", "samples/s, 2 processes / 1 process (same cores)", data["bench_ddp"]["ratio_2_over_1"]))

    def train_loop() -> None:
        for r in data["train_loop"]["results"]:
            rows.append(_row("train_loop", f"{r['model']} b{r['batch_size']}: loop / bare step", r["loop_over_bare"]))

    for build in (tokenizer, train_step, loss, zeroshot, bench_data, peak, ddp, train_loop):
        guarded(build)
    return rows


def format_table(rows: list[dict]) -> str:
    """The headline rows as aligned text."""
    if not rows:
        return "(no results)"

    def value(r: dict) -> str:
        v = r["value"]
        if v is None:
            return "-"
        if r["unit"] == "%":
            return f"{100 * v:.1f}%"
        if r["unit"] == "x":
            return f"{v:.3g}x"
        return f"{v:,.4g} {r['unit']}" if v < 1000 else f"{v:,.0f} {r['unit']}"

    def goal(r: dict) -> str:
        if r["goal"] is None:
            return ""
        return f">= {r['goal']:g}x: " + ("met" if r["met"] else "NOT met")

    lines = [(r["benchmark"], r["figure"], value(r), goal(r)) for r in rows]
    widths = [max(len(line[i]) for line in lines + [("benchmark", "figure", "value", "goal")]) for i in range(4)]
    header = ("benchmark", "figure", "value", "goal")
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None, benchmarks: list[Benchmark] | None = None) -> int:
    """Run the benchmarks (`benchmarks` replaces the plan, for tests); return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="each script's smoke settings; results go to <machine>-quick.json")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default benchmarks/results/<machine>[-quick].json)")
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME", help="run only these benchmarks")
    parser.add_argument("--skip", nargs="+", default=[], metavar="NAME", help="leave these benchmarks out")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per benchmark before it is stopped (default 1800; --quick 600)")
    parser.add_argument("--list", action="store_true", help="print the commands and exit")
    args = parser.parse_args(argv)

    full_plan = plan() if benchmarks is None else list(benchmarks)
    names = [b.name for b in full_plan]
    unknown = [n for n in (args.only or []) + args.skip if n not in names]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(names)}")
    chosen = [b for b in full_plan if (args.only is None or b.name in args.only) and b.name not in args.skip
              and b.arguments(args.quick) is not None]
    out = (args.out or default_results_path(args.quick)).resolve()
    timeout = args.timeout or (600.0 if args.quick else 1800.0)

    if args.list:
        for b in chosen:
            print(f"{b.name:<28} {shlex.join([_shown(a) for a in _command(b, args.quick, out)[2]])}")
            print(f"{'':<28} {b.what}")
        return 0
    if benchmarks is None:
        scripts = {Path(b.script).name for b in full_plan}
        for path in sorted((ROOT / "benchmarks").glob("bench_*.py")):
            if path.name not in scripts:
                print(f"note: benchmarks/{path.name} is not in run_all's plan and does not run")

    out.parent.mkdir(parents=True, exist_ok=True)
    data = _load(out)
    machine = machine_block()
    started = time.time()
    run_record: dict[str, Any] = {"quick": args.quick, "status": "running", "benchmarks": {}}
    data["machine"], data["run_all"] = machine, run_record
    _write(out, data)
    print(f"{len(chosen)} benchmark(s) into {out}; {machine['cpu_model']}, {machine['cores']} cores, "
          f"load {machine['loadavg_start']}", flush=True)

    records: dict[str, dict] = {}
    for i, bench in enumerate(chosen, 1):
        print(f"[{i}/{len(chosen)}] {bench.name}: {bench.what}", flush=True)
        record = run_benchmark(bench, args.quick, out, bench.timeout or timeout)
        records[bench.name] = record
        status = "FAILED" if _failed(record) else "ok"
        print(f"[{i}/{len(chosen)}] {bench.name}: {status} in {record['wall_s']:.0f} s", flush=True)
        data = _load(out)  # the script has just merged its key(s)
        data.setdefault("run_all", run_record)["benchmarks"] = records
        data["machine"] = machine
        _write(out, data)

    failed = [name for name, r in records.items() if _failed(r)]
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    data = _load(out)
    data["machine"] = machine
    data["run_all"] = {**run_record, "status": "failed" if failed else "ok", "failed": failed,
                       "wall_s": round(time.time() - started, 1), "benchmarks": records}
    _write(out, data)

    print()
    print(format_table(headlines(data)))
    print(f"\nwrote {out} in {data['run_all']['wall_s'] / 60:.1f} min; load average {machine['loadavg_start']} -> {machine['loadavg_end']}")
    if failed:
        for name in failed:
            print(f"FAILED {name}: {records[name].get('error', '')[-600:]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
