"""Bad input across the public API gets a clear error that names the problem, or is skipped and counted.

One table of (call, bad input, exception type, words the message must contain). It holds only the cases
the module owners' tests do not already check; those are listed in the module tests (test_towers.py's
`test_bad_images_raise`/`test_bad_tokens_raise`, test_losses.py's `test_bad_inputs_raise_clear_errors`,
test_train_cli.py's unknown-key, wrong-type and impossible-value tables, test_tokenizer.py's bad-input
section, test_data_world.py's config table, test_loading.py's bad files, test_zeroshot.py and test_eval.py).
"""

from __future__ import annotations

import io
import math
import tarfile
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

import clipmini
from clipmini import eval as clip_eval
from clipmini import jobs, zeroshot
from clipmini.cache import load_or_train
from clipmini.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from clipmini.config import CLIPConfig, TextConfig, VisionConfig, get_config
from clipmini.data import CaptionWorld, CsvImageText, SkippedSamplesWarning, WebDatasetImageText, WorldConfig, clip_transform
from clipmini.losses import clip_loss, siglip_loss
from clipmini.model import build_model, create_model, load, save
from clipmini.train import TrainConfig

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = sorted((ROOT / "notebooks").glob("*.ipynb"))[0]  # any chapter: every one declares seed/device/results_dir
NAN, INF = math.nan, math.inf


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("tiny-vit").eval()  # images [B, 3, 32, 32], tokens [B, <=32], vocab 1024


@pytest.fixture
def env(model, tmp_path):
    return SimpleNamespace(model=model, tmp=tmp_path)


def _images(*shape, dtype=torch.float32, fill=None):
    x = torch.randn(*shape).to(dtype) if not dtype.is_complex else torch.randn(*shape, dtype=dtype)
    if fill is not None:
        x.view(-1)[0] = fill  # one bad value is enough
    return x


def _features(n=4, e=8, fill=None):
    x = torch.nn.functional.normalize(torch.randn(n, e, generator=torch.Generator().manual_seed(n)), dim=-1)
    if fill is not None:
        x[1, 2] = fill
    return x


def _write(env, name, text):
    path = env.tmp / name
    path.write_text(text)
    return path


def _saved_tiny_vit(env):
    return save(env.model, env.tmp / "tiny-vit.safetensors")


