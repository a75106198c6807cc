"""One TrainConfig from three doors (CLI flags, YAML profiles, papermill-style dicts), strict checks,
and the command line run end to end, alone and under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clipmini.checkpoint import latest_checkpoint, load_checkpoint
from clipmini.train import TrainConfig, build_parser, main, parse_args, train

ROOT = Path(__file__).resolve().parents[1]
PROFILES = sorted((ROOT / "params").glob("train-*.yaml"))

VALUES = {
    "model": "tiny-rn",
    "model_overrides": {"vision": {"width": 32}, "text": {"layers": 1}},
    "world": {"seed": 3, "caption_style": "label"},
    "steps": 500,
    "batch_size": 128,
    "micro_batch": 32,
    "lr": 1e-3,
    "weight_decay": 0.2,
    "grad_clip": None,
    "precision": "bf16",
    "grad_checkpointing": True,
    "fixed_tau": 0.05,
    "eval_tasks": ["shape", "color_shape"],
    "progress": False,
    "out_dir": None,
    "resume": True,
    "on_nonfinite": "stop",
}

YAML_TEXT = """
model: tiny-rn
model_overrides: {vision: {width: 32}, text: {layers: 1}}
world:
  seed: 3
  caption_style: label
steps: 500
batch_size: 128
micro_batch: 32
lr: 1e-3            # PyYAML alone would read this as the string '1e-3'
weight_decay: 0.2
grad_clip: null
precision: bf16
grad_checkpointing: true
fixed_tau: 0.05
eval_tasks: [shape, color_shape]
progress: false
out_dir: null
resume: true
on_nonfinite: stop
"""

ARGV = [
    "--model", "tiny-rn",
    "--model_overrides", "{vision: {width: 32}, text: {layers: 1}}",
    "--world", '{"seed": 3, "caption_style": "label"}',
    "--steps", "500",
    "--batch-size", "128",
    "--micro_batch", "32",
    "--lr", "1e-3",
    "--weight_decay", "0.2",
    "--grad_clip", "none",
    "--precision", "bf16",
    "--grad_checkpointing",
    "--fixed_tau", "0.05",
    "--eval_tasks", "shape", "color_shape",
    "--no-progress",
    "--out_dir", "none",
    "--resume", "true",
    "--on_nonfinite", "stop",
]


def test_cli_yaml_and_dict_give_the_same_config(tmp_path):
    profile = tmp_path / "x.yaml"
    profile.write_text(YAML_TEXT)
    from_dict = TrainConfig.from_sources(overrides=VALUES)
    from_yaml = TrainConfig.from_yaml(profile)
    from_cli = parse_args(ARGV)
    assert from_dict == from_yaml == from_cli
    assert from_dict.lr == 1e-3 and isinstance(from_yaml.lr, float)
    assert from_dict.steps == 500 and from_dict.out_dir is None and from_dict.resume is True
    # the same values split over a profile and overrides: later sources win
    partial = tmp_path / "partial.yaml"
    partial.write_text("model: tiny-vit\nsteps: 7\nlr: 0.5\n")
    mixed = TrainConfig.from_sources(partial, {k: v for k, v in VALUES.items() if k != "steps"} | {"steps": 500})
    assert mixed == from_dict
    assert parse_args(["--config", str(partial), "--steps", "9"]).steps == 9
    assert parse_args(["--config", str(partial)]).lr == 0.5
    # a round trip through to_dict
    assert TrainConfig.from_dict(from_dict.to_dict()) == from_dict


def test_every_field_is_a_flag():
    parser = build_parser()
    flags = {a.dest for a in parser._actions}
    for name in TrainConfig.__dataclass_fields__:
        assert name in flags, name
    help_text = parser.format_help()
    assert "--micro_batch" in help_text and "--micro-batch" in help_text
    assert "global batch per step" in help_text  # help comes from the field's comment


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_profiles_are_valid_configs(profile):
    config = TrainConfig.from_yaml(profile)
    assert config.steps >= 1


def test_unknown_keys_are_rejected_with_a_suggestion(tmp_path):
    bad = tmp_path / "x.yaml"
    bad.write_text("stpes: 10\nlr: 1e-3\n")
    with pytest.raises(ValueError, match=r"unknown key 'stpes' in .*x\.yaml \(did you mean 'steps'\?\)"):
        TrainConfig.from_yaml(bad)
    with pytest.raises(ValueError, match=r"unknown key 'batchsize' in overrides \(did you mean 'batch_size'\?\)"):
        TrainConfig.from_sources(overrides={"batchsize": 4})
    with pytest.raises(ValueError, match="unknown key 'zzz'"):
        TrainConfig.from_dict({"zzz": 1})
    with pytest.raises(ValueError, match=r"model_overrides.*VisionConfig.*'widht'"):
        TrainConfig(model_overrides={"vision": {"widht": 3}})
    with pytest.raises(ValueError, match=r"unknown key\(s\) in 'world': 'sed' \(did you mean 'seed'\?\)"):
        TrainConfig(world={"sed": 1})
    with pytest.raises(ValueError, match=r"'world' does not make a valid caption world: .*caption_style"):
        TrainConfig(world={"caption_style": "poetry"})
    with pytest.raises(SystemExit):
        parse_args(["--stpes", "3"])


def test_wrong_types_are_rejected_naming_the_field(tmp_path):
    with pytest.raises(TypeError, match=r"'steps' must be int, got str '10'"):
        TrainConfig.from_dict({"steps": "10"})
    bad = tmp_path / "y.yaml"
    bad.write_text("batch_size: 1.5\n")
    with pytest.raises(TypeError, match=r"'batch_size' must be int, got float 1\.5 \(in .*y\.yaml\)"):
        TrainConfig.from_yaml(bad)
    with pytest.raises(TypeError, match=r"'progress' must be bool, got int 1"):
        TrainConfig.from_dict({"progress": 1})
    with pytest.raises(TypeError, match=r"'micro_batch' must be int or None, got str"):
        TrainConfig.from_dict({"micro_batch": "8"})
    with pytest.raises(TypeError, match=r"'eval_tasks\[1\]' must be str, got int 3"):
        TrainConfig.from_dict({"eval_tasks": ["shape", 3]})
    with pytest.raises(ValueError, match=r"'precision' must be one of 'fp32', 'bf16', 'fp16', got 'fp8'"):
        TrainConfig.from_dict({"precision": "fp8"})
    assert TrainConfig.from_dict({"lr": 1}).lr == 1.0  # an int is a fine float


@pytest.mark.parametrize(
    "values, message",
    [
        ({"batch_size": 100, "micro_batch": 30}, r"'batch_size' \(100\) must be divisible by 'micro_batch' \(30\)"),
        ({"steps": 0}, r"'steps' must be >= 1, got 0"),
        ({"lr": -1.0}, r"'lr' must be a finite number > 0"),
        ({"beta2": 1.0}, r"'beta2' must be in \[0, 1\)"),
        ({"fixed_tau": 0.0}, r"'fixed_tau' must be a temperature > 0"),
        ({"model": "ViT-Z/99"}, r"'model' must be one of"),
        ({"data": "csv"}, r"needs 'train_data'"),
        ({"keep_checkpoints": 0}, r"'keep_checkpoints' must be >= 1"),
        ({"eval_tasks": ["colour_shape"]}, r"'eval_tasks' has unknown task\(s\) \['colour_shape'\]"),
        ({"out_dir": ""}, r"'out_dir' must be a folder or None \(write nothing\), got ''"),
        ({"resume": ""}, r"'resume' must be true, false or the path of a checkpoint"),
    ],
)
def test_impossible_values_are_rejected(values, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(values)


def test_world_size_must_divide_the_batches():
    config = TrainConfig(batch_size=6, micro_batch=3)
    config.check_world_size(3)
    with pytest.raises(ValueError, match=r"'batch_size' \(6\) must be a multiple of the world size \(4\)"):
        config.check_world_size(4)
    with pytest.raises(ValueError, match=r"'micro_batch' \(3\) must be a multiple of the world size \(2\)"):
        config.check_world_size(2)
    with pytest.raises(ValueError, match="world size"):
        TrainConfig(batch_size=2).check_world_size(4)


# ----------------------------------------------------------------------------------------------
# end to end in subprocesses

TINY = ["--model_overrides", "{text: {layers: 1}}", "--batch_size", "16", "--eval_n", "100", "--threads", "1",
        "--warmup_steps", "1", "--log_every", "1", "--no-progress"]


# The exactness check needs a ViT: a ModifiedResNet's BatchNorm normalizes with each rank's own statistics.
VIT = ["--model", "tiny-vit", "--model_overrides", "{vision: {layers: 1}, text: {layers: 1}}"]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return env


def test_cli_runs_end_to_end(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "clipmini.train", "--config", str(ROOT / "params" / "train-tiny.yaml"),
           "--steps", "3", "--out_dir", str(out), *TINY]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all(r["loss"] > 0 and 0 < r["tau"] <= 1 and r["samples_per_s"] >= 0 for r in steps)  # (any speed)
    assert steps[-1]["samples_seen"] == 48
    evals = [r for r in records if "eval" in r]
    assert evals and 0.0 <= evals[-1]["eval"]["color_shape"]["top1"] <= 1.0
    checkpoint = latest_checkpoint(out)
    assert checkpoint is not None and checkpoint.name == "ckpt-000003"
    assert load_checkpoint(checkpoint, restore_rng=False).config["steps"] == 3
    assert json.loads(proc.stdout.strip().splitlines()[-1])["steps"] == 3  # the final metrics line
    saved = json.loads((out / "config.json").read_text())
    assert TrainConfig.from_dict(saved) == parse_args(
        ["--config", str(ROOT / "params" / "train-tiny.yaml"), "--steps", "3", "--out_dir", str(out), *TINY]
    )


def test_cli_reports_bad_values_clearly(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--steps", "0"])
    assert info.value.code == 2 and "'steps' must be >= 1, got 0" in capsys.readouterr().err
    assert main(["--steps", "5", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 5


def test_torchrun_two_processes_on_cpu(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "clipmini.train", "--config", str(ROOT / "params" / "train-tiny.yaml"),
           "--steps", "2", "--out_dir", str(out), "--device", "cpu", *TINY, "--micro_batch", "8", "--eval_tasks",
           *VIT]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]  # one log, written by rank 0 only
    assert records[-1]["samples_seen"] == 32  # the global batch of 16, twice
    assert latest_checkpoint(out).name == "ckpt-000002"
    # two ranks with accumulation train what one process trains on the same global batches: the
    # updates (final - initial weights, the same seeded init in both) agree to float error
    from safetensors.torch import load_file

    from clipmini.seeding import seed_everything
    from clipmini.train import make_model

    config = TrainConfig.from_sources(
        ROOT / "params" / "train-tiny.yaml",
        {"steps": 2, "out_dir": None, "device": "cpu", "model": "tiny-vit", "model_overrides": {"vision": {"layers": 1}, "text": {"layers": 1}},
         "batch_size": 16, "eval_tasks": [], "warmup_steps": 1, "log_every": 1, "progress": False, "threads": 1},
    )
    single = train(config).model.state_dict()
    seed_everything(config.seed)
    initial = make_model(config).state_dict()
    ddp = load_file(str(out / "ckpt-000002" / "model.safetensors"))
    update_single = torch.cat([(single[k] - initial[k]).flatten() for k in initial])
    update_ddp = torch.cat([(ddp[k] - initial[k]).flatten() for k in initial])
    assert update_single.norm() > 0
    assert (update_ddp - update_single).norm() / update_single.norm() < 1e-3


def test_cli_stops_with_one_line_and_a_nonzero_status(tmp_path, capsys):
    """A folder holding another run, an unusable out_dir, a diverging run: one line on stderr, no traceback."""
    taken = tmp_path / "taken"
    train(TrainConfig(**{"model_overrides": {"text": {"layers": 1}}, "batch_size": 16, "eval_tasks": [], "steps": 1,
                         "threads": 1, "progress": False, "out_dir": str(taken)}))
    (tmp_path / "a-file").write_text("")
    cases = [
        (["--out_dir", str(taken)], 2, f"error: out_dir {taken} already holds a run (ckpt-000001, metrics.jsonl); continue it"),
        (["--out_dir", str(tmp_path / "a-file")], 2, "is a file, not a folder"),
        (["--out_dir", str(tmp_path / "nan"), "--lr", "1e30", "--eval_tasks"], 1, "3 non-finite steps in a row, the last at step 3"),
    ]
    for flags, status, message in cases:
        assert main(["--steps", "5", *TINY, *flags]) == status
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("python -m clipmini.train: error: ") and message in lines[0], err
    missing = tmp_path / "nowhere" / "ckpt-000003"
    assert main(["--steps", "1", *TINY, "--out_dir", str(tmp_path / "new"), "--resume", str(missing)]) == 2
    assert f"error: resume='{missing}': {missing} is not a checkpoint folder" in capsys.readouterr().err
    assert parse_args(["--overwrite"]).overwrite is True and parse_args([]).overwrite is False
    assert main(["--steps", "1", *TINY, "--eval_tasks", "--out_dir", str(taken), "--overwrite"]) == 0
    assert [p.name for p in sorted(taken.glob("ckpt-*"))] == ["ckpt-000001"]


def test_torchrun_logs_the_skipped_samples_of_every_rank(tmp_path):
    from test_train import _write_csv_dataset

    csv = _write_csv_dataset(tmp_path, 32)  # 16 good rows a rank: two batches of 8 an epoch on each
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with open(csv, "a") as f:  # rows 33-36: the ranks take every other row, so two broken ones each
        f.write("missing.png,a photo of nothing\nbroken.png,an undecodable image\n3.png,\nmissing2.png,gone\n")
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "clipmini.train",
           "--model_overrides", "{vision: {layers: 1}, text: {layers: 1, vocab_size: 49408, context_length: 77}}",
           "--tokenizer", "openai", "--data", "csv", "--train_data", str(csv), "--batch_size", "16", "--steps", "3",
           "--warmup_steps", "1", "--eval_tasks", "--no-progress", "--log_every", "1", "--threads", "1",
           "--device", "cpu", "--data_workers", "1", "--out_dir", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logged = [json.loads(line)["skipped_samples"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    # step 3 reads epoch 1's first batch: epoch 0 is over, with its two broken rows on each rank, summed
    assert logged == sorted(logged) and 4 <= logged[-1] <= 8
    assert proc.stderr.count("SkippedSamplesWarning: epoch 0 of pairs.csv: skipped 2 of 18 samples") == 2  # one per rank
