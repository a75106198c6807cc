"""Helpers shared by the benchmarks written after the first five: the machine, the results file, model FLOPs.

`clip_flops` is the FLOP counter of the CLIP towers (used by `bench_peak.py`): it is
`clipmini.scaling.clip_flops`, which the scaling chapter uses too. Nothing here imports torch at
module level, so `run_all` stays light.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"

__all__ = [
    "ROOT",
    "RESULTS_DIR",
    "machine_name",
    "default_results_path",
    "cpu_model",
    "cpu_flags",
    "memory_bytes",
    "git_commit",
    "torch_info",
    "machine_block",
    "summarize",
    "merge_into",
    "command_line",
    "clip_flops",
]


# ----------------------------------------------------------------------------------------------
# The machine and the results file
# ----------------------------------------------------------------------------------------------


def machine_name(hostname: str | None = None) -> str:
    """The hostname as a file name: characters other than letters, digits, '.', '_' and '-' become '-'.

    The five original benchmarks name their file `socket.gethostname()`; for every ordinary hostname
    (like this machine's) the two agree, and `run_all` passes `--out` to every script anyway.
    """
    name = socket.gethostname() if hostname is None else hostname
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-")
    return cleaned or "machine"


def default_results_path(quick: bool = False) -> Path:
    """`benchmarks/results/<machine>.json`; a `--quick` smoke run goes to `<machine>-quick.json`."""
    return RESULTS_DIR / f"{machine_name()}{'-quick' if quick else ''}.json"


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The instruction-set flags of the first CPU in /proc/cpuinfo (empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def memory_bytes() -> int | None:
    """Total physical memory (MemTotal in /proc/meminfo), or None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024  # reported in KiB
    except (OSError, ValueError, IndexError):
        pass
    return None


def git_commit(root: Path = ROOT) -> dict[str, Any]:
    """The checked-out commit and whether the code measured differs from it.

    Changes under ``benchmarks/results/`` do not count: a run rewrites its own results file, and a
    fresh run may start by deleting stale entries from it."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def torch_info(python: str = sys.executable) -> dict[str, Any]:
    """torch's version and default thread count, read in a fresh interpreter (the caller need not import torch)."""
    code = (
        "import json, torch; print(json.dumps({'torch': torch.__version__, 'torch_threads': torch.get_num_threads(),"
        " 'mkldnn': torch.backends.mkldnn.is_available(), 'cuda': torch.cuda.is_available()}))"
    )
    try:
        done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError, IndexError):
        return {"torch": None, "torch_threads": None}


def machine_block() -> dict[str, Any]:
    """What a reader needs to judge the numbers: CPU, cores, memory, software, load, commit, date."""
    flags = cpu_flags()
    return {
        "hostname": socket.gethostname(),
        "machine_name": machine_name(),
        "cpu_model": cpu_model(),
        "cpu_flags": sorted(f for f in flags if re.match(r"(avx|amx|fma|sse4)", f)),  # the ones matmuls use
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(memory_bytes() / 2**30, 1) if memory_bytes() else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        **torch_info(),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        **git_commit(),
    }


def summarize(values: list[float]) -> dict[str, Any]:
    """Median and spread of repeated measurements (the runs are kept too)."""
    if not values:
        raise ValueError("summarize needs at least one measurement; got none")
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": list(values)}


def merge_into(path: Path, key: str, record: Any) -> None:
    """Set `key` in the JSON object at `path` (other keys kept), written atomically."""
    from clipmini.fileio import atomic_write_json

    path = Path(path)
    data: dict = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise ValueError(f"{path} exists but is not JSON; refusing to overwrite it") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} holds a JSON {type(data).__name__}, not an object of benchmark results")
    data[key] = record
    atomic_write_json(path, data)


def command_line(argv: list[str] | None = None) -> str:
    """This process's command as a reader would type it from the repository root."""
    import shlex

    argv = sys.argv if argv is None else argv
    exe = Path(sys.executable)
    try:
        shown_exe = str(exe.relative_to(ROOT))  # ".venv/bin/python"
    except ValueError:
        shown_exe = exe.name
    script = argv[0]
    try:
        script = str(Path(script).resolve().relative_to(ROOT))
    except (ValueError, OSError):
        pass
    return " ".join(shlex.quote(a) for a in [shown_exe, script, *argv[1:]])


# ----------------------------------------------------------------------------------------------
# Model FLOPs
# ----------------------------------------------------------------------------------------------


def clip_flops(config, batch: int, text_length: int | None = None) -> dict[str, int]:
    """Model FLOPs of one CLIP forward pass and one training step, by term: `clipmini.scaling.clip_flops`.

    The count lives in the package (the scaling chapter uses it too); imported here on first use, so
    that importing this module stays free of torch.
    """
    from clipmini.scaling import clip_flops as count

    return count(config, batch, text_length)
