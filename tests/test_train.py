"""The training loop: accumulation = large batch, the schedule, weight-decay groups, the clamp,
non-finite steps, mixed precision, and learning on the caption world."""

from __future__ import annotations

import math

import pytest
import torch

import clipmini.train as train_module
from clipmini.checkpoint import latest_checkpoint, verify_checkpoint
from clipmini.model import CLIP
from clipmini.schedule import CosineSchedule, cosine_lr
from clipmini.train import (
    ContrastiveModel,
    TrainConfig,
    compute_gradients,
    make_optimizer,
    make_schedule,
    train,
    train_step,
)

torch.set_num_threads(1)

# A tiny-vit cut down further: the loop's logic does not need depth.
SMALL = {"vision": {"layers": 1}, "text": {"layers": 1}}


def synthetic_batch(config: TrainConfig, batch: int, seed: int = 0):
    """Random images and random token rows shaped like real ones (SOT ... EOT, zero padding)."""
    clip = config.clip_config()
    g = torch.Generator().manual_seed(seed)
    R, L, V = clip.vision.image_size, clip.text.context_length, clip.text.vocab_size
    images = torch.randn(batch, 3, R, R, generator=g)  # [B, 3, R, R]
    tokens = torch.zeros(batch, L, dtype=torch.long)  # [B, L]
    lengths = torch.randint(3, L - 1, (batch,), generator=g)
    for i, n in enumerate(lengths.tolist()):
        tokens[i, 0] = V - 2
        tokens[i, 1 : n - 1] = torch.randint(0, V - 2, (n - 2,), generator=g)
        tokens[i, n - 1] = V - 1
    return images, tokens


def fresh_model(config: TrainConfig, seed: int = 0) -> CLIP:
    torch.manual_seed(seed)
    return CLIP(config.clip_config())


# ----------------------------------------------------------------------------------------------
# the schedule


def test_schedule_warmup_then_cosine():
    s = CosineSchedule(base_lr=1.0, warmup_steps=10, total_steps=110)
    assert s(0) == pytest.approx(0.1)  # the first step already moves
    assert s(4) == pytest.approx(0.5)
    assert s(9) == pytest.approx(1.0)  # warmup ends at the peak
    assert s(10) == pytest.approx(1.0)  # cosine starts at the peak
    assert s(60) == pytest.approx(0.5)  # half way through the decay
    assert s(35) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    assert s(110) == pytest.approx(0.0, abs=1e-12)
    lrs = [s(i) for i in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # monotone decay
    assert cosine_lr(5, base_lr=2.0, warmup_steps=0, total_steps=10) == pytest.approx(1.0)
    assert CosineSchedule(base_lr=1.0, warmup_steps=10, total_steps=5)(12) == 1.0  # no decay phase: hold the peak


def test_make_schedule_sets_every_group():
    config = TrainConfig(lr=3e-3, warmup_steps=4, steps=20)
    optimizer = make_optimizer(ContrastiveModel(fresh_model(TrainConfig(model_overrides=SMALL))), config)
    schedule = make_schedule(config)
    assert schedule.apply(optimizer, 1) == pytest.approx(3e-3 * 2 / 4)
    assert [g["lr"] for g in optimizer.param_groups] == [pytest.approx(1.5e-3)] * 2
    assert CosineSchedule.from_state_dict(schedule.state_dict()) == schedule


# ----------------------------------------------------------------------------------------------
# the optimizer's groups


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_no_weight_decay_on_gains_biases_and_logit_scale(name):
    config = TrainConfig(model=name, weight_decay=0.2)
    model = ContrastiveModel(fresh_model(config))
    optimizer = make_optimizer(model, config)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["decay"]["weight_decay"] == 0.2 and groups["no_decay"]["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in groups["decay"]["params"]}
    exempt = {names[id(p)] for p in groups["no_decay"]["params"]}
    assert decayed | exempt == set(names.values()) and not decayed & exempt
    assert "clip.logit_scale" in exempt
    assert all(model.get_parameter(n).ndim <= 1 for n in exempt)
    assert all(model.get_parameter(n).ndim >= 2 for n in decayed)
    # the kinds the paper names: norms' gains, biases
    assert any(n.endswith("ln_final.weight") for n in exempt) and any(n.endswith(".bias") for n in exempt)
    assert any(n.endswith("token_embedding.weight") for n in decayed)
    if name == "tiny-rn":
        assert any(n.endswith("bn1.weight") for n in exempt)


def test_fixed_tau_is_neither_trained_nor_clamped():
    from clipmini.temperature import fix_temperature

    config = TrainConfig(model_overrides=SMALL, fixed_tau=0.005, lr=0.1, warmup_steps=0)
    model = fix_temperature(fresh_model(config), 0.005)
    optimizer = make_optimizer(ContrastiveModel(model), config)
    images, tokens = synthetic_batch(config, 16)
    train_step(model, images, tokens, optimizer, config)
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.005))  # above the clamp: untouched


