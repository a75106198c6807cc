"""OpenAI's release format written by clipmini, read back by clipmini and by open_clip (the oracle)."""

import zipfile

import open_clip
import pytest
import torch
from open_clip.model import CLIP as OpenClipCLIP
from open_clip.model import convert_weights_to_fp16

from clipmini.config import CLIPConfig, TextConfig, VisionConfig
from clipmini.model import build_model, create_model, load, read_state_dict
from clipmini.released import (
    OPENAI_SCALARS,
    compare_features,
    max_relative_difference,
    openai_state_dict,
    released_dtypes,
    write_openai_archive,
)

torch.set_num_threads(1)

# Tiny towers with 64-channel heads, as in OpenAI's models, so that open_clip (which assumes them)
# infers the same configuration from the weights' shapes; clipmini is given the config.
TEXT = dict(context_length=16, vocab_size=512, width=64, layers=2)
VISION = {
    "vit": dict(image_size=32, layers=2, width=64, patch_size=8),
    "resnet": dict(image_size=32, layers=(1, 1, 1, 1), width=16, patch_size=None),
}


def tiny_model(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    config = CLIPConfig(embed_dim=32, vision=VisionConfig(**VISION[kind]), text=TextConfig(**TEXT))
    return create_model(config).eval()


def inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(3, 3, 32, 32, generator=g)  # [3, 3, 32, 32]
    tokens = torch.randint(1, 509, (2, 16), generator=g)  # [2, 16]
    tokens[:, 0] = 510  # SOT
    tokens[0, 4], tokens[1, 9] = 511, 511  # EOT
    tokens[0, 5:], tokens[1, 10:] = 0, 0
    return images, tokens


@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_released_dtypes_match_open_clips_conversion(kind):
    torch.manual_seed(0)
    vision = {k: v for k, v in VISION[kind].items() if v is not None}
    theirs = OpenClipCLIP(32, vision, dict(TEXT, heads=1), quick_gelu=True)
    ours = build_model(theirs.state_dict(), tiny_model(kind).config)
    convert_weights_to_fp16(theirs)  # open_clip's own copy of OpenAI's convert_weights
    expected = {k: v.dtype for k, v in theirs.state_dict().items()}
    assert released_dtypes(ours) == expected
    assert torch.float16 in expected.values() and torch.float32 in expected.values()


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_archive_round_trips_through_clipmini(tmp_path, kind):
    model = tiny_model(kind)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = write_openai_archive(model, tmp_path / "sub" / "model.pt")
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary file left
    assert any("/code/" in n for n in zipfile.ZipFile(path).namelist())  # a TorchScript archive

    archive_state = torch.jit.load(str(path)).state_dict()
    assert {k: v.dtype for k, v in archive_state.items() if k not in OPENAI_SCALARS} == released_dtypes(model)
    assert [int(archive_state[k]) for k in OPENAI_SCALARS] == [32, 16, 512]
    expected = openai_state_dict(model)
    for k, v in expected.items():
        assert torch.equal(archive_state[k], v), k

    loaded = load(path, config=model.config)
    assert loaded.config == model.config
    for k, v in loaded.state_dict().items():  # fp32 again, holding the fp16-rounded values
        assert v.dtype == model.state_dict()[k].dtype
        assert torch.equal(v, expected[k].to(v.dtype)), k
    # The caller's model is untouched: still float32, same values.
    for k, v in model.state_dict().items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_archive_is_read_without_running_it(tmp_path, monkeypatch, kind):
    """The tensors read from data.pkl are exactly torch.jit.load's, and torch.jit.load never runs."""
    model = tiny_model(kind, seed=2)
    path = write_openai_archive(model, tmp_path / "model.pt")
    expected = torch.jit.load(str(path)).state_dict()

    def refuse(*args, **kwargs):
        raise AssertionError("torch.jit.load ran")

    monkeypatch.setattr(torch.jit, "load", refuse)
    read, config = read_state_dict(path)
    assert config is None and set(read) == set(expected)
    for k, v in expected.items():
        assert read[k].dtype == v.dtype and read[k].shape == v.shape and torch.equal(read[k], v), k
    loaded = load(path, config=model.config)
    # the same features as the model written, up to the float16 the archive stores
    reference = build_model(openai_state_dict(model), model.config).eval()
    images, tokens = inputs()
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), reference.encode_image(images))
        assert torch.equal(loaded.encode_text(tokens), reference.encode_text(tokens))


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_open_clip_reads_the_archive_to_the_same_features(tmp_path, kind):
    model = tiny_model(kind, seed=1)
    path = write_openai_archive(model, tmp_path / "model.pt")
    ours = load(path, config=model.config)
    theirs = open_clip.load_openai_model(str(path), precision="fp32", device="cpu")
    assert set(theirs.state_dict()) == set(ours.state_dict())
    images, tokens = inputs()
    differences = compare_features(ours, theirs, images, tokens)
    assert set(differences) == {"image_features", "text_features", "logits"}
    assert max(differences.values()) <= 1e-5, differences


def test_compare_features_sees_a_difference_and_keeps_modes():
    ours, theirs = tiny_model("vit"), tiny_model("vit")
    ours.train()
    images, tokens = inputs()
    assert max(compare_features(ours, theirs, images, tokens).values()) == 0.0
    assert ours.training and not theirs.training
    with torch.no_grad():
        theirs.text_projection.mul_(1.01)
    differences = compare_features(ours, theirs, images, tokens)
    assert differences["image_features"] == 0.0
    assert differences["text_features"] == pytest.approx(0.01 / 1.01, rel=1e-3)


def test_max_relative_difference():
    theirs = torch.tensor([[1.0, -4.0], [2.0, 0.0]])
    assert max_relative_difference(theirs, theirs) == 0.0
    assert max_relative_difference(theirs + torch.tensor([[0.0, 0.0], [0.0, 0.2]]), theirs) == pytest.approx(0.05)
    assert max_relative_difference(torch.full((2,), 0.5), torch.zeros(2)) == 0.5  # no scale: absolute
    with pytest.raises(ValueError, match=r"shapes \[2, 2\] and \[4\]"):
        max_relative_difference(theirs, theirs.flatten())


def test_non_clip_models_are_refused(tmp_path):
    with pytest.raises(TypeError, match="expects a clipmini CLIP; got Linear"):
        write_openai_archive(torch.nn.Linear(2, 2), tmp_path / "x.pt")
    with pytest.raises(TypeError, match="expects a clipmini CLIP; got Linear"):
        released_dtypes(torch.nn.Linear(2, 2))
