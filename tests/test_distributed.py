"""Scaling out: two gloo processes train exactly what one process trains on the concatenated batch;
the batch arithmetic; the cost model against the traffic and logits a real run makes.

The two-process runs go through the real trainer (`clipmini.train.train`: its DDP wrapper, per-rank
data from the caption world, `train_step` / `compute_gradients`), launched with torchrun's
environment variables by `clipmini.distributed.launch`.
"""

from __future__ import annotations

import math

import pytest
import torch

from clipmini.distributed import (
    BatchPlan,
    DistInfo,
    batch_plan,
    gather_cost,
    gather_worker,
    init_distributed,
    is_main_process,
    launch,
    overall_relative_difference,
    relative_difference,
    relative_differences,
    run_sequence,
    train_worker,
)
from clipmini.train import TrainConfig

TOLERANCE = 1e-5  # fp32: relative difference of every loss, gradient and weight tensor

# A real tiny CLIP (the book's ViT config): 5 optimizer steps of a global batch of 32 pairs.
RUN = dict(model="tiny-vit", batch_size=32, steps=5, warmup_steps=1, lr=1e-3, eval_tasks=[], out_dir=None,
           progress=False, log_every=1, device="cpu", threads=1, data_workers=0)
CASES = {
    "clip": RUN,
    "siglip": dict(RUN, loss="siglip", steps=3),
    "clip-accumulation": dict(RUN, micro_batch=8, steps=3),  # global micro-batch 8: 4 passes of 4 pairs per rank
}
BATCHNORM = dict(RUN, model="tiny-rn", steps=1)  # the ModifiedResNet normalizes with per-rank statistics
GATHER = dict(RUN, steps=1)


def _calls():
    configs = list(CASES.values()) + [BATCHNORM]
    return [(train_worker, (configs,)), (gather_worker, (GATHER,))]


@pytest.fixture(scope="module")
def runs():
    """Every run once: one process, then two (each rank's results)."""
    single = launch(run_sequence, 1, (_calls(), "cpu"))[0]
    double = launch(run_sequence, 2, (_calls(), "cpu"))
    names = list(CASES) + ["batchnorm"]

    def unpack(result):
        trained, gathered = result
        return dict(zip(names, trained)), gathered

    return unpack(single), [unpack(r) for r in double]


# ----------------------------------------------------------------------------------------------
# exactness of the whole training step


def _compared(differences: dict[str, float]):
    """Every tensor but the attention key biases: their gradient is rounding noise (zero in exact
    arithmetic), see test_key_bias_gradient_is_rounding_noise."""
    return [(name, error) for name, error in differences.items() if not name.endswith("in_proj_bias[k]")]


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_train_exactly_like_one_process(runs, case):
    (reference, _), ranks = runs
    ref = reference[case]
    steps = CASES[case]["steps"]
    ref_losses = [r["loss"] for r in ref["history"] if "loss" in r]
    assert len(ref_losses) == steps and len(ref["gradients"]) == steps
    for rank, (trained, _) in enumerate(ranks):
        got = trained[case]
        assert got["rank"] == rank and got["world_size"] == 2
        # the loss of every step is the global batch's (the log rounds it to 6 decimals)
        losses = [r["loss"] for r in got["history"] if "loss" in r]
        for step, (a, b) in enumerate(zip(losses, ref_losses)):
            assert abs(a - b) <= TOLERANCE * abs(b), f"{case} rank {rank} step {step + 1}: loss {a} vs {b}"
        # the first step (the same weights on both sides): every gradient tensor
        assert got["gradients"][0].keys() == ref["gradients"][0].keys() and len(ref["gradients"][0]) > 20
        for name, error in _compared(relative_differences(got["gradients"][0], ref["gradients"][0])):
            assert error <= TOLERANCE, f"{case} rank {rank}: first step's gradient of {name} off by {error:.2e}"
        # every step: the whole gradient (later steps start from weights that differ by rounding)
        for step, (grads, ref_grads) in enumerate(zip(got["gradients"], ref["gradients"])):
            error = overall_relative_difference(grads, ref_grads)
            assert error <= TOLERANCE, f"{case} rank {rank} step {step + 1}: gradient off by {error:.2e}"
        # and the weights after the last step: as a whole to 1e-5; tensor by tensor to 1e-3, because the
        # zero-initialized biases hold only a few AdamW steps, which divide each gradient element by its
        # own size, so elements whose gradient is near rounding noise move a little differently
        error = overall_relative_difference(got["state_dict"], ref["state_dict"])
        assert error <= TOLERANCE, f"{case} rank {rank}: weights off by {error:.2e} after {steps} steps"
        for name, error in _compared(relative_differences(got["state_dict"], ref["state_dict"])):
            assert error <= 1e-3, f"{case} rank {rank}: weights {name} off by {error:.2e} after {steps} steps"
    # the replicas hold the same weights, bit for bit (DDP applies one averaged gradient everywhere)
    first, second = ranks[0][0][case]["state_dict"], ranks[1][0][case]["state_dict"]
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_key_bias_gradient_is_rounding_noise(runs):
    """The one set of weights compared apart: a constant added to every key shifts a softmax row by a
    constant, so the key bias's true gradient is zero; what backward computes is rounding noise, and
    AdamW (which divides by the gradient's own scale) turns noise into steps that differ between runs."""
    (reference, _), _ = runs
    grads = reference["clip"]["gradients"][0]
    keys = [k for k in grads if k.endswith("in_proj_bias")]
    assert keys
    for name in keys:
        width = grads[name].numel() // 3
        q, k, v = grads[name].split(width)
        assert k.abs().max() <= 1e-6 * max(q.abs().max(), v.abs().max()), name


