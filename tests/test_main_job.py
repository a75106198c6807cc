"""The book's main job is one recipe in three places: `clipmini.train.main_job_config()`, the parameters
of notebooks/07_training.ipynb, and params/train-tiny.yaml. Later chapters load the model the chapter
trained through `load_or_train(main_job_config())`, so the three must name the same cache entry."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nbformat
import papermill
import pytest

import clipmini
from clipmini.cache import cache_key
from clipmini.train import MAIN_JOB, TrainConfig, main_job_config

ROOT = Path(__file__).resolve().parent.parent
CHAPTER = ROOT / "notebooks" / "07_training.ipynb"
PROFILE = ROOT / "params" / "train-tiny.yaml"


def chapter_config(monkeypatch, **parameters) -> TrainConfig:
    """The `config` the chapter builds: its parameters cell, papermill-style overrides, its next cell.

    The cell after the parameters only imports, seeds and builds the config (the chapter keeps it so),
    which is what makes running it here cheap. Seeding is recorded instead of done (it would switch on
    deterministic algorithms for the rest of this test process).
    """
    seeds: list[int] = []
    monkeypatch.setattr(clipmini, "seed_everything", seeds.append)
    nb = nbformat.read(CHAPTER, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []), "the first code cell must be the parameters cell"
    namespace: dict = {}
    exec(code[0].source, namespace)
    namespace.update(parameters)  # what papermill's injected cell does
    exec(code[1].source, namespace)
    config = namespace.get("config")
    assert isinstance(config, TrainConfig), "the cell after the parameters must build `config` (a TrainConfig)"
    assert seeds == [namespace["seed"]], "the chapter must seed everything with its seed before training"
    return config


def test_the_chapter_builds_the_main_job(monkeypatch):
    assert chapter_config(monkeypatch) == main_job_config()


@pytest.mark.parametrize("parameters", [{"seed": 1}, {"seed": 2}, {"steps": 40, "batch_size": 64}, {"lr": 1e-3}])
def test_chapter_parameters_change_the_same_fields(monkeypatch, parameters):
    config = chapter_config(monkeypatch, **parameters)
    assert config == main_job_config(**parameters)
    assert cache_key(config) != cache_key(main_job_config())  # a different run, a different cache entry


def test_the_chapter_declares_the_recipe_knobs_with_the_main_jobs_defaults():
    declared = papermill.inspect_notebook(str(CHAPTER))
    config = main_job_config()
    for name in ("seed", "device", "steps", "batch_size", "lr", "warmup_steps", "weight_decay", "precision", "threads"):
        assert name in declared, f"07_training does not declare the parameter {name!r}"
        default = json.loads(json.dumps(eval(declared[name]["default"])))  # the literal in the cell
        assert default == getattr(config, name), f"07_training's {name} = {default!r}, main_job_config has {getattr(config, name)!r}"
    tau = eval(declared["tau_init"]["default"])
    assert math.isclose(math.exp(-config.clip_config().init_logit_scale), tau)
    assert eval(declared["model"]["default"]) == config.model


def test_the_yaml_profile_trains_the_same_model():
    profile = TrainConfig.from_yaml(PROFILE)
    assert cache_key(profile) == cache_key(main_job_config())
    # and only fields that never change the weights differ
    differing = {k for k, v in profile.to_dict().items() if v != main_job_config().to_dict()[k]}
    assert differing <= {"out_dir", "progress", "log_every", "checkpoint_every", "keep_checkpoints", "resume", "data_workers"}


def test_overrides_apply_and_main_job_stays_unchanged():
    before = json.dumps(MAIN_JOB, sort_keys=True)
    config = main_job_config(steps=10, world={"domains": ["flat", "photo"]})
    assert config.steps == 10 and config.world_config().domains == ("flat", "photo")
    assert main_job_config().steps == MAIN_JOB["steps"]
    config.world["domains"].append("sketch")  # the returned config is the caller's own copy
    assert json.dumps(MAIN_JOB, sort_keys=True) == before


def test_a_misspelled_override_names_the_field():
    with pytest.raises(ValueError, match="did you mean 'batch_size'"):
        main_job_config(batchsize=64)
    with pytest.raises(TypeError, match="'steps' must be int"):
        main_job_config(steps="900")


def test_the_main_job_is_the_small_model_the_chapter_describes():
    config = main_job_config()
    clip = config.clip_config()
    assert clip.vision.patch_size is None, "the main job's image tower is a ModifiedResNet"
    assert clip.vision.image_size == config.world_config().image_size == 32
    assert config.eval_tasks[0] == "color_shape" and config.eval_n == 1000
    assert config.world_config().heldout_matrix().sum() == 10  # 10 of the 100 color x shape pairs never seen