# (id, call, exception type, regex that must appear in the message)
CASES = [
    # ---- texts
    ("text: truncate given as a string", lambda e: clipmini.tokenize("a cat", truncate="false"),
     TypeError, r"truncate must be True or False; got str 'false'"),
    ("text: too long without truncation, through build_classifier",
     lambda e: zeroshot.build_classifier(e.model, clipmini.tokenize, ["dog " * 40], ["a photo of a {}."]),
     ValueError, r"texts\[0\] is too long: it makes more than context_length=32 tokens .*truncate=True"),
    # ---- images
    ("image: one +inf pixel", lambda e: e.model.encode_image(_images(2, 3, 32, 32, fill=INF)),
     ValueError, r"image contains NaN or infinite values"),
    ("image: one -inf pixel through forward",
     lambda e: e.model(_images(1, 3, 32, 32, fill=-INF), torch.ones(1, 32, dtype=torch.long)),
     ValueError, r"image contains NaN or infinite values"),
    ("image: channels last [B, R, R, 3]", lambda e: e.model.encode_image(_images(2, 32, 32, 3)),
     ValueError, r"image must be \[B, 3, 32, 32\] for this model; got \[B, 32, 32, 3\]"),
    ("image: 5-D", lambda e: e.model.encode_image(_images(1, 2, 3, 32, 32)),
     ValueError, r"image must be \[B, 3, 32, 32\] for this model; got a 5-D tensor"),
    ("image: complex dtype", lambda e: e.model.encode_image(_images(1, 3, 32, 32, dtype=torch.complex64)),
     TypeError, r"floating-point tensor; got torch.complex64"),
    ("image: numpy array", lambda e: e.model.encode_image(_images(1, 3, 32, 32).numpy()),
     TypeError, r"image must be a torch.Tensor \[B, 3, 32, 32\]; got ndarray"),
    # ---- token tensors
    ("tokens: OpenAI ids (49,408-word vocabulary) into a 1,024-word model",
     lambda e: e.model.encode_text(clipmini.tokenize(["a photo of a dog"], context_length=32)),
     ValueError, r"token ids must be in \[0, vocab_size=1024\); got min 0, max 49407"),
    ("tokens: zero length", lambda e: e.model.encode_text(torch.zeros(2, 0, dtype=torch.long)),
     ValueError, r"0 < L <= context_length=32; got length 0"),
    ("tokens: complex dtype", lambda e: e.model.encode_text(torch.zeros(1, 32, dtype=torch.complex64)),
     TypeError, r"integer tensor of token ids; got torch.complex64"),
    # ---- model configs
    ("CLIPConfig: context_length 1 leaves no room for SOT and EOT", lambda e: TextConfig(context_length=1),
     ValueError, r"TextConfig.context_length must be >= 2"),
    ("CLIPConfig: NaN init_logit_scale", lambda e: CLIPConfig(init_logit_scale=NAN),
     ValueError, r"init_logit_scale must be finite; got nan"),
    ("CLIPConfig: quick_gelu as 1", lambda e: CLIPConfig(quick_gelu=1),
     TypeError, r"CLIPConfig.quick_gelu must be a bool; got 1"),
    ("CLIPConfig: from_dict of a list", lambda e: CLIPConfig.from_dict(["embed_dim", 64]),
     TypeError, r"CLIPConfig.from_dict expects a dict; got list"),
    ("CLIPConfig: patch_size 0", lambda e: VisionConfig(patch_size=0),
     ValueError, r"VisionConfig.patch_size must be positive; got 0"),
    ("CLIPConfig: embed_dim as a string", lambda e: CLIPConfig(embed_dim="512"),
     TypeError, r"CLIPConfig.embed_dim must be an int; got str '512'"),
    ("create_model: neither name nor config", lambda e: create_model(42),
     TypeError, r"create_model expects a model name, a CLIPConfig or a dict; got int"),
    # ---- caption-world configs and calls
    ("WorldConfig: negative seed", lambda e: WorldConfig(seed=-1),
     ValueError, r"WorldConfig.seed must be in \[0, \d+\]; got -1"),
    ("WorldConfig: NaN rate", lambda e: WorldConfig(noise_rate=NAN),
     ValueError, r"WorldConfig.noise_rate must be in \[0, 1\]; got nan"),
    ("WorldConfig: image_size as a float", lambda e: WorldConfig(image_size=32.0),
     TypeError, r"WorldConfig.image_size must be an int; got float 32.0"),
    ("WorldConfig: from_dict of a list", lambda e: WorldConfig.from_dict([1]),
     TypeError, r"WorldConfig.from_dict expects a dict; got list"),
    ("CaptionWorld.batch: fractional step", lambda e: CaptionWorld().batch(0.5, 4),
     TypeError, r"index must be an int; got float 0.5"),
    ("CaptionWorld.task: no images", lambda e: CaptionWorld().task("shape", n=0),
     ValueError, r"n must be a positive int; got 0"),
    # ---- training configs (papermill parameters and CLI flags arrive through from_dict/from_sources)
    ("TrainConfig: NaN lr", lambda e: TrainConfig.from_dict({"lr": NAN}),
     ValueError, r"'lr' must be a finite number > 0, got nan"),
    ("TrainConfig: NaN beta1", lambda e: TrainConfig.from_dict({"beta1": NAN}),
     ValueError, r"'beta1' must be in \[0, 1\), got nan"),
    ("TrainConfig: NaN eps", lambda e: TrainConfig.from_dict({"eps": NAN}), ValueError, r"'eps' must be > 0, got nan"),
    ("TrainConfig: NaN grad_clip", lambda e: TrainConfig.from_dict({"grad_clip": NAN}),
     ValueError, r"'grad_clip' must be > 0 or None, got nan"),
    ("TrainConfig: on_nonfinite not skip/stop", lambda e: TrainConfig.from_dict({"on_nonfinite": "ignore"}),
     ValueError, r"'on_nonfinite' must be one of 'skip', 'stop', got 'ignore'"),
    ("TrainConfig: resume as a step number", lambda e: TrainConfig.from_dict({"resume": 3}),
     TypeError, r"'resume' must be bool or str, got int 3"),
    ("TrainConfig: world as a list", lambda e: TrainConfig.from_dict({"world": [1]}),
     TypeError, r"'world' must be dict, got list"),
    ("TrainConfig: parameters as a list of pairs", lambda e: TrainConfig.from_dict([("steps", 1)]),
     TypeError, r"overrides must be a mapping of TrainConfig fields; got list"),
    ("TrainConfig: world image size differs from the model's", lambda e: TrainConfig(world={"image_size": 64}),
     ValueError, r"world.image_size=64 differs from the model's image_size=32"),
    ("TrainConfig: a CSV with the world's tokenizer", lambda e: TrainConfig(data="csv", train_data="pairs.csv"),
     ValueError, r"data='csv' needs tokenizer='openai'"),
    ("TrainConfig: OpenAI's tokenizer with a 1,024-word model", lambda e: TrainConfig(tokenizer="openai"),
     ValueError, r"tokenizer='openai' needs a text vocab_size of 49408; model 'tiny-vit' has 1024"),
    ("TrainConfig: a fixed temperature with SigLIP", lambda e: TrainConfig(loss="siglip", fixed_tau=0.07),
     ValueError, r"'fixed_tau' applies to loss='clip' only"),
    ("TrainConfig: YAML that is a list", lambda e: TrainConfig.from_yaml(_write(e, "list.yaml", "- 1\n- 2\n")),
     ValueError, r"list\.yaml must hold a mapping of TrainConfig fields; got a list"),
    ("TrainConfig: YAML that does not parse", lambda e: TrainConfig.from_yaml(_write(e, "bad.yaml", "steps: [1\n")),
     ValueError, r"bad\.yaml is not valid YAML"),
    ("TrainConfig: YAML file missing", lambda e: TrainConfig.from_yaml(e.tmp / "none.yaml"),
     FileNotFoundError, r"config file .*none\.yaml not found"),
    # ---- papermill profiles and parameters (clipmini.jobs)
    ("profile: a list", lambda e: jobs.load_profile("p", params_dir=Path(_write(e, "p.yaml", "- seed\n").parent)),
     TypeError, r"p\.yaml must hold a mapping with 'defaults' and 'chapters'; got a list"),
    ("profile: defaults as a list",
     lambda e: jobs.load_profile("p", params_dir=_write(e, "p.yaml", "defaults: [seed]\n").parent),
     TypeError, r"p\.yaml: 'defaults' must map parameter names to values; got a list"),
    ("profile: a chapter's values as a list",
     lambda e: jobs.load_profile("p", params_dir=_write(e, "p.yaml", "chapters:\n  00_x: [1, 2]\n").parent),
     TypeError, r"p\.yaml: chapters\.00_x must map parameter names to values; got a list"),
    ("parameters: a misspelt name", lambda e: jobs.check_parameters(CHAPTER, {"sed": 1}),
     ValueError, rf"{CHAPTER.stem} has no parameter 'sed' \(did you mean 'seed'\?\); its parameters are "),
    ("parameters: a string for an int", lambda e: jobs.check_parameters(CHAPTER, {"seed": "1"}),
     TypeError, rf"{CHAPTER.stem}: parameter 'seed' must be int; got str '1'"),
    ("parameters: a bool for an int", lambda e: jobs.check_parameters(CHAPTER, {"seed": True}),
     TypeError, r"parameter 'seed' must be int; got bool True"),
    ("parameters: a number for a str", lambda e: jobs.check_parameters(CHAPTER, {"device": 0}),
     TypeError, r"parameter 'device' must be str; got int 0"),
    ("profile: a chapter the book does not have",
     lambda e: jobs.check_profile({"defaults": {}, "chapters": {"99_missing": {"seed": 1}}}, [CHAPTER]),
     ValueError, r"chapters that are not in the book: \['99_missing'\]"),
    # ---- data
    ("CSV: a folder instead of a file", lambda e: CsvImageText(e.tmp), FileNotFoundError, r"caption file not found"),
    ("CSV: an unclosed quote swallows the rest of the file into one field",
     lambda e: CsvImageText(_write(e, "q.csv", 'filepath,title\na.png,"a cat\n' + "b.png,a dog\n" * 12_000)),
     ValueError, r"q\.csv, line 2: not a readable ','-separated file from this row on \(field larger .*quote"),
    ("CSV: rank outside the world", lambda e: CsvImageText(_write(e, "a.csv", "filepath,title\n"), rank=2, world_size=2),
     ValueError, r"need 0 <= rank < world_size; got rank=2, world_size=2"),
    ("WebDataset: no shards", lambda e: WebDatasetImageText([]), ValueError, r"urls names no shard"),
    ("transform: zero image size", lambda e: clip_transform(0), ValueError, r"image_size must be a positive int; got 0"),
    ("transform: inverted aspect range", lambda e: clip_transform(32, train=True, ratio=(2.0, 1.0)),
     ValueError, r"ratio must satisfy 0 < min <= max"),
    # ---- checkpoints
    ("load: weights of another architecture than the config given",
     lambda e: load(_saved_tiny_vit(e), config=get_config("tiny-rn")),
     ValueError, r"cannot load checkpoint .*tiny-vit\.safetensors: .*missing keys: visual\."),
    ("load: a folder", lambda e: load(e.tmp), FileNotFoundError, r"no checkpoint file at .*not a known checkpoint name"),
    ("save: not a clipmini CLIP", lambda e: save(torch.nn.Linear(2, 2), e.tmp / "x.safetensors"),
     TypeError, r"save expects a clipmini CLIP .*; got Linear"),
    ("build_model: not a mapping", lambda e: build_model([("text_projection", torch.zeros(2, 2))]),
     TypeError, r"state_dict must be a mapping of names to tensors; got list"),
    ("load_checkpoint: a weights file instead of a checkpoint folder",
     lambda e: load_checkpoint(_saved_tiny_vit(e), model=e.model),
     CheckpointError, r"tiny-vit\.safetensors is not a checkpoint folder \(expected ckpt-NNNNNN/ with a MANIFEST\.json\)"),
    ("save_checkpoint: negative step", lambda e: save_checkpoint(e.tmp, -1, model=e.model),
     ValueError, r"step must be an int >= 0; got -1"),
    # ---- zero-shot and evaluation
    ("retrieval: NaN image features", lambda e: clip_eval.retrieval_metrics(_features(fill=NAN), _features()),
     ValueError, r"image_features contains NaN or infinite values"),
    ("linear probe: inf train features",
     lambda e: clip_eval.linear_probe(_features(fill=INF), torch.tensor([0, 1, 0, 1]), _features(), torch.tensor([0, 1, 0, 1])),
     ValueError, r"train_features contains NaN or infinite values"),
    ("linear probe: more test labels than test features",
     lambda e: clip_eval.linear_probe(_features(), torch.tensor([0, 1, 0, 1]), _features(3), torch.tensor([0, 1, 0, 1])),
     ValueError, r"test_features and test_labels disagree on N: 3 rows, 4 labels"),
    ("accuracy: top-0", lambda e: zeroshot.accuracy(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), topk=(0,)),
     ValueError, r"topk must be positive ints; got \(0,\)"),
    ("zero-shot: more labels than images",
     lambda e: zeroshot.evaluate(e.model, torch.randn(2, 3, 32, 32), torch.tensor([0, 1, 1]), torch.randn(64, 3)),
     ValueError, r"images and labels disagree on N: 2 images, 3 labels"),
    # ---- losses
    ("siglip_loss: 4 images, 3 texts", lambda e: siglip_loss(_features(4), _features(3), 10.0, -10.0),
     ValueError, r"same shape \[N, E\].*image_features \[4, 8\] and text_features \[3, 8\]"),
    ("siglip_loss: negative scale", lambda e: siglip_loss(_features(), _features(), -1.0, 0.0),
     ValueError, r"must be >= 0, got -1.0 \(pass model.logit_scale.exp\(\), not model.logit_scale\)"),
    ("clip_loss: NaN scale tensor", lambda e: clip_loss(_features(), _features(), torch.tensor(NAN)),
     ValueError, r"logit_scale must be finite, got nan"),
    ("clip_loss: inf text features", lambda e: clip_loss(_features(), _features(fill=INF), 10.0),
     ValueError, r"text_features contains non-finite values"),
]