def test_batchnorm_breaks_the_equivalence(runs):
    """The ModifiedResNet's BatchNorm normalizes each rank's images with that rank's statistics, not the
    global batch's: the gradients differ well beyond float error (SyncBatchNorm would fix it)."""
    (reference, _), ranks = runs
    ref = reference["batchnorm"]["gradients"][0]
    got = ranks[0][0]["batchnorm"]["gradients"][0]
    bn = [k for k in ref if ".bn" in k or "downsample.2" in k]
    assert bn
    worst = max(relative_differences(got, ref).values())
    assert worst > 1e-3, f"per-rank BatchNorm statistics should change the gradients; worst difference {worst:.1e}"


# ----------------------------------------------------------------------------------------------
# the batch arithmetic: micro-batch x accumulation x world size


@pytest.mark.parametrize(
    "batch_size, micro_batch, world_size, local, micro, accumulation",
    [
        (8192, 256, 1, 8192, 256, 32),  # one process, far beyond memory for a plain batch
        (8192, 512, 2, 4096, 256, 16),  # two ranks: each holds half, in micro-batches of 256
        (32768, None, 256, 128, 128, 1),  # the paper: 256 GPUs, no accumulation
        (32, 8, 2, 16, 4, 4),
    ],
)
def test_batch_plan(batch_size, micro_batch, world_size, local, micro, accumulation):
    config = TrainConfig(batch_size=batch_size, micro_batch=micro_batch)
    plan = batch_plan(config, world_size)
    assert plan == BatchPlan(world_size, batch_size, local, micro, accumulation)
    assert plan.effective_batch == micro * accumulation * world_size == batch_size
    assert plan.negatives == batch_size - 1


def test_batch_plan_rejects_sizes_that_do_not_split():
    with pytest.raises(ValueError, match=r"'micro_batch' \(128\) must be a multiple of the world size \(256\)"):
        batch_plan(TrainConfig(batch_size=8192, micro_batch=128), 256)  # 128 pairs cannot split over 256 GPUs
    with pytest.raises(ValueError, match=r"'batch_size' \(100\) must be a multiple of the world size \(8\)"):
        batch_plan(TrainConfig(batch_size=100), 8)
    with pytest.raises(ValueError, match="world_size must be an int >= 1"):
        batch_plan(TrainConfig(), 0)


def test_accumulation_under_ddp_runs_the_planned_passes(runs):
    """Each rank makes `accumulation_steps` passes with gradient of `micro_batch` pairs per step."""
    config = TrainConfig.from_dict(CASES["clip-accumulation"])
    plan = batch_plan(config, 2)
    assert (plan.micro_batch, plan.accumulation_steps) == (4, 4)
    for trained, _ in runs[1]:
        passes = trained["clip-accumulation"]["forward_batch_sizes"]
        assert passes == [plan.micro_batch] * (plan.accumulation_steps * config.steps)
    (reference, _), _ = runs
    single = batch_plan(config, 1)
    assert reference["clip-accumulation"]["forward_batch_sizes"] == [single.micro_batch] * (single.accumulation_steps * config.steps)
    assert reference["clip"]["forward_batch_sizes"] == [32] * CASES["clip"]["steps"]  # no accumulation: one pass


# ----------------------------------------------------------------------------------------------
# the gather, and its cost