@pytest.mark.parametrize("direction", ["image", "text"])
def test_loss_direction_trains_one_direction_of_the_loss(direction):
    from clipmini.losses import clip_loss

    config = TrainConfig(model_overrides=SMALL, loss_direction=direction)
    images, tokens = synthetic_batch(config, 12)
    model = fresh_model(config)
    loss = compute_gradients(ContrastiveModel(model), images, tokens, config)
    with torch.no_grad():
        image_features = model.encode_image(images, normalize=True)
        text_features = model.encode_text(tokens, normalize=True)
        scale = model.logit_scale.exp()
        expected = clip_loss(image_features, text_features, scale, direction=direction)
        both = clip_loss(image_features, text_features, scale)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert abs(loss.item() - both.item()) > 1e-4  # a different loss from the symmetric one


@pytest.mark.parametrize(
    "values, message",
    [
        ({"loss": "siglip", "loss_direction": "image"}, "'loss_direction' applies to loss='clip' only"),
        ({"loss_direction": "rows"}, "loss_direction"),
        ({"weight_decay": float("inf")}, "'weight_decay' must be a finite number >= 0"),
    ],
)
def test_bad_objective_values_are_named(values, message):
    with pytest.raises((ValueError, TypeError), match=message):
        TrainConfig.from_dict(values)


@pytest.mark.parametrize("world_size", [0, -2, 1.5])
def test_check_world_size_rejects_non_positive_sizes(world_size):
    with pytest.raises(ValueError, match="world_size must be an int >= 1"):
        TrainConfig().check_world_size(world_size)


# ----------------------------------------------------------------------------------------------
# contrastive gradient accumulation


def _gradients(config: TrainConfig, images, tokens, ids=None) -> dict[str, torch.Tensor]:
    model = ContrastiveModel(fresh_model(config))
    loss = compute_gradients(model, images, tokens, config, caption_ids=ids)
    assert torch.isfinite(loss)
    return {n: p.grad.clone() for n, p in model.named_parameters()}, loss


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_accumulation_equals_the_large_batch(loss):
    big = TrainConfig(model_overrides=SMALL, batch_size=24, loss=loss)
    accumulated = TrainConfig(model_overrides=SMALL, batch_size=24, micro_batch=6, loss=loss)
    images, tokens = synthetic_batch(big, 24)
    ids = torch.tensor([i % 9 for i in range(24)]) if loss == "clip" else None  # repeated captions
    if loss == "siglip":  # the SigLIP head has parameters of its own: the same init in both runs
        from clipmini.temperature import SigLIPHead

        def with_head(config):
            model = ContrastiveModel(fresh_model(config), SigLIPHead())
            value = compute_gradients(model, images, tokens, config)
            return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, value

        (g_big, l_big), (g_acc, l_acc) = with_head(big), with_head(accumulated)
    else:
        (g_big, l_big), (g_acc, l_acc) = _gradients(big, images, tokens, ids), _gradients(accumulated, images, tokens, ids)
    assert torch.allclose(l_big, l_acc, rtol=1e-6)
    assert g_big.keys() == g_acc.keys() and len(g_big) > 10
    for name in g_big:
        a, b = g_big[name], g_acc[name]
        assert a.abs().max() > 0, name  # every parameter takes part
        err = (a - b).norm() / a.norm()
        assert err < 1e-5, f"{name}: relative gradient error {err:.2e}"


