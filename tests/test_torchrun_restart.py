"""A worker killed mid-run: `torchrun --max-restarts=1` restarts the group, which resumes from the last
complete checkpoint and ends with the weights of an uninterrupted run, bit for bit (CPU, gloo).

What "no lost or repeated steps" means here: the steps after the last checkpoint (ckpt-000003) were
computed by the killed attempt and are computed again by the restarted one; the log keeps each step
once (the restarted run rewrites it up to the checkpoint), and the final weights and optimizer state
equal those of a run that was never interrupted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from clipmini.checkpoint import list_checkpoints

STEPS, CHECKPOINT_EVERY, KILL_AT = 8, 3, 4  # rank 1 dies before its 5th update (step index 4)

# The trainer's own entry point, with a fault: on the FIRST attempt only (torchrun counts attempts in
# TORCHELASTIC_RESTART_COUNT), rank 1 SIGKILLs itself just before optimizer step KILL_AT. Every rank
# notes the index of each step it takes, per attempt. The optimizer's step count is restored from the
# checkpoint, so the index is the run's global step.
WORKER = """
import os, signal, sys
from pathlib import Path

from torch.optim.optimizer import register_optimizer_step_pre_hook

from clipmini.train import main

KILL_AT = int(os.environ.get("CLIPMINI_KILL_AT", "-1"))
MARKS = Path(os.environ["CLIPMINI_MARKS"])
RANK = int(os.environ["RANK"])
ATTEMPT = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def before_step(optimizer, args, kwargs):
    state = optimizer.state.get(optimizer.param_groups[0]["params"][0], {})
    step = int(state["step"]) if "step" in state else 0
    with open(MARKS / f"attempt{ATTEMPT}-rank{RANK}.txt", "a") as f:
        f.write(f"{step}\\n")
    if RANK == 1 and ATTEMPT == 0 and step == KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)


register_optimizer_step_pre_hook(before_step)
sys.exit(main())
"""


def _run(tmp_path: Path, name: str, kill_at: int) -> tuple[subprocess.CompletedProcess, Path, Path]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out, marks = tmp_path / name, tmp_path / f"{name}-marks"
    marks.mkdir()
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1",
        "--monitor-interval=0.2", str(script),
        "--model", "tiny-vit", "--model_overrides", "{vision: {layers: 1}, text: {layers: 1}}",
        "--steps", str(STEPS), "--checkpoint_every", str(CHECKPOINT_EVERY), "--keep_checkpoints", "5",
        "--batch_size", "16", "--lr", "1e-3", "--warmup_steps", "1", "--log_every", "1", "--eval_tasks", "--no-progress",
        "--device", "cpu", "--threads", "1", "--data_workers", "0", "--out_dir", str(out),
        "--resume", "true",  # a fresh start when out_dir holds no checkpoint; after a restart, continue
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", CLIPMINI_MARKS=str(marks), CLIPMINI_KILL_AT=str(kill_at))
    # A fresh rendezvous store for every attempt: with the agent's shared store (the default), the
    # restarted group reads the killed attempt's addresses and cannot connect (pytorch/pytorch#135712).
    env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT"):
        env.pop(key, None)
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    return proc, out, marks


def _steps(marks: Path, attempt: int, rank: int) -> list[int]:
    path = marks / f"attempt{attempt}-rank{rank}.txt"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def test_killed_worker_is_restarted_and_resumes_exactly(tmp_path):
    straight, straight_dir, straight_marks = _run(tmp_path, "straight", kill_at=-1)
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed, killed_dir, marks = _run(tmp_path, "killed", kill_at=KILL_AT)
    assert killed.returncode == 0, killed.stderr[-3000:]

    # the uninterrupted run: one attempt, every step once on both ranks
    assert _steps(straight_marks, 0, 0) == _steps(straight_marks, 0, 1) == list(range(STEPS))
    # the fault happened: rank 1 reached step KILL_AT on the first attempt and went no further ...
    assert _steps(marks, 0, 1) == list(range(KILL_AT + 1))
    assert _steps(marks, 0, 0)[: KILL_AT] == list(range(KILL_AT))
    # ... torchrun restarted the group once, and both ranks resumed after the last checkpoint
    last_checkpoint = (KILL_AT // CHECKPOINT_EVERY) * CHECKPOINT_EVERY
    for rank in (0, 1):
        assert _steps(marks, 1, rank) == list(range(last_checkpoint, STEPS)), f"rank {rank} after the restart"
    assert not list(marks.glob("attempt2-*"))

    # the log holds every step exactly once
    records = [json.loads(line) for line in (killed_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, STEPS + 1))
    straight_records = [json.loads(line) for line in (straight_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in records if "loss" in r] == [r["loss"] for r in straight_records if "loss" in r]
    assert [p.name for p in list_checkpoints(killed_dir)] == ["ckpt-000003", "ckpt-000006", "ckpt-000008"]

    # and the end state is the uninterrupted run's, bit for bit
    for file in ("model.safetensors", "optimizer.safetensors"):
        got = load_file(str(killed_dir / "ckpt-000008" / file))
        want = load_file(str(straight_dir / "ckpt-000008" / file))
        assert got.keys() == want.keys() and len(want) > 10
        for key in want:
            assert torch.equal(got[key], want[key]), f"{file}: {key} differs from the uninterrupted run"
