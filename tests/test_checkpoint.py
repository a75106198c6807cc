"""Checkpoints: round trips, crash safety (torn writes, SIGKILL), exact resume, clear errors."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from clipmini.checkpoint import (
    MANIFEST,
    CheckpointError,
    checkpoint_name,
    clean_incomplete,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    save_weights,
    verify_checkpoint,
)

torch.set_num_threads(1)


class Toy(nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.fc = nn.Linear(4, width)
        self.norm = nn.BatchNorm1d(width)
        self.out = nn.Linear(width, 2)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, x):
        return self.out(torch.relu(self.norm(self.fc(x)))) * self.logit_scale


def _toy_steps(model, optimizer, steps: int, start: int = 0):
    for step in range(start, start + steps):
        g = torch.Generator().manual_seed(step)
        x = torch.randn(16, 4, generator=g)
        loss = model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _toy_state(seed: int = 0):
    torch.manual_seed(seed)
    model = Toy()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.98), eps=1e-6)
    return model, optimizer


def _assert_same_optimizer(a: torch.optim.Optimizer, b: torch.optim.Optimizer):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for pid in sa["state"]:
        for key, value in sa["state"][pid].items():
            other = sb["state"][pid][key]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other, (pid, key)


def test_round_trip_restores_model_optimizer_and_rng(tmp_path):
    model, optimizer = _toy_state()
    _toy_steps(model, optimizer, 3)
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    path = save_checkpoint(tmp_path, 3, model=model, optimizer=optimizer, config={"lr": 1e-2}, extra={"note": "x"})
    assert path.name == checkpoint_name(3) == "ckpt-000003"
    expected_draws = (random.random(), float(np.random.rand()), torch.rand(3))

    fresh, fresh_opt = _toy_state(seed=1)
    _toy_steps(fresh, fresh_opt, 1)  # a different state, to be overwritten
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    ckpt = load_checkpoint(path, model=fresh, optimizer=fresh_opt)
    assert ckpt.step == 3 and ckpt.config == {"lr": 1e-2} and ckpt.extra == {"note": "x"}
    assert ckpt.state["data_position"] == 3
    for (k, v), (k2, v2) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    _assert_same_optimizer(optimizer, fresh_opt)
    draws = (random.random(), float(np.random.rand()), torch.rand(3))
    assert draws[0] == expected_draws[0] and draws[1] == expected_draws[1] and torch.equal(draws[2], expected_draws[2])

    # continuing both gives identical weights: the optimizer state (moments, step counts) came back exactly
    _toy_steps(model, optimizer, 2, start=3)
    _toy_steps(fresh, fresh_opt, 2, start=3)
    for v, v2 in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(v, v2)


def test_manifest_lists_every_file_with_its_hash(tmp_path):
    model, optimizer = _toy_state()
    path = save_checkpoint(tmp_path, 0, model=model, optimizer=optimizer)
    manifest = json.loads((path / MANIFEST).read_text())
    on_disk = {p.name for p in path.iterdir()} - {MANIFEST}
    assert set(manifest["files"]) == on_disk == {"model.safetensors", "optimizer.safetensors", "state.json"}
    assert verify_checkpoint(path)["step"] == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_keep_deletes_the_oldest(tmp_path):
    model, optimizer = _toy_state()
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, model=model, optimizer=optimizer, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-000003", "ckpt-000004"]


def test_latest_ignores_and_cleans_incomplete_checkpoints(tmp_path):
    model, optimizer = _toy_state()
    good = save_checkpoint(tmp_path, 2, model=model, optimizer=optimizer)
    # a newer folder whose writer died before the manifest
    torn = save_checkpoint(tmp_path, 5, model=model, optimizer=optimizer)
    (torn / MANIFEST).unlink()
    # a newer one with a truncated weights file
    truncated = save_checkpoint(tmp_path, 7, model=model, optimizer=optimizer)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    # a newer one with a flipped byte (same size)
    flipped = save_checkpoint(tmp_path, 9, model=model, optimizer=optimizer)
    blob = bytearray((flipped / "optimizer.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (flipped / "optimizer.safetensors").write_bytes(bytes(blob))
    # the writer's hidden work folder, as a kill mid-write leaves it
    (tmp_path / ".ckpt-000011.partial").mkdir()

    assert latest_checkpoint(tmp_path, cleanup=False) == good
    with pytest.raises(CheckpointError, match="no MANIFEST.json"):
        verify_checkpoint(torn)
    with pytest.raises(CheckpointError, match="model.safetensors.*truncated"):
        load_checkpoint(truncated, model=Toy())
    with pytest.raises(CheckpointError, match="optimizer.safetensors.*sha256"):
        verify_checkpoint(flipped)

    assert latest_checkpoint(tmp_path) == good  # cleanup=True deletes the broken ones...
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ckpt-000011.partial", "ckpt-000002"]
    assert clean_incomplete(tmp_path) == [tmp_path / ".ckpt-000011.partial"]  # ...the writer also the partial
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-000002"]


def test_truncated_weights_file_error_names_the_file(tmp_path):
    model = Toy()
    path = save_weights(tmp_path / "w.safetensors", model)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match=r"w\.safetensors is truncated or corrupt"):
        load_weights(path, Toy())


def test_architecture_mismatch_is_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path, 1, model=Toy(width=8))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, model=Toy(width=16))
    message = str(info.value)
    assert "model.safetensors" in message and "different architecture" in message
    assert "fc.weight: file [8, 4] vs model [16, 4]" in message

    class Other(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4)

    with pytest.raises(CheckpointError, match=r"missing keys proj\.bias, proj\.weight; unexpected keys fc\.bias"):
        load_checkpoint(path, model=Other())


def test_optimizer_group_mismatch_is_a_clear_error(tmp_path):
    model, optimizer = _toy_state()
    _toy_steps(model, optimizer, 1)
    path = save_checkpoint(tmp_path, 1, model=model, optimizer=optimizer)
    params = list(model.parameters())
    other = torch.optim.AdamW([{"params": params[:2]}, {"params": params[2:]}])
    with pytest.raises(CheckpointError, match="parameter groups"):
        load_checkpoint(path, model=model, optimizer=other)


# ----------------------------------------------------------------------------------------------
# resuming the real training loop

from clipmini.train import TrainConfig, train  # noqa: E402

RUN = dict(
    model_overrides={"vision": {"layers": 1}, "text": {"layers": 1}},
    batch_size=16, eval_tasks=[], progress=False, log_every=1, warmup_steps=2, threads=1,
)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _assert_same_run(a: Path, b: Path):
    for name in ("model.safetensors", "optimizer.safetensors"):
        ta, tb = _tensors(a / name), _tensors(b / name)
        assert ta.keys() == tb.keys(), name
        for key in ta:
            assert torch.equal(ta[key], tb[key]), f"{name}: {key} differs"
    sa, sb = json.loads((a / "state.json").read_text()), json.loads((b / "state.json").read_text())
    assert sa["optimizer"] == sb["optimizer"] and sa["step"] == sb["step"]


def test_resume_is_bit_exact(tmp_path):
    steps, k = 6, 3
    straight = train(TrainConfig(**RUN, steps=steps, out_dir=str(tmp_path / "straight")))
    # the same run, interrupted after step k: only ckpt-000003 survives, then resume=True continues it
    interrupted = tmp_path / "interrupted"
    train(TrainConfig(**RUN, steps=steps, out_dir=str(interrupted), checkpoint_every=k, keep_checkpoints=5))
    shutil.rmtree(interrupted / checkpoint_name(steps))
    resumed = train(TrainConfig(**RUN, steps=steps, out_dir=str(interrupted), resume=True))
    for (name, p), q in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(p, q), name
    _assert_same_run(straight.checkpoint, resumed.checkpoint)
    # the log holds each step once, the resumed part included
    steps_logged = [r["step"] for r in resumed.history if "loss" in r]
    assert steps_logged == list(range(1, steps + 1))
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]


def test_resume_refuses_another_architecture(tmp_path):
    out = tmp_path / "run"
    train(TrainConfig(**RUN, steps=1, out_dir=str(out)))
    other = dict(RUN, model_overrides={"vision": {"layers": 2}, "text": {"layers": 1}})
    with pytest.raises(ValueError, match=r"ckpt-000001 was trained with model_overrides="):
        train(TrainConfig(**other, steps=2, out_dir=str(out), resume=True))


def _train_in_child(config: TrainConfig, point: str, report) -> None:
    from kill_points import stop_at

    stop_at(point, lambda: report.send(point))  # in this forked child only
    train(config)
    report.send("finished")
    os._exit(0)


# Where each attempt is killed: mid-step, inside a checkpoint's weights, and with a checkpoint whole but
# for its manifest's rename. Each attempt resumes from what the previous kill left.
KILLS = [("step:3", "ckpt-000003"), ("write:6:optimizer.safetensors", "ckpt-000005"), ("write:8:MANIFEST.json", "ckpt-000007")]


def test_sigkill_at_chosen_moments_never_corrupts_and_resume_matches(tmp_path):
    """SIGKILL a training process mid-step and mid-write, three times; resume each time.

    The processes are forked from this one (no second torch import: the test stays fast); each runs the
    real `train` with resume=True and checkpoints after every step. A kill point (tests/kill_points.py)
    stops the child at a chosen moment and tells the test, which kills it there: the same three kills on
    any machine, however fast.
    """
    steps = 10
    out = tmp_path / "killed"
    config = TrainConfig(**RUN, steps=steps, out_dir=str(out), checkpoint_every=1, keep_checkpoints=2, resume=True)
    train(TrainConfig(**RUN, steps=1, out_dir=str(tmp_path / "warm")))  # the BPE is trained once, before forking
    fork = multiprocessing.get_context("fork")

    for point, survivor in KILLS:
        reader, writer = fork.Pipe(duplex=False)
        child = fork.Process(target=_train_in_child, args=(config, point, writer))
        child.start()
        writer.close()  # the child holds the only writer: if it dies unannounced, recv() ends with EOFError
        assert reader.recv() == point  # the child waits at the point ...
        os.kill(child.pid, signal.SIGKILL)  # ... and dies there
        child.join()
        assert child.exitcode == -signal.SIGKILL
        latest = latest_checkpoint(out)  # the newest folder whose manifest checks out
        assert latest == out / survivor
        load_checkpoint(latest, restore_rng=False)  # verifies every file's sha256
        if point.startswith("write"):  # the interrupted write: a hidden folder, never a ckpt-* one
            step, name = point.split(":")[1:]
            partial = out / f".{checkpoint_name(int(step))}.partial"
            assert not (out / checkpoint_name(int(step))).exists() and partial.is_dir()
            assert list(partial.glob(f".{name}.*.tmp")), sorted(p.name for p in partial.iterdir())

    resumed = train(config)  # continue from whatever the last kill left
    assert not list(out.glob(".ckpt-*"))  # the interrupted writes are cleaned away
    reference = train(TrainConfig(**RUN, steps=steps, out_dir=str(tmp_path / "reference")))
    _assert_same_run(reference.checkpoint, resumed.checkpoint)
    for (name, p), q in zip(reference.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(p, q), name
    logged = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, steps + 1))  # no step logged twice across the kills


def test_every_trained_model_file_carries_its_config(tmp_path):
    """clipmini.load rebuilds a trained model from its model.safetensors alone: inferred from shapes, a
    text tower of 2 heads of width 32 would be read as 1 head of 64 and give other features."""
    import clipmini
    from clipmini.checkpoint import MODEL_FILE

    result = train(TrainConfig(**RUN, steps=1, out_dir=str(tmp_path / "run")))
    trained = result.model
    assert trained.config.text.heads == 2 and trained.config.text.head_width == 32
    save_weights(tmp_path / "weights.safetensors", trained)
    tokens = torch.zeros(3, 32, dtype=torch.long)
    tokens[:, :5] = torch.tensor([1022, 7, 8, 9, 1023])
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for path in (result.checkpoint / MODEL_FILE, tmp_path / "weights.safetensors"):
        loaded = clipmini.load(path)
        assert loaded.config == trained.config, path
        with torch.no_grad():
            assert torch.equal(loaded.encode_text(tokens), trained.encode_text(tokens)), path
            assert torch.equal(loaded.encode_image(images), trained.encode_image(images)), path


def test_rotation_never_deletes_the_checkpoint_just_written(tmp_path):
    model, optimizer = _toy_state()
    for step in (7, 9):  # later steps already in the folder (a run resumed from an earlier checkpoint)
        save_checkpoint(tmp_path, step, model=model, optimizer=optimizer)
    for step in (1, 2, 3):
        written = save_checkpoint(tmp_path, step, model=model, optimizer=optimizer, keep=1)
        assert written.is_dir() and verify_checkpoint(written)["step"] == step
    # the older ones of this step's line were rotated away; the later folders were left alone
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-000003", "ckpt-000007", "ckpt-000009"]
    with pytest.raises(ValueError, match="keep must be an int >= 1 or None; got 0"):
        save_checkpoint(tmp_path, 4, model=model, keep=0)
    assert not (tmp_path / "ckpt-000004").exists()  # refused before writing anything