def test_the_gather_with_gradient_is_what_makes_ranks_exact(runs):
    (_, reference), ranks = runs
    ref = next(r for r in reference if r["gather"])
    for rank, (_, gathered) in enumerate(ranks):
        exact = next(r for r in gathered if r["gather"])
        local = next(r for r in gathered if not r["gather"])
        assert exact["loss"] == pytest.approx(ref["loss"], rel=TOLERANCE)
        assert max(error for _, error in _compared(relative_differences(exact["gradients"], ref["gradients"]))) <= TOLERANCE
        # without the gather each rank's loss is its own 16x16 block: smaller, and other gradients
        assert local["loss"] < ref["loss"] - 0.2, (local["loss"], ref["loss"])
        lost = relative_difference(local["gradients"]["clip.visual.proj"], ref["gradients"]["clip.visual.proj"])
        assert lost > 0.05, f"rank {rank}: gradients without the gather should differ; got {lost:.1e}"


def test_cost_model_matches_the_measured_traffic_and_logits(runs):
    (_, reference), ranks = runs
    config = TrainConfig.from_dict(GATHER)
    E = config.clip_config().embed_dim
    alone = gather_cost(config.batch_size, 1, E)
    ref = next(r for r in reference if r["gather"])
    assert ref["collectives"] == []  # one process: nothing to move
    assert sum(math.prod(s) for s in ref["logits_shapes"]) * 4 == alone.logits_bytes
    cost = gather_cost(config.batch_size, 2, E)
    for _, gathered in ranks:
        run = next(r for r in gathered if r["gather"])
        n, N = config.batch_size // 2, config.batch_size
        # the features: two [n, E] fp32 all-gathers forward, two [N, E] all-reduces backward
        features = [c for c in run["collectives"] if c["op"] == "all_gather" and c["shape"] == (n, E)]
        reduced = [c for c in run["collectives"] if c["op"] == "all_reduce" and c["shape"] == (N, E)]
        assert len(features) == 2 and len(reduced) == 2
        assert sum(c["received_bytes"] for c in features) == cost.forward_gather_bytes
        assert sum(c["nbytes"] for c in reduced) == cost.backward_reduce_bytes
        # the rest is bookkeeping: the batch-size check and the global loss value
        rest = [c for c in run["collectives"] if c not in features and c not in reduced]
        assert sum(c["nbytes"] for c in rest) <= 16
        # the logits: this rank's rows against all columns, both directions
        assert run["logits_shapes"] == [(n, N), (n, N)]
        assert sum(math.prod(s) for s in run["logits_shapes"]) * 4 == cost.logits_bytes


def test_gather_cost_by_hand():
    c = gather_cost(32768, 256, 768, bytes_per_elem=2)  # the paper's batch on 256 GPUs, fp16 features
    assert c.local_batch == 128
    assert c.forward_gather_bytes == 2 * 255 * 128 * 768 * 2
    assert c.backward_reduce_bytes == 2 * 32768 * 768 * 2
    assert c.logits_bytes == 2 * 128 * 32768 * 2
    assert c.single_process_logits_bytes == 32768 * 32768 * 2
    assert c.wire_bytes == c.forward_gather_bytes + 2 * 2 * 255 * 128 * 768 * 2
    s = gather_cost(32768, 256, 768, bytes_per_elem=2, loss="siglip")  # texts only, one direction
    assert (s.forward_gather_bytes, s.logits_bytes) == (c.forward_gather_bytes // 2, c.logits_bytes // 2)
    alone = gather_cost(1024, 1, 64)
    assert (alone.forward_gather_bytes, alone.wire_bytes, alone.logits_bytes) == (0, 0, 1024 * 1024 * 4)
    with pytest.raises(ValueError, match=r"batch \(100\) must be a multiple of world_size \(8\)"):
        gather_cost(100, 8, 64)
    with pytest.raises(ValueError, match="loss must be 'clip' or 'siglip'"):
        gather_cost(64, 2, 64, loss="infonce")


# ----------------------------------------------------------------------------------------------
# the process group's plumbing


def test_without_torchrun_there_is_no_group(monkeypatch):
    for key in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(key, raising=False)
    assert init_distributed("cpu") == DistInfo()
    assert is_main_process()
    monkeypatch.setenv("RANK", "1")
    assert not is_main_process()


def test_a_partial_torchrun_environment_is_explained(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match=r"WORLD_SIZE=2 but MASTER_ADDR, MASTER_PORT not set: start the job with torchrun"):
        init_distributed("cpu")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match=r"WORLD_SIZE='two' must be an integer"):
        init_distributed("cpu")


def test_launch_raises_a_rank_error_and_refuses_unimportable_functions():
    with pytest.raises(Exception, match=r"batch \(3\) must be a multiple of world_size \(2\)"):
        launch(gather_cost, 1, (3, 2, 8))  # raised inside the spawned process, reported here
    with pytest.raises(ValueError, match="spawned processes can import"):
        launch(lambda: 1, 1)
