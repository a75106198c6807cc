"""Same weights, same features: clipmini against open_clip (the oracle) on identical state_dicts.

"Relative difference" here is max|ours - theirs| / max|theirs| over a whole output tensor.
"""

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.model import CLIP as OpenClipCLIP

from clipmini.config import CLIPConfig, TextConfig, VisionConfig, get_config
from clipmini.model import build_model, infer_config

torch.set_num_threads(1)

TOLERANCE = 1e-5


def relative_difference(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


def example_inputs(image_size: int, context_length: int, vocab_size: int, seed: int = 0):
    """Two images and two captions: EOT (the largest id) at positions 5 and 11, zero padding after."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 3, image_size, image_size, generator=g)
    tokens = torch.randint(1, vocab_size - 2, (2, context_length), generator=g)
    tokens[:, 0] = vocab_size - 2  # start of text
    for row, eot in enumerate((5, 11)):
        tokens[row, eot] = vocab_size - 1
        tokens[row, eot + 1 :] = 0
    return images, tokens


def shapes(state_dict) -> dict:
    return {k: tuple(v.shape) for k, v in state_dict.items()}


def assert_same_outputs(ours, theirs, images, tokens):
    assert shapes(ours.state_dict()) == shapes(theirs.state_dict())
    with torch.no_grad():
        ours_image, theirs_image = ours.encode_image(images), theirs.encode_image(images)
        ours_text, theirs_text = ours.encode_text(tokens), theirs.encode_text(tokens)
        ours_logits, ours_logits_t = ours(images, tokens)
        theirs_logits, theirs_logits_t = theirs.get_logits(images, tokens)
    assert relative_difference(ours_image, theirs_image) <= TOLERANCE
    assert relative_difference(ours_text, theirs_text) <= TOLERANCE
    assert relative_difference(ours_logits, theirs_logits) <= TOLERANCE
    assert relative_difference(ours_logits_t, theirs_logits_t) <= TOLERANCE


# ----- tiny custom architectures: fast, run by default -----

TINY_TEXT = dict(context_length=32, vocab_size=1024, width=64, heads=2, layers=2)
TINY_VISION = {
    "vit": dict(image_size=32, layers=2, width=64, patch_size=4, head_width=32),
    "resnet": dict(image_size=32, layers=(1, 1, 1, 1), width=16, head_width=64),
}


def tiny_pair(kind: str):
    """An open_clip CLIP of a tiny architecture and the clipmini CLIP built from its state_dict."""
    torch.manual_seed(0)
    theirs = OpenClipCLIP(64, TINY_VISION[kind], TINY_TEXT, quick_gelu=True)
    vision = dict(TINY_VISION[kind])
    vision.setdefault("patch_size", None)
    config = CLIPConfig(
        embed_dim=64,
        vision=VisionConfig(**vision),
        text=TextConfig(context_length=32, vocab_size=1024, width=64, layers=2, head_width=32),
    )
    return build_model(theirs.state_dict(), config), theirs


@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_tiny_parity_eval(kind):
    ours, theirs = tiny_pair(kind)
    assert set(ours.state_dict()) == set(theirs.state_dict())
    images, tokens = example_inputs(32, 32, 1024)
    assert_same_outputs(ours.eval(), theirs.eval(), images, tokens)


@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_tiny_parity_training_step(kind):
    """Train mode (BatchNorm batch statistics) gives the same loss and gradients."""
    ours, theirs = tiny_pair(kind)
    ours.train(), theirs.train()
    images, tokens = example_inputs(32, 32, 1024, seed=1)
    labels = torch.arange(2)
    losses = []
    for model, logits in ((ours, ours(images, tokens)), (theirs, theirs.get_logits(images, tokens))):
        loss = (F.cross_entropy(logits[0], labels) + F.cross_entropy(logits[1], labels)) / 2
        loss.backward()
        losses.append(loss)
    assert relative_difference(losses[0], losses[1]) <= TOLERANCE
    theirs_params = dict(theirs.named_parameters())
    # Gradients are differences of nearly equal terms, so fp32 rounding shows more in them than
    # in the features; some are zero in exact arithmetic (a key bias shifts every attention
    # score equally) and hold only rounding noise, hence the absolute floor.
    floor = 1e-6 * max(q.grad.abs().max() for q in theirs_params.values())
    for name, p in ours.named_parameters():
        q = theirs_params[name]
        assert p.grad is not None and q.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=floor, msg=name)
    if kind == "resnet":  # BatchNorm's running statistics moved the same way
        for name, buffer in theirs.named_buffers():
            if "running" in name:
                torch.testing.assert_close(ours.get_buffer(name), buffer, rtol=1e-5, atol=1e-6)


# ----- OpenAI's architectures, random weights from open_clip -----

OPENAI_ARCHITECTURES = [
    pytest.param("ViT-B/32", "ViT-B-32-quickgelu", id="ViT-B/32"),
    pytest.param("ViT-B/16", "ViT-B-16-quickgelu", id="ViT-B/16", marks=pytest.mark.slow),
    pytest.param("RN50", "RN50-quickgelu", id="RN50", marks=pytest.mark.slow),
    pytest.param("RN101", "RN101-quickgelu", id="RN101", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name, open_clip_name", OPENAI_ARCHITECTURES)
def test_openai_architecture_parity(name, open_clip_name):
    torch.manual_seed(0)
    theirs = open_clip.create_model(open_clip_name, pretrained=None).eval()
    state_dict = theirs.state_dict()
    # The configuration is inferred from the shapes alone and is the paper's.
    assert infer_config(state_dict) == get_config(name)
    ours = build_model(state_dict).eval()
    assert set(ours.state_dict()) == set(state_dict)
    images, tokens = example_inputs(224, 77, 49408)
    assert_same_outputs(ours, theirs, images, tokens)