def test_gradient_checkpointing_changes_no_gradient():
    config = TrainConfig(model_overrides={"vision": {"layers": 2}, "text": {"layers": 2}}, batch_size=12, micro_batch=4)
    images, tokens = synthetic_batch(config, 12)
    plain, _ = _gradients(config, images, tokens)
    model = fresh_model(config)
    model.set_grad_checkpointing(True)
    module = ContrastiveModel(model)
    compute_gradients(module, images, tokens, config)
    for name, p in module.named_parameters():
        assert torch.allclose(p.grad, plain[name], rtol=1e-5, atol=1e-8), name


def test_accumulation_does_not_count_batchnorm_statistics_twice():
    config = TrainConfig(model="tiny-rn", model_overrides={"text": {"layers": 1}}, batch_size=16, micro_batch=8)
    images, tokens = synthetic_batch(config, 16)
    model = fresh_model(config)
    compute_gradients(model, images, tokens, config)
    bn = model.visual.bn1
    assert bn.num_batches_tracked.item() == 2  # one update per micro-batch (the no-grad pass left none)


# ----------------------------------------------------------------------------------------------
# the temperature clamp, mixed precision


def test_clamp_holds_with_a_large_lr():
    config = TrainConfig(model_overrides=SMALL, lr=1.0, warmup_steps=0, grad_clip=None, weight_decay=0.0)
    model = fresh_model(config)
    with torch.no_grad():
        model.logit_scale.fill_(9.0)  # far above ln 100; Adam's first step moves it by about lr = 1
    optimizer = make_optimizer(ContrastiveModel(model), config)
    values = []
    for step in range(4):
        images, tokens = synthetic_batch(config, 16, seed=step)
        out = train_step(model, images, tokens, optimizer, config, step=step)
        assert not out.skipped
        values.append(model.logit_scale.item())
    assert values[0] == pytest.approx(math.log(100.0), abs=1e-6)  # clamped right after the step
    assert all(0.0 <= v <= math.log(100.0) + 1e-6 for v in values)


def test_bf16_autocast_step_runs_on_cpu():
    config = TrainConfig(model_overrides=SMALL, precision="bf16", lr=1e-3, warmup_steps=0, micro_batch=8, batch_size=16)
    model = fresh_model(config)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = make_optimizer(ContrastiveModel(model), config)
    images, tokens = synthetic_batch(config, 16)
    out = train_step(model, images, tokens, optimizer, config)
    assert math.isfinite(out.loss) and not out.skipped and out.loss > 0
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast, not a cast of the weights
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before)


def test_fp16_needs_cuda():
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        TrainConfig(precision="fp16", device="cpu")


# ----------------------------------------------------------------------------------------------
# non-finite steps


def test_nonfinite_gradient_is_skipped_or_stops():
    config = TrainConfig(model_overrides=SMALL, lr=1e-3, warmup_steps=0)
    model = fresh_model(config)
    optimizer = make_optimizer(ContrastiveModel(model), config)
    images, tokens = synthetic_batch(config, 8)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    hook = model.visual.proj.register_hook(lambda grad: grad * math.inf)  # an overflow in backward
    out = train_step(model, images, tokens, optimizer, config, step=7)
    assert out.skipped and not math.isfinite(out.grad_norm)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # nothing moved
    assert not optimizer.state  # and Adam's moments never saw the bad gradient
    stop = TrainConfig(model_overrides=SMALL, lr=1e-3, warmup_steps=0, on_nonfinite="stop")
    with pytest.raises(FloatingPointError, match=r"non-finite gradient at step 7 .*lr"):
        train_step(model, images, tokens, optimizer, stop, step=7)
    hook.remove()
    assert not train_step(model, images, tokens, optimizer, config, step=8).skipped


