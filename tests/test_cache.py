"""The trained-model cache: a hit equals a fresh run bit for bit, keys separate configs, damage retrains."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import clipmini.cache as cache
from clipmini.cache import cache_entry, cache_key, code_fingerprint, default_cache_dir, load_or_train
from clipmini.train import TrainConfig, train

torch.set_num_threads(1)

CONFIG = TrainConfig(
    model_overrides={"vision": {"layers": 1}, "text": {"layers": 1}},
    steps=3, batch_size=16, warmup_steps=1, eval_tasks=["shape"], eval_n=50,
    progress=False, out_dir=None, threads=1,
)


@pytest.fixture
def count_trainings(monkeypatch):
    calls = []

    def counting(config):
        calls.append(config)
        return train(config)

    monkeypatch.setattr(cache, "train", counting)
    return calls


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_cached_and_fresh_models_are_identical(tmp_path, count_trainings):
    model, tokenizer, metrics = load_or_train(CONFIG, tmp_path)
    assert len(count_trainings) == 1 and cache_entry(CONFIG, tmp_path).is_dir()
    again, tokenizer_again, metrics_again = load_or_train(CONFIG, tmp_path)
    assert len(count_trainings) == 1  # a hit: nothing trained
    fresh = train(CONFIG)
    _same_weights(model, again)
    _same_weights(fresh.model, again)
    assert tokenizer_again.merges == tokenizer.merges == fresh.tokenizer.merges and tokenizer_again.merges
    assert metrics_again["eval"] == metrics["eval"] == fresh.metrics["eval"]
    assert metrics_again["history"] == metrics["history"]
    assert [r.get("loss") for r in metrics["history"]] == [r.get("loss") for r in fresh.history]
    assert not again.training
    assert [p.name for p in tmp_path.iterdir()] == [cache_entry(CONFIG, tmp_path).name]  # no leftovers


def test_keys_separate_configs_and_ignore_reporting_fields():
    key = cache_key(CONFIG)
    assert len(key) == 32
    assert cache_key(dataclasses.replace(CONFIG, steps=4)) != key
    assert cache_key(dataclasses.replace(CONFIG, lr=2e-3)) != key
    assert cache_key(dataclasses.replace(CONFIG, model="tiny-rn", model_overrides={})) != key
    assert cache_key(dataclasses.replace(CONFIG, world={"seed": 1})) != key
    # where and how a run reports does not change its weights
    assert cache_key(dataclasses.replace(CONFIG, out_dir="elsewhere", progress=True, log_every=5)) == key
    assert cache_key(TrainConfig.from_dict(CONFIG.to_dict())) == key
    # the same model and world spelled differently: one key
    spelled_out = dataclasses.replace(CONFIG, world={"seed": 0, "caption_style": "alt"},
                                      model_overrides={**CONFIG.model_overrides, "embed_dim": 64})
    assert cache_key(spelled_out) == key


def test_key_follows_the_code(monkeypatch):
    key = cache_key(CONFIG)
    monkeypatch.setattr(cache, "code_fingerprint", lambda: "0" * 64)
    assert cache_key(CONFIG) != key
    assert len(code_fingerprint()) == 64


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CLIPMINI_CACHE", str(tmp_path / "a"))
    assert default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("CLIPMINI_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "clipmini" / "models"


def test_a_corrupt_entry_is_retrained_not_loaded(tmp_path, count_trainings):
    model, _, _ = load_or_train(CONFIG, tmp_path)
    entry = cache_entry(CONFIG, tmp_path)
    weights = entry / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0x01  # one flipped bit in the last weight
    weights.write_bytes(bytes(blob))
    with pytest.warns(UserWarning, match="damaged"):
        again, _, _ = load_or_train(CONFIG, tmp_path)
    assert len(count_trainings) == 2
    _same_weights(model, again)
    # truncated, or its completion marker gone: the same
    (entry / "model.safetensors").write_bytes(b"")
    with pytest.warns(UserWarning, match="damaged"):
        load_or_train(CONFIG, tmp_path)
    (entry / "MANIFEST.json").unlink()
    with pytest.warns(UserWarning, match="damaged"):
        third, _, _ = load_or_train(CONFIG, tmp_path)
    assert len(count_trainings) == 4
    _same_weights(model, third)
    load_or_train(CONFIG, tmp_path)
    assert len(count_trainings) == 4  # repaired: a hit again


def test_anything_else_in_an_entrys_place_is_replaced_once_not_retrained_forever(tmp_path, count_trainings):
    entry = cache_entry(CONFIG, tmp_path)
    tmp_path.mkdir(exist_ok=True)
    entry.write_text("not a model")  # a plain file where the entry's folder belongs
    with pytest.warns(UserWarning, match="damaged"):
        model, _, _ = load_or_train(CONFIG, tmp_path)
    assert entry.is_dir() and len(count_trainings) == 1
    again, _, _ = load_or_train(CONFIG, tmp_path)
    assert len(count_trainings) == 1  # repaired: a hit
    _same_weights(model, again)
    import shutil

    shutil.rmtree(entry)
    entry.symlink_to(tmp_path / "nowhere")  # a dangling link
    with pytest.warns(UserWarning, match="damaged"):
        load_or_train(CONFIG, tmp_path)
    assert entry.is_dir() and not entry.is_symlink() and len(count_trainings) == 2


def test_an_entry_that_cannot_be_removed_is_reported(tmp_path, monkeypatch):
    entry = cache_entry(CONFIG, tmp_path)
    entry.mkdir(parents=True)  # an empty folder: no manifest, unusable

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(cache.shutil, "rmtree", refuse)
    with pytest.warns(UserWarning, match="damaged"), pytest.raises(
        OSError, match=r"cannot be used and cannot be removed .*Permission denied.*delete it by hand, or set CLIPMINI_CACHE"
    ):
        load_or_train(CONFIG, tmp_path)


def test_work_folders_of_killed_writers_are_cleaned(tmp_path, count_trainings):
    import os
    import subprocess
    import sys

    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()  # its pid no longer runs, as after a SIGKILL mid-store
    name = cache_entry(CONFIG, tmp_path).name
    stale = tmp_path / f".{name}.tmp-{finished.pid}-0123abcd"
    live = tmp_path / f".{name}.tmp-{os.getpid()}-89abcdef"  # a writer that still runs: this process
    for work in (stale, live):
        (work / "ckpt-000003").mkdir(parents=True)
        (work / "ckpt-000003" / "model.safetensors").write_bytes(b"half")
    load_or_train(CONFIG, tmp_path)
    assert not stale.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, live.name])


def test_data_workers_are_in_the_key_only_where_they_change_the_batches(tmp_path):
    assert cache_key(dataclasses.replace(CONFIG, data_workers=3)) == cache_key(CONFIG)  # the world: threads prefetch
    (tmp_path / "pairs.csv").write_text("filepath,title\n")
    real = TrainConfig(**{**CONFIG.to_dict(), "data": "csv", "train_data": str(tmp_path / "pairs.csv"), "tokenizer": "openai",
                          "model_overrides": {"text": {"vocab_size": 49408, "context_length": 77}}, "eval_tasks": []})
    # a DataLoader's workers split the samples among them: another number of workers, other batches
    assert cache_key(dataclasses.replace(real, data_workers=3)) != cache_key(real)
    assert cache_key(dataclasses.replace(real, overwrite=True, out_dir="x", log_every=7)) == cache_key(real)
