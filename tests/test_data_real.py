"""Real image-text loaders on tiny files the tests write: good samples load, broken ones are skipped and counted."""

from __future__ import annotations

import io
import tarfile
import warnings

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from clipmini import prompts
from clipmini.data import (
    CLIP_MEAN,
    CLIP_STD,
    CsvImageText,
    SkipCounter,
    SkippedSamplesWarning,
    WebDatasetImageText,
    cifar10,
    cifar100,
    clip_transform,
    image_folder,
)



def _image_bytes(color, size=(40, 30), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


def _write_tar(path, members) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _record(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn()
    return out, [w for w in caught if issubclass(w.category, SkippedSamplesWarning)]


# ------------------------------------------------------------------------------ transform
def test_clip_transform_resizes_short_side_crops_and_normalizes():
    image = Image.new("RGB", (80, 40), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 20, 40))  # a blue band on the far left: cropped away
    x = clip_transform(32)(image)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    red = (torch.tensor([1.0, 0.0, 0.0]) - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(x[:, 16, 16], red, atol=1e-2)
    assert torch.allclose(x.mean(dim=(1, 2)), red, atol=2e-2)  # the center crop is all red
    gray = clip_transform(24)(Image.new("L", (50, 70), 128))  # grayscale becomes RGB
    assert gray.shape == (3, 24, 24)
    torch.manual_seed(0)
    train = clip_transform(32, train=True, scale=(0.5, 1.0))(Image.new("RGB", (100, 60), (0, 255, 0)))
    assert train.shape == (3, 32, 32)
    with pytest.raises(ValueError, match="scale"):
        clip_transform(32, train=True, scale=(0.0, 1.0))


# ------------------------------------------------------------------------------ CSV / TSV
@pytest.fixture
def csv_dir(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "red.png").write_bytes(_image_bytes((255, 0, 0)))
    (tmp_path / "img" / "blue.jpg").write_bytes(_image_bytes((0, 0, 255), fmt="JPEG"))
    (tmp_path / "img" / "green.png").write_bytes(_image_bytes((0, 255, 0), size=(20, 50)))
    (tmp_path / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    rows = [
        ("img/red.png", "a red square"),
        ("img/blue.jpg", "a blue, blue square"),  # a comma inside a quoted caption
        ("img/missing.png", "this file does not exist"),
        ("img/broken.png", "an undecodable image"),
        ("img/green.png", "   "),  # an empty caption
        ("img/green.png", "a tall green rectangle"),
    ]
    import csv

    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filepath", "title"])
        w.writerows(rows)
    with open(tmp_path / "pairs.tsv", "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["image", "text"])
        w.writerows(rows)
    return tmp_path


def test_csv_loads_good_rows_and_counts_bad_ones(csv_dir):
    ds = CsvImageText(csv_dir / "pairs.csv", transform=clip_transform(32))
    assert len(ds) == 6
    out, warned = _record(lambda: list(ds))
    assert [c for _, c in out] == ["a red square", "a blue, blue square", "a tall green rectangle"]
    assert all(x.shape == (3, 32, 32) for x, _ in out)
    assert ds.skips.counts["missing_file"] == 1
    assert ds.skips.counts["undecodable_image"] == 1
    assert ds.skips.counts["bad_caption"] == 1
    assert ds.skips.total == 3 and ds.skips.delivered == 3
    assert len(warned) == 1 and "skipped 3 of 6" in str(warned[0].message)
    assert "missing.png" in ds.skips.report()


def test_tsv_with_other_column_names_and_raw_images(csv_dir):
    ds = CsvImageText(csv_dir / "pairs.tsv", image_key="image", caption_key="text")
    out, _ = _record(lambda: list(ds))
    assert len(out) == 3 and isinstance(out[0][0], Image.Image) and out[0][0].size == (40, 30)
    with pytest.raises(ValueError, match="columns are"):
        CsvImageText(csv_dir / "pairs.tsv")  # default column names are not in this file
    with pytest.raises(FileNotFoundError):
        CsvImageText(csv_dir / "nope.csv")


def test_csv_splits_rows_by_rank_and_by_worker(csv_dir):
    ranks = [CsvImageText(csv_dir / "pairs.csv", transform=clip_transform(16), rank=r, world_size=2) for r in range(2)]
    captions = [[c for _, c in _record(lambda ds=ds: list(ds))[0]] for ds in ranks]
    assert set(captions[0]).isdisjoint(captions[1])
    assert sorted(captions[0] + captions[1]) == sorted(["a red square", "a blue, blue square", "a tall green rectangle"])
    ds = CsvImageText(csv_dir / "pairs.csv", transform=clip_transform(16))
    got = list(DataLoader(ds, batch_size=None, num_workers=2))
    assert sorted(c for _, c in got) == sorted(["a red square", "a blue, blue square", "a tall green rectangle"])
    assert ds.skips.total == 3  # counted in the workers, visible here
    def order(seed, epoch):
        ds = CsvImageText(csv_dir / "pairs.csv", transform=clip_transform(16), shuffle=True, seed=seed)
        ds.set_epoch(epoch)
        return [c for _, c in _record(lambda: list(ds))[0]]

    orders = {tuple(order(seed, epoch)) for seed in range(4) for epoch in range(3)}
    assert all(sorted(o) == sorted(captions[0] + captions[1]) for o in orders)
    assert len(orders) > 1  # the order changes with seed and epoch
    assert order(2, 1) == order(2, 1)  # and is reproducible


# ------------------------------------------------------------------------------ WebDataset
@pytest.fixture
def shards(tmp_path):
    _write_tar(
        tmp_path / "shard-0.tar",
        [
            ("a0.png", _image_bytes((255, 0, 0))), ("a0.txt", b"a red square"),
            ("a1.jpg", b"garbage, not a jpeg"), ("a1.txt", b"a corrupt image"),
            ("a2.webp", _image_bytes((0, 0, 255), fmt="WEBP")), ("a2.txt", "a blue square, caf\u00e9".encode()),
            ("a3.png", _image_bytes((0, 255, 0))), ("a3.txt", b""),
            ("a4.png", _image_bytes((0, 255, 0))), ("a4.txt", b"\xff\xfe\xfa not utf-8"),
        ],
    )
    members = [
        ("b0.png", _image_bytes((255, 255, 0))), ("b0.txt", b"a yellow square"),
        ("b1.png", _image_bytes((0, 255, 255), size=(64, 64))), ("b1.txt", b"a cyan square"),
    ]
    _write_tar(tmp_path / "full-1.tar", members)
    data = (tmp_path / "full-1.tar").read_bytes()
    with tarfile.open(tmp_path / "full-1.tar") as tar:
        b1 = tar.getmember("b1.png")
    (tmp_path / "shard-1.tar").write_bytes(data[: b1.offset_data + b1.size // 2])  # cut inside b1.png
    return [str(tmp_path / "shard-0.tar"), str(tmp_path / "shard-1.tar")]


def test_webdataset_loads_good_samples_and_counts_bad_ones(shards):
    ds = WebDatasetImageText(shards, transform=clip_transform(32))
    out, warned = _record(lambda: list(ds))
    assert [c for _, c in out] == ["a red square", "a blue square, caf\u00e9", "a yellow square"]
    assert all(x.shape == (3, 32, 32) for x, _ in out)
    counts = ds.skips.counts
    assert counts["undecodable_image"] == 1
    assert counts["bad_caption"] == 2  # empty, and not UTF-8
    assert counts["truncated_shard"] == 1
    assert len(warned) == 1 and "truncated shard" in str(warned[0].message)


def test_webdataset_splits_shards_by_rank_and_worker(shards):
    per_rank = []
    for r in range(2):
        ds = WebDatasetImageText(shards, transform=clip_transform(16), rank=r, world_size=2)
        per_rank.append([c for _, c in _record(lambda ds=ds: list(ds))[0]])
    assert per_rank == [["a red square", "a blue square, caf\u00e9"], ["a yellow square"]]
    ds = WebDatasetImageText(shards, transform=clip_transform(16))
    got = sorted(c for _, c in DataLoader(ds, batch_size=None, num_workers=2))
    assert got == sorted(["a red square", "a blue square, caf\u00e9", "a yellow square"])
    assert ds.skips.counts["truncated_shard"] == 1 and ds.skips.delivered == 3


def test_skip_counter_report_and_errors():
    skips = SkipCounter("demo")
    assert skips.report() == "demo: no samples skipped (0 delivered)"
    skips.ok()
    skips.skip("missing_file", "x.png", FileNotFoundError("gone"))
    assert skips.total == 1 and "skipped 1 of 2 samples (1 missing file)" in skips.report()
    with pytest.warns(SkippedSamplesWarning):
        skips.warn()
    with pytest.raises(ValueError, match="reason"):
        skips.skip("cosmic_rays")
    skips.reset()
    assert skips.total == 0 and skips.delivered == 0


# ------------------------------------------------------------------------------ torchvision sets
def test_image_folder_and_missing_datasets(tmp_path):
    for cls in ("golden_retriever", "tabby_cat"):
        (tmp_path / "folder" / cls).mkdir(parents=True)
        for i in range(2):
            (tmp_path / "folder" / cls / f"{i}.png").write_bytes(_image_bytes((10 * i, 100, 200)))
    zs = image_folder(tmp_path / "folder", transform=clip_transform(16), classnames={"tabby_cat": "tabby cat (pet)"})
    assert zs.classnames == ("golden retriever", "tabby cat (pet)")
    assert len(zs) == 4 and zs.dataset[3][0].shape == (3, 16, 16) and zs.dataset[3][1] == 1
    assert zs.templates == prompts.IMAGENET_TEMPLATES
    with pytest.raises(ValueError, match="do not exist"):
        image_folder(tmp_path / "folder", classnames={"dog": "dog"})
    with pytest.raises(FileNotFoundError, match="download=True"):
        cifar10(tmp_path / "nothing-here")
    with pytest.raises(FileNotFoundError, match="download=True"):
        cifar100(tmp_path / "nothing-here")
    with pytest.raises(FileNotFoundError):
        image_folder(tmp_path / "nothing-here")


# ------------------------------------------------------------------------------ templates
def test_templates_are_the_papers():
    assert len(prompts.IMAGENET_TEMPLATES) == 80 == len(set(prompts.IMAGENET_TEMPLATES))
    assert len(prompts.IMAGENET_TEMPLATES_7) == 7 and set(prompts.IMAGENET_TEMPLATES_7) <= set(prompts.IMAGENET_TEMPLATES)
    assert len(prompts.CIFAR_TEMPLATES) == 18 == len(set(prompts.CIFAR_TEMPLATES))
    for t in prompts.IMAGENET_TEMPLATES + prompts.CIFAR_TEMPLATES:
        assert t.count("{}") == 1 and t.format("x") != t
    assert len(prompts.CIFAR10_CLASSNAMES) == 10 and len(prompts.CIFAR100_CLASSNAMES) == 100
    assert len(set(prompts.CIFAR100_CLASSNAMES)) == 100 and "aquarium fish" in prompts.CIFAR100_CLASSNAMES
    # the oracle: open_clip ships the same 80 ImageNet templates
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    assert [t("dog") for t in OPENAI_IMAGENET_TEMPLATES] == [t.format("dog") for t in prompts.IMAGENET_TEMPLATES]


def test_format_prompts():
    out = prompts.format_prompts(["cat", "dog"], prompts.IMAGENET_TEMPLATES_7)
    assert len(out) == 2 and len(out[0]) == 7 and out[1][0] == "itap of a dog."
    with pytest.raises(ValueError, match="exactly one"):
        prompts.format_prompts(["cat"], ["a photo of a cat"])
    with pytest.raises(TypeError):
        prompts.format_prompts("cat", prompts.CIFAR_TEMPLATES)