# ----------------------------------------------------------------------------------------------
# the whole loop on the caption world

WORLD_RUN = dict(model_overrides=SMALL, batch_size=32, eval_tasks=[], progress=False, log_every=1, threads=1)


# Label captions of lone flat objects: a world a 1-layer CLIP learns within 30 steps of 32.
PLAIN_WORLD = {"caption_style": "label", "domains": ["flat"], "count_rate": 0.0, "relation_rate": 0.0, "max_objects": 1}


def test_loss_decreases_on_the_world(tmp_path):
    config = TrainConfig(**WORLD_RUN, world=PLAIN_WORLD, steps=30, lr=2e-3, warmup_steps=3, out_dir=str(tmp_path / "run"))
    result = train(config)
    losses = [r["loss"] for r in result.history if "loss" in r]
    assert len(losses) == 30 and all(math.isfinite(x) for x in losses)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 1.0 and last < math.log(32) - 1.0, (first, last)  # ln(32) = 3.47 is chance
    assert result.metrics["nonfinite_skips"] == 0
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 30 and '"samples_per_s"' in lines[0]
    assert not result.model.training  # handed back ready for inference


def _poison_third_loss(monkeypatch):
    """Make the loss of the third optimizer step (index 2) NaN, as an overflow would."""
    real = train_module._contrastive_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * math.nan if calls["n"] == 3 else loss

    monkeypatch.setattr(train_module, "_contrastive_loss", poisoned)


def test_nonfinite_loss_is_skipped_and_counted(tmp_path, monkeypatch):
    _poison_third_loss(monkeypatch)
    result = train(TrainConfig(**WORLD_RUN, steps=4, out_dir=str(tmp_path / "run"), on_nonfinite="skip"))
    assert result.metrics["nonfinite_skips"] == 1
    skipped = [r for r in result.history if r.get("skipped")]
    assert [r["step"] for r in skipped] == [3] and skipped[0]["nonfinite_skips"] == 1
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


def test_nonfinite_loss_stops_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    _poison_third_loss(monkeypatch)
    out = tmp_path / "run"
    config = TrainConfig(**WORLD_RUN, steps=4, out_dir=str(out), on_nonfinite="stop", checkpoint_every=1)
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 2 .*lr.*ckpt-000002 is intact"):
        train(config)
    last = latest_checkpoint(out)
    assert last is not None and last.name == "ckpt-000002"
    verify_checkpoint(last)


