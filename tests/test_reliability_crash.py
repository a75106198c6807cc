"""Crashes and numerical faults never cost more than the steps since the last complete checkpoint.

1. The real command line, `python -m clipmini.train`, SIGKILLed three times at chosen moments: mid-step,
   inside a checkpoint's weights file, and inside its state file. A kill point (tests/kill_points.py,
   installed by a two-line wrapper around `clipmini.train.main`) stops the trainer there and says so
   through a pipe; the test kills it at once, so the kills land where they should on any machine, fast
   or slow. After every kill the newest complete checkpoint verifies and loads, and resuming ends with
   the weights, optimizer state and per-step losses of an uninterrupted run, bit for bit.
   (tests/test_checkpoint.py kills forked copies of the test process; this one kills what a user runs.)
2. A run stopped by a non-finite loss or gradient at step k, after a checkpoint at step j < k, names the
   step and the likely cause, and leaves ckpt j intact: it verifies, loads, equals the uninterrupted run's
   ckpt j, and resuming from it reaches the uninterrupted run's final weights. (tests/test_train.py
   covers skipping and counting, and the stop right after a checkpoint.)
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import clipmini.train as train_module
from clipmini.checkpoint import MODEL_FILE, OPTIMIZER_FILE, checkpoint_name, latest_checkpoint, load_checkpoint, verify_checkpoint
from clipmini.train import ContrastiveModel, TrainConfig, make_model, make_optimizer, train

torch.set_num_threads(1)

TINY = dict(model_overrides={"vision": {"layers": 1}, "text": {"layers": 1}}, batch_size=8, warmup_steps=2,
            eval_tasks=[], progress=False, log_every=1, threads=1)


def _same_checkpoint(a: Path, b: Path) -> None:
    """Model and optimizer tensors bit-identical, and the same step and optimizer structure."""
    for name in (MODEL_FILE, OPTIMIZER_FILE):
        ta, tb = load_file(str(a / name)), load_file(str(b / name))
        assert ta.keys() == tb.keys(), name
        for key in ta:
            assert torch.equal(ta[key], tb[key]), f"{a.name}/{name}: {key} differs"
    sa, sb = json.loads((a / "state.json").read_text()), json.loads((b / "state.json").read_text())
    assert sa["step"] == sb["step"] and sa["optimizer"] == sb["optimizer"]


def _losses(records) -> list[tuple]:
    return [(r["step"], r["loss"], r["lr"], r["grad_norm"], r["tau"]) for r in records if "loss" in r]


# ------------------------------------------------------------------------------------------------
# 1. SIGKILL the command line

STEPS = 12
CLI = ["--model_overrides", "{vision: {layers: 1}, text: {layers: 1}}", "--batch_size", "8", "--warmup_steps", "2",
       "--eval_tasks", "--no-progress", "--log_every", "1", "--threads", "1", "--steps", str(STEPS),
       "--checkpoint_every", "1", "--keep_checkpoints", "2", "--resume", "true"]
TESTS = Path(__file__).resolve().parent

# `python -m clipmini.train ARGS`, with a kill point installed first (CLIPMINI_KILL_POINT; it reports
# through the file descriptor CLIPMINI_REPORT_FD)
WRAPPER = f"""
import os, sys
sys.path.insert(0, {str(TESTS)!r})
from kill_points import stop_at
from clipmini.train import main