@pytest.mark.parametrize("call, error, message", [pytest.param(c, x, m, id=i) for i, c, x, m in CASES])
def test_bad_input_raises_a_clear_error(env, call, error, message):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedSamplesWarning)
        with pytest.raises(error, match=message):
            call(env)


# ------------------------------------------------------------------------------------------------
# data that is broken but must not stop a run: skipped and counted


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 10), color).save(buf, "PNG")
    return buf.getvalue()


def _tar(path: Path, n: int) -> list[tarfile.TarInfo]:
    """n samples `s{i}.png` + `s{i}.txt`; returns the members (their offsets let a test cut or damage them)."""
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            for name, data in ((f"s{i}.png", _png((40 * i, 90, 200))), (f"s{i}.txt", f"sample {i}".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    with tarfile.open(path) as tar:
        return tar.getmembers()


def _cut_between_members(path: Path) -> None:
    """Cut the shard right before sample 2's first header: tarfile alone would end quietly there."""
    members = _tar(path, 4)
    path.write_bytes(path.read_bytes()[: members[4].offset])


def _bad_header(path: Path) -> None:
    """One flipped byte in sample 2's image header (its checksum no longer matches)."""
    members = _tar(path, 4)
    data = bytearray(path.read_bytes())
    data[members[4].offset + 3] ^= 0x20
    path.write_bytes(bytes(data))


def _no_end_marker(path: Path) -> None:
    """All members complete, but the end-of-archive blocks missing (a copy that stopped early)."""
    members = _tar(path, 4)
    last = members[-1]
    path.write_bytes(path.read_bytes()[: last.offset_data + (last.size + 511) // 512 * 512])


def _missing_shard(path: Path) -> None:
    pass  # the shard is never written


@pytest.mark.parametrize(
    "damage, delivered, reason",
    [
        pytest.param(_cut_between_members, ["sample 0", "sample 1"], "truncated_shard", id="tar cut between members"),
        pytest.param(_bad_header, ["sample 0", "sample 1"], "truncated_shard", id="tar header with a bad checksum"),
        pytest.param(_no_end_marker, [f"sample {i}" for i in range(4)], "truncated_shard", id="tar without end marker"),
        pytest.param(_missing_shard, [], "missing_shard", id="shard file missing"),
    ],
)
def test_broken_shards_are_skipped_and_counted(tmp_path, damage, delivered, reason):
    shard = tmp_path / "shard-000.tar"
    damage(shard)
    dataset = WebDatasetImageText([str(shard)], transform=clip_transform(16))
    # counted as what it is, a shard, not as a sample: how many samples a damaged shard lost is unknown
    words = fr"1 damaged shard \(1 {reason.replace('_', ' ')}\), whose samples from the damage on are lost; {len(delivered)} samples delivered"
    with pytest.warns(SkippedSamplesWarning, match=words):
        samples = list(dataset)
    assert [caption for _, caption in samples] == delivered  # what comes before the damage is kept
    assert dataset.skips.counts[reason] == 1 and dataset.skips.shards == 1 and dataset.skips.total == 0
    assert dataset.skips.delivered == len(delivered)


def test_csv_rows_that_are_not_utf8_are_skipped_and_counted(tmp_path):
    (tmp_path / "a.png").write_bytes(_png((200, 30, 30)))
    (tmp_path / "b.png").write_bytes(_png((30, 30, 200)))
    rows = "filepath,title\na.png,a red square\nb.png,caf\xe9 au lait\n,no image path\nb.png\n"
    (tmp_path / "pairs.csv").write_bytes(rows.encode("latin-1"))  # one caption in Latin-1, not UTF-8
    dataset = CsvImageText(tmp_path / "pairs.csv", transform=clip_transform(16))
    with pytest.warns(SkippedSamplesWarning, match=r"skipped 3 of 4 samples \(1 missing file, 2 bad caption\)"):
        samples = list(dataset)
    assert [caption for _, caption in samples] == ["a red square"]
    assert dataset.skips.counts["bad_caption"] == 2  # the Latin-1 caption, and the row with no caption column
    assert dataset.skips.counts["missing_file"] == 1  # the empty path
    assert "caf\\udce9" in dataset.skips.report()  # the undecodable byte is shown, escaped


def test_csv_with_a_byte_order_mark_reads_its_first_column(tmp_path):
    (tmp_path / "a.png").write_bytes(_png((200, 30, 30)))
    # utf-8-sig starts the file with a byte-order mark, as Excel does
    (tmp_path / "pairs.csv").write_text("filepath,title\na.png,a red square\n", encoding="utf-8-sig")
    assert (tmp_path / "pairs.csv").read_bytes().startswith(b"\xef\xbb\xbffilepath")
    dataset = CsvImageText(tmp_path / "pairs.csv", transform=clip_transform(16))
    assert [caption for _, caption in dataset] == ["a red square"] and dataset.skips.total == 0


def test_csv_rows_with_more_or_fewer_fields_than_the_header_are_skipped_by_line(tmp_path):
    """An unquoted comma cuts a caption: such a row is not delivered cut, but skipped, counted and named."""
    (tmp_path / "a.png").write_bytes(_png((200, 30, 30)))
    rows = (
        "filepath,title\n"
        "a.png,a red square\n"
        "a.png,a red, red square\n"  # line 3: an unquoted comma, 3 fields
        '"a.png","a quoted, whole caption"\n'
        'a.png,"a caption\nover two lines"\n'  # lines 5-6: one row
        "\n"
        "a.png\n"  # line 8: no caption field
        "a.png,another, cut, caption\n"  # line 9: 4 fields
    )
    (tmp_path / "pairs.csv").write_text(rows)
    dataset = CsvImageText(tmp_path / "pairs.csv", transform=clip_transform(16))
    assert len(dataset) == 6
    with pytest.warns(SkippedSamplesWarning, match=r"skipped 3 of 6 samples \(3 bad caption\); e\.g\. line 3 "):
        samples = list(dataset)
    captions = [caption for _, caption in samples]
    assert captions == ["a red square", "a quoted, whole caption", "a caption\nover two lines"]
    assert dataset.skips.examples == [
        ("bad_caption", "line 3", "3 fields where the header has 2 (an unquoted ',' inside a field cuts it)"),
        ("bad_caption", "line 8", "1 field where the header has 2"),
        ("bad_caption", "line 9", "4 fields where the header has 2 (an unquoted ',' inside a field cuts it)"),
    ]


# ------------------------------------------------------------------------------------------------
# the trained-model cache: an entry that is not this config's model is never loaded


@pytest.fixture
def no_training(monkeypatch):
    """load_or_train's fallback, recorded instead of run: these tests are about what it refuses to load."""
    import clipmini.cache as cache

    calls = []

    def refuse(config):
        calls.append(config)
        raise RuntimeError("training was requested")

    monkeypatch.setattr(cache, "train", refuse)
    return calls


CACHED = TrainConfig(model_overrides={"vision": {"layers": 1}, "text": {"layers": 1}}, steps=2, batch_size=8,
                     eval_tasks=[], progress=False, out_dir=None, threads=1)


def _store(entry_config: TrainConfig, model: torch.nn.Module, key: str, cache_dir: Path) -> Path:
    from clipmini.cache import cache_entry
    from clipmini.tokenizer import Tokenizer

    entry = cache_entry(entry_config, cache_dir)
    tokenizer = Tokenizer.train(["a red circle", "a blue square"] * 50, 514, allow_smaller=True)
    written = save_checkpoint(entry.parent / "work", 2, model=model, tokenizer=tokenizer, config=entry_config.to_dict(),
                              extra={"key": key, "metrics": {"loss": 1.0}, "history": []})
    written.rename(entry)
    return entry


@pytest.mark.parametrize(
    "kind, message",
    [
        ("another architecture", r"damaged \(.*model\.safetensors holds weights of a different architecture"),
        ("another config's key", r"damaged \(.* holds key 'f00d', not this config's\)"),
    ],
)
def test_cache_never_loads_a_foreign_entry(tmp_path, no_training, kind, message):
    from clipmini.cache import cache_key
    from clipmini.train import make_model

    if kind == "another architecture":
        other = TrainConfig.from_dict(dict(CACHED.to_dict(), model_overrides={"vision": {"layers": 2}, "text": {"layers": 1}}))
        entry = _store(CACHED, make_model(other), cache_key(CACHED), tmp_path)
    else:
        entry = _store(CACHED, make_model(CACHED), "f00d", tmp_path)
    with pytest.warns(UserWarning, match=message), pytest.raises(RuntimeError, match="training was requested"):
        load_or_train(CACHED, tmp_path)
    assert len(no_training) == 1  # it fell back to training...
    assert not entry.exists()  # ...after deleting the foreign entry