def _write_csv_dataset(folder, n: int = 20):
    """n small PNGs of colored squares and a CSV of (filepath, title), as a real dataset would have."""
    from PIL import Image

    colors = {"red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 60, 220), "yellow": (240, 220, 20)}
    rows = ["filepath,title"]
    for i in range(n):
        name = list(colors)[i % 4]
        image = Image.new("RGB", (40, 36), (250, 250, 250))
        image.paste(colors[name], (4 + i % 7, 4 + i % 5, 24 + i % 7, 24 + i % 5))
        image.save(folder / f"{i}.png")
        rows.append(f"{i}.png,a photo of a {name} square")
    (folder / "pairs.csv").write_text("\n".join(rows) + "\n")
    return folder / "pairs.csv"


def test_trains_on_a_csv_and_resumes_exactly(tmp_path):
    csv = _write_csv_dataset(tmp_path)
    run = dict(
        model_overrides={"vision": {"layers": 1}, "text": {"layers": 1, "vocab_size": 49408, "context_length": 77}},
        data="csv", train_data=str(csv), tokenizer="openai", batch_size=8, steps=5, warmup_steps=1,
        eval_tasks=["shape"], progress=False, log_every=1, data_workers=0, threads=1,
    )
    straight = train(TrainConfig(**run, out_dir=str(tmp_path / "a")))  # 2 batches an epoch: 3 epochs
    assert [r["step"] for r in straight.history] == [1, 2, 3, 4, 5] and straight.metrics["eval"] == {}
    train(TrainConfig(**run, out_dir=str(tmp_path / "b"), checkpoint_every=3, keep_checkpoints=5))
    import shutil

    shutil.rmtree(tmp_path / "b" / "ckpt-000005")
    resumed = train(TrainConfig(**run, out_dir=str(tmp_path / "b"), resume=True))
    for (name, p), q in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(p, q), name


# ----------------------------------------------------------------------------------------------
# run folders: a run never overwrites another, a resume continues only the same run


def _files(out) -> dict:
    """Every file under `out` with its bytes: what a refused run must leave exactly as it was."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _log(out) -> list[dict]:
    import json

    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


FOLDER_RUN = dict(WORLD_RUN, steps=4, warmup_steps=1, checkpoint_every=2)


def test_a_fresh_run_refuses_a_folder_that_holds_another_run(tmp_path):
    out = tmp_path / "X"
    first = train(TrainConfig(**FOLDER_RUN, out_dir=str(out)))
    before = _files(out)
    with pytest.raises(train_module.TrainSetupError, match=(
        r"out_dir .*X already holds a run \(ckpt-000002, ckpt-000004, metrics\.jsonl\); continue it with "
        r"resume=True \(--resume true\), train into a new out_dir, or replace it with overwrite=True \(--overwrite\)"
    )):
        train(TrainConfig(**dict(FOLDER_RUN, steps=2), out_dir=str(out)))
    assert _files(out) == before  # not a byte changed: the first run's checkpoints and log are intact

    # overwrite=True replaces it on purpose: the new run is a fresh one, equal to the same run in an empty folder
    replaced = train(TrainConfig(**dict(FOLDER_RUN, steps=2), out_dir=str(out), overwrite=True))
    alone = train(TrainConfig(**dict(FOLDER_RUN, steps=2), out_dir=str(tmp_path / "alone")))
    assert sorted(p.name for p in out.iterdir()) == ["ckpt-000002", "config.json", "metrics.jsonl"]
    assert [r["step"] for r in _log(out)] == [1, 2]
    for (name, p), q in zip(alone.model.state_dict().items(), replaced.model.state_dict().values()):
        assert torch.equal(p, q), name
    assert not all(torch.equal(p, q) for p, q in zip(first.model.parameters(), replaced.model.parameters()))
    with pytest.raises(ValueError, match=r"'overwrite' deletes the run in out_dir and 'resume' continues one"):
        TrainConfig(**FOLDER_RUN, out_dir=str(out), overwrite=True, resume=True)


def test_resume_refuses_another_configuration_naming_the_fields(tmp_path):
    out = tmp_path / "X"
    train(TrainConfig(**FOLDER_RUN, out_dir=str(out)))
    before = _files(out)
    for changes, named in [
        ({"steps": 2}, r"ckpt-000004 was trained with steps=4; this run has steps=2\. These change the result"),
        ({"lr": 2e-3, "seed": 1}, r"trained with lr=0\.001, seed=0; this run has lr=0\.002, seed=1"),
        ({"world": {"seed": 5}}, r"trained with world=\{\}; this run has world=\{'seed': 5\}"),
        ({"batch_size": 16}, r"batch_size=32; this run has batch_size=16"),
    ]:
        with pytest.raises(train_module.TrainSetupError, match=named + r".*new out_dir.*overwrite=True"):
            train(TrainConfig(**(FOLDER_RUN | changes), out_dir=str(out), resume=True))
    assert _files(out) == before
    # what never changes the weights may change: logging, checkpointing, evaluation cadence, threads
    same = dict(FOLDER_RUN, log_every=3, checkpoint_every=1, keep_checkpoints=4, eval_every=2, max_nonfinite_steps=5)
    train(TrainConfig(**same, out_dir=str(out), resume=True))


def test_resume_of_a_log_without_checkpoints_checks_its_config(tmp_path):
    import shutil

    out = tmp_path / "X"
    train(TrainConfig(**FOLDER_RUN, out_dir=str(out)))
    for ckpt in out.glob("ckpt-*"):  # as if killed before its first checkpoint: a log and config.json only
        shutil.rmtree(ckpt)
    with pytest.raises(train_module.TrainSetupError, match=r"the run in out_dir .*X was trained with lr=0\.001; this run has lr=0\.003"):
        train(TrainConfig(**(FOLDER_RUN | {"lr": 3e-3}), out_dir=str(out), resume=True))
    (out / "config.json").unlink()
    with pytest.raises(train_module.TrainSetupError, match=r"records no training configuration"):
        train(TrainConfig(**FOLDER_RUN, out_dir=str(out), resume=True))


def test_the_final_evaluation_is_logged_once_however_often_a_finished_run_is_resumed(tmp_path):
    out = tmp_path / "X"
    config = TrainConfig(**dict(FOLDER_RUN, eval_tasks=["shape"], eval_n=20), out_dir=str(out), resume=True)
    first = train(config)
    for _ in range(2):
        again = train(config)
    evals = [r for r in _log(out) if "eval" in r]
    assert evals == [{"step": 4, "eval": first.metrics["eval"]}] and again.metrics["eval"] == first.metrics["eval"]
    assert [r["step"] for r in _log(out)] == [1, 2, 3, 4, 4]


# ----------------------------------------------------------------------------------------------
# failing loudly


def test_a_run_of_nonfinite_steps_stops_training(tmp_path):
    out = tmp_path / "X"
    diverging = dict(WORLD_RUN, steps=6, warmup_steps=1, lr=1e30, checkpoint_every=1)
    with pytest.raises(FloatingPointError, match=(
        r"3 non-finite steps in a row, the last at step 3 .*likely cause: the learning rate is too high \(lr=6\.55e\+29\)"
        r".*'max_nonfinite_steps'.*ckpt-000003 is intact"
    )):
        train(TrainConfig(**diverging, out_dir=str(out)))
    assert [(r["step"], r.get("skipped", False)) for r in _log(out)] == [(1, False), (2, True), (3, True), (4, True)]
    # 0 = never stop: the run ends, its skipped steps counted
    result = train(TrainConfig(**diverging, out_dir=None, max_nonfinite_steps=0))
    assert result.metrics["nonfinite_skips"] == 5
    with pytest.raises(ValueError, match=r"'max_nonfinite_steps' must be >= 0 \(0 = never stop\), got -1"):
        TrainConfig(max_nonfinite_steps=-1)


def test_unusable_out_dirs_are_refused_before_any_work(tmp_path, monkeypatch):
    import os
    from pathlib import Path

    built = []
    monkeypatch.setattr(train_module, "make_model", lambda config: built.append(config))
    (tmp_path / "a-file").write_text("not a folder")
    readonly = tmp_path / "read-only"
    readonly.mkdir()
    readonly.chmod(0o555)
    if os.access(readonly, os.W_OK):  # root ignores permission bits: a read-only file system instead
        readonly = Path("/sys/clipmini-run")
    cases = [
        (tmp_path / "a-file", r"out_dir .*a-file is a file, not a folder"),
        (tmp_path / "a-file" / "run", r"out_dir .*a-file/run cannot be written \(Not a directory\): choose another out_dir"),
        (readonly / "run", r"out_dir .*run cannot be written \((Permission denied|Operation not permitted)\)"),
    ]
    for out_dir, message in cases:
        with pytest.raises(train_module.TrainSetupError, match=message):
            train(TrainConfig(**WORLD_RUN, steps=1, out_dir=str(out_dir)))
    assert built == []  # refused before the model (or the tokenizer) was built


# ----------------------------------------------------------------------------------------------
# broken samples of real data: counted across DataLoader workers, logged, warned once an epoch

REAL_RUN = dict(
    model_overrides={"vision": {"layers": 1}, "text": {"layers": 1, "vocab_size": 49408, "context_length": 77}},
    tokenizer="openai", batch_size=8, steps=5, warmup_steps=1, eval_tasks=[], progress=False, log_every=1, threads=1,
)


def _train_recording_skips(config: TrainConfig):
    import warnings

    from clipmini.data import SkippedSamplesWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(config)
    return result, [str(w.message) for w in caught if issubclass(w.category, SkippedSamplesWarning)]


def test_skipped_samples_are_counted_in_every_worker_logged_and_warned_each_epoch(tmp_path):
    csv = _write_csv_dataset(tmp_path)  # 20 good rows: 2 batches of 8 an epoch
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with open(csv, "a") as f:
        f.write("missing.png,a photo of nothing\nbroken.png,an undecodable image\n3.png,\n")
    logs = {}
    for workers in (0, 1, 2):
        out = tmp_path / f"workers-{workers}"
        config = TrainConfig(**REAL_RUN, data="csv", train_data=str(csv), data_workers=workers, out_dir=str(out))
        result, warned = _train_recording_skips(config)
        # 5 steps = epochs 0 and 1, and the first batch of epoch 2: one warning for each finished epoch
        assert warned == [
            f"epoch {epoch} of pairs.csv: skipped 3 of 23 samples (1 missing file, 1 undecodable image, 1 bad caption)"
            + warned[epoch][warned[epoch].index("; e.g."):] for epoch in (0, 1)
        ], warned
        assert all("missing.png [missing_file]" in w or "broken.png [undecodable_image]" in w for w in warned)
        logged = [r["skipped_samples"] for r in _log(out)]
        assert logged == sorted(logged) and logged[-1] == result.metrics["skipped_samples"]
        assert 3 <= logged[2] and 6 <= logged[-1] <= 9  # both finished epochs, and what epoch 2 skipped so far
        assert result.metrics["damaged_shards"] == 0
        logs[workers] = logged
    assert logs[0] == logs[1]  # one worker process counts exactly what the loop itself counts, batch by batch


def test_damaged_shards_are_counted_as_shards_in_the_log(tmp_path):
    import io
    import tarfile

    from PIL import Image

    def image(i):
        buf = io.BytesIO()
        Image.new("RGB", (36, 36), (20 * i, 100, 200)).save(buf, "PNG")
        return buf.getvalue()

    for shard, count in (("a", 12), ("b", 4)):
        with tarfile.open(tmp_path / f"{shard}.tar", "w") as tar:
            for i in range(count):
                for ext, data in (("png", image(i)), ("txt", f"a square number {i}".encode())):
                    info = tarfile.TarInfo(f"{shard}{i:03d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    with tarfile.open(tmp_path / "b.tar") as tar:
        cut = tar.getmembers()[4].offset  # before sample 2: samples 0 and 1 are read, the rest of shard b is lost
    (tmp_path / "b.tar").write_bytes((tmp_path / "b.tar").read_bytes()[:cut])
    config = TrainConfig(**dict(REAL_RUN, steps=2), data="webdataset", train_data=str(tmp_path / "{a,b}.tar"),
                         data_workers=1, out_dir=str(tmp_path / "run"))
    result, warned = _train_recording_skips(config)
    assert result.metrics["damaged_shards"] == 1 and result.metrics["skipped_samples"] == 0
    assert warned and "1 damaged shard (1 truncated shard), whose samples from the damage on are lost" in warned[0]
    assert "skipped" not in warned[0].split(":", 1)[1].split(";")[0]  # no shard counted as a sample


def test_siglip_bias_starts_where_the_config_says(tmp_path):
    """siglip_init_bias reaches SigLIPHead; one step at a tiny lr leaves b near its start."""
    config = TrainConfig(**WORLD_RUN, steps=1, loss="siglip", siglip_init_bias=-math.log(15), lr=1e-6, out_dir=None)
    result = train(config)
    assert result.siglip_head.logit_bias.item() == pytest.approx(-math.log(15), abs=1e-5)
    default = TrainConfig(**WORLD_RUN, steps=1, loss="siglip", lr=1e-6, out_dir=None)
    assert train(default).siglip_head.logit_bias.item() == pytest.approx(-10.0, abs=1e-5)
    with pytest.raises(ValueError, match="siglip_init_bias"):
        TrainConfig(**WORLD_RUN, loss="siglip", siglip_init_bias=float("-inf"))