stop_at(os.environ["CLIPMINI_KILL_POINT"], lambda: os.write(int(os.environ["CLIPMINI_REPORT_FD"]), b"stopped\\n"))
sys.exit(main(sys.argv[1:]))
"""

# (kill point, the newest complete checkpoint it leaves). Each attempt resumes from the previous one's.
KILLS = [("step:4", 4), (f"write:7:{MODEL_FILE}", 6), ("write:10:state.json", 9)]


def _env(**extra: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _killed_at(point: str, out: Path, log: Path) -> int:
    """Run the command line until it stops at `point`, SIGKILL it there; its exit status."""
    reader, writer = os.pipe()
    with open(log, "w") as handle:
        process = subprocess.Popen(
            [sys.executable, "-c", WRAPPER, *CLI, "--out_dir", str(out)], cwd=out.parent, stdout=handle,
            stderr=subprocess.STDOUT, pass_fds=(writer,),
            env=_env(CLIPMINI_KILL_POINT=point, CLIPMINI_REPORT_FD=str(writer)),
        )
    os.close(writer)  # the trainer holds the only writer: if it exits unannounced, the read ends empty
    with os.fdopen(reader, "rb") as pipe:
        said = pipe.readline()
    if said == b"stopped\n":
        os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert said == b"stopped\n", f"the trainer exited ({process.returncode}) before {point}:\n{log.read_text()[-3000:]}"
    return process.returncode


def test_sigkilled_command_line_resumes_to_the_uninterrupted_weights(tmp_path):
    out = tmp_path / "run"
    config = TrainConfig(**TINY, steps=STEPS, out_dir=None)
    for attempt, (point, survivor) in enumerate(KILLS):
        assert _killed_at(point, out, tmp_path / f"attempt-{attempt}.log") == -signal.SIGKILL

        latest = latest_checkpoint(out)  # the newest folder whose manifest checks out
        assert latest == out / checkpoint_name(survivor)
        model = make_model(config)
        optimizer = make_optimizer(ContrastiveModel(model), config)
        load_checkpoint(latest, model=model, optimizer=optimizer, restore_rng=False)  # verifies every sha256
        if point.startswith("write"):  # killed inside the write: its hidden folder is left unfinished
            partial = out / f".{checkpoint_name(survivor + 1)}.partial"
            assert partial.is_dir() and not (partial / "MANIFEST.json").exists()

    finish = subprocess.run([sys.executable, "-m", "clipmini.train", *CLI, "--out_dir", str(out)], cwd=tmp_path,
                            env=_env(), capture_output=True, text=True)
    assert finish.returncode == 0, finish.stderr[-3000:]
    assert not list(out.glob(".ckpt-*")), "the resumed run cleans the interrupted writes away"

    reference = train(TrainConfig(**TINY, steps=STEPS, out_dir=str(tmp_path / "reference")))
    _same_checkpoint(reference.checkpoint, out / checkpoint_name(STEPS))
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == list(range(1, STEPS + 1))  # every step once, across all the processes
    assert _losses(logged) == _losses(reference.history)  # and each the same as without the kills


# ------------------------------------------------------------------------------------------------
# 2. a non-finite loss or gradient stops the run; the last good checkpoint stays intact

FAULT_STEP = 3  # the 4th optimizer step goes bad; ckpt-000002 is the last one written before it
FAULTY = dict(TINY, steps=6, checkpoint_every=2, keep_checkpoints=5)


def _poison(monkeypatch, kind: str) -> None:
    """Make the loss (or one gradient) of optimizer step FAULT_STEP non-finite, as an overflow would."""
    calls = {"n": 0}
    if kind == "loss":
        real_loss = train_module._contrastive_loss

        def loss(*args, **kwargs):
            calls["n"] += 1
            value = real_loss(*args, **kwargs)
            return value * math.nan if calls["n"] == FAULT_STEP + 1 else value

        monkeypatch.setattr(train_module, "_contrastive_loss", loss)
    else:
        real_make_model = train_module.make_model

        def make_model_with_a_bad_backward(config):
            model = real_make_model(config)

            def hook(grad):
                calls["n"] += 1
                return grad * math.inf if calls["n"] == FAULT_STEP + 1 else grad

            model.visual.proj.register_hook(hook)  # one backward per step: call n is step n - 1
            return model

        monkeypatch.setattr(train_module, "make_model", make_model_with_a_bad_backward)


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_a_nonfinite_step_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, kind):
    clean = train(TrainConfig(**FAULTY, out_dir=str(tmp_path / "clean")))

    out = tmp_path / "faulty"
    _poison(monkeypatch, kind)
    with pytest.raises(FloatingPointError) as info:
        train(TrainConfig(**FAULTY, out_dir=str(out), on_nonfinite="stop"))
    message = str(info.value)
    assert f"non-finite {kind} at step {FAULT_STEP} " in message  # at once: the step it happened in
    assert "likely cause: the learning rate is too high (lr=" in message
    assert f"{checkpoint_name(2)} is intact" in message
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3]  # nothing after the bad step

    last = latest_checkpoint(out)
    assert last == out / checkpoint_name(2)  # the run had moved on to step 3, unsaved
    verify_checkpoint(last)
    config = TrainConfig(**FAULTY)
    model = make_model(config)
    load_checkpoint(last, model=model, optimizer=make_optimizer(ContrastiveModel(model), config), restore_rng=False)
    _same_checkpoint(last, tmp_path / "clean" / checkpoint_name(2))  # exactly what the clean run saved at step 2

    monkeypatch.undo()  # the fault is gone (a lower lr, say): resuming from ckpt 2 reaches the clean result
    resumed = train(TrainConfig(**FAULTY, out_dir=str(out), resume=True))
    _same_checkpoint(clean.checkpoint, resumed.checkpoint)
    assert _losses(resumed.history) == _losses(clean.history)
