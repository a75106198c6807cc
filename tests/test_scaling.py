"""FLOP counting (a hand count, torch's FlopCounterMode, the benchmarks' alias) and the power-law fit."""

from __future__ import annotations

import importlib.util
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from clipmini.config import CLIPConfig, TextConfig, VisionConfig, get_config
from clipmini.model import create_model
from clipmini.scaling import TEXT_TERMS, PowerLaw, clip_flops, fit_power_law, text_lengths, training_flops
from clipmini.train import TrainConfig, make_tokenizer, make_world

ROOT = Path(__file__).resolve().parent.parent

# ----------------------------------------------------------------------------------------------
# clip_flops
# ----------------------------------------------------------------------------------------------

TINY_RESNET = CLIPConfig(  # width 2: stem 1 → 1 → 2 channels, stages of 2, 4, 8, 16 planes (x4 out)
    embed_dim=4,
    vision=VisionConfig(image_size=32, layers=(1, 1, 1, 1), width=2, patch_size=None, head_width=64),
    text=TextConfig(context_length=4, vocab_size=10, width=4, layers=1, head_width=2),
)


def test_resnet_flops_match_a_hand_count():
    f = clip_flops(TINY_RESNET, batch=1)
    # stem at 16x16: 3 → 1 (stride 2), 1 → 1, 1 → 2, all 3x3
    conv1, conv2, conv3 = 2 * 256 * 3 * 9 * 1, 2 * 256 * 1 * 9 * 1, 2 * 256 * 1 * 9 * 2
    assert f["stem"] == conv1 + conv2 + conv3 == 27648
    # layer1 at 8x8: 1x1 2 → 2, 3x3 2 → 2, 1x1 2 → 8, shortcut 1x1 2 → 8 (channels change)
    layer1 = 2 * 64 * 2 * 2 + 2 * 64 * 2 * 9 * 2 + 2 * 64 * 2 * 8 + 2 * 64 * 2 * 8
    # layer2: 1x1 8 → 4 and 3x3 4 → 4 at 8x8, then pooled to 4x4: 1x1 4 → 16, shortcut 8 → 16
    layer2 = 2 * 64 * 8 * 4 + 2 * 64 * 4 * 9 * 4 + 2 * 16 * 4 * 16 + 2 * 16 * 8 * 16
    layer3 = 2 * 16 * 16 * 8 + 2 * 16 * 8 * 9 * 8 + 2 * 4 * 8 * 32 + 2 * 4 * 16 * 32  # 4x4 → 2x2
    layer4 = 2 * 4 * 32 * 16 + 2 * 4 * 16 * 9 * 16 + 2 * 1 * 16 * 64 + 2 * 1 * 32 * 64  # 2x2 → 1x1
    assert f["bottlenecks"] == layer1 + layer2 + layer3 + layer4 == 95232
    # attention pool at C = 64 over 1 position + its mean: q for 1 token, k and v for 2
    assert f["attnpool_qkv"] == 2 * 64 * 64 + 2 * 2 * 2 * 64 * 64 == 40960
    assert f["vision_attention"] == 2 * 2 * 64 + 2 * 2 * 64  # q Kᵀ and a V with one query
    assert f["vision_proj"] == 2 * 64 * 4
    assert f["text_dense"] == 24 * 4 * 16 and f["text_attention"] == 4 * 16 * 4 and f["text_proj"] == 2 * 4 * 4
    assert f["logits"] == 2 * 1 * 1 * 4
    assert f["forward"] == sum(v for k, v in f.items() if k not in ("forward", "train_step"))
    assert f["train_step"] == 3 * f["forward"] - conv1  # no gradient for the pixels


TINY_VIT = CLIPConfig(  # 8 px images in 4 px patches: a 2x2 grid plus the class token, width 4, E = 8
    embed_dim=8,
    vision=VisionConfig(image_size=8, layers=1, width=4, patch_size=4, head_width=2),
    text=TextConfig(context_length=4, vocab_size=10, width=4, layers=1, head_width=2),
)


def test_vit_flops_match_a_hand_count():
    f = clip_flops(TINY_VIT, batch=1)
    patches, tokens, width = 4, 5, 4
    assert f["patch_embed"] == 2 * patches * (3 * 4 * 4) * width  # each patch: 48 pixels into 4 channels
    qkv, out, mlp = 2 * tokens * width * 3 * width, 2 * tokens * width * width, 2 * 2 * tokens * width * 4 * width
    assert f["vision_dense"] == qkv + out + mlp == 24 * tokens * width**2
    assert f["vision_attention"] == 2 * (2 * tokens * tokens * width)  # scores, then the weighted sum
    assert f["vision_proj"] == 2 * width * 8  # the class token only
    assert f["text_dense"] == 24 * 4 * width**2 and f["text_attention"] == 4 * 4 * 4 * width
    assert f["logits"] == 2 * 8 and f["text_proj"] == 2 * width * 8
    assert f["forward"] == 1536 + 1920 + 400 + 64 + 1536 + 256 + 64 + 16 == 5792
    assert f["train_step"] == 3 * 5792 - 1536  # no gradient for the pixels


def test_layers_and_text_length_scale_their_own_terms():
    two_layers = replace(TINY_VIT, vision=replace(TINY_VIT.vision, layers=2))
    one, two = clip_flops(TINY_VIT, 3), clip_flops(two_layers, 3)
    for key in one:
        if key in ("vision_dense", "vision_attention"):
            assert two[key] == 2 * one[key], key
        elif key not in ("forward", "train_step"):
            assert two[key] == one[key], key
    config = get_config("small-vit")
    L, half = config.text.context_length, config.text.context_length // 2 + 1
    full, short = clip_flops(config, 4), clip_flops(config, 4, text_length=half)
    assert full["text_dense"] * half == short["text_dense"] * L  # linear in the length
    assert full["text_attention"] * half**2 == short["text_attention"] * L**2  # quadratic
    assert full["patch_embed"] == short["patch_embed"] and full["vision_dense"] == short["vision_dense"]


def test_batch_multiplies_every_term_but_the_logits():
    one, four = clip_flops(TINY_RESNET, 1), clip_flops(TINY_RESNET, 4)
    for key in ("stem", "bottlenecks", "attnpool_qkv", "vision_attention", "vision_proj", *TEXT_TERMS):
        assert four[key] == 4 * one[key], key
    assert four["logits"] == 16 * one["logits"]  # B x B similarities


ODD_RESNET = CLIPConfig(  # several blocks per stage, a 2x2 final map, a narrow text tower
    embed_dim=24,
    vision=VisionConfig(image_size=64, layers=(2, 1, 3, 1), width=8, patch_size=None, head_width=32),
    text=TextConfig(context_length=12, vocab_size=100, width=32, layers=2, head_width=16),
)
ODD_VIT = CLIPConfig(
    embed_dim=48,
    vision=VisionConfig(image_size=24, layers=2, width=96, patch_size=6, head_width=32),
    text=TextConfig(context_length=12, vocab_size=100, width=64, layers=3, head_width=16),
)


@pytest.mark.parametrize(
    "config",
    [get_config("tiny-rn"), ODD_RESNET, get_config("tiny-vit"), ODD_VIT],
    ids=["tiny-rn", "odd-resnet", "tiny-vit", "odd-vit"],
)
def test_flops_agree_with_torch_flop_counter(config):
    """torch counts every matmul and convolution it runs (not fused attention on the CPU), forward and backward."""
    torch.manual_seed(0)
    model = create_model(config).train()
    B, L, R, V = 3, config.text.context_length, config.vision.image_size, config.text.vocab_size
    images = torch.randn(B, 3, R, R)
    tokens = torch.randint(1, V - 1, (B, L))
    tokens[:, L // 2], tokens[:, L // 2 + 1 :] = V - 1, 0  # EOT mid-context: the model runs L // 2 + 1 positions
    ours = clip_flops(config, B, text_length=L // 2 + 1)
    attention = ours["vision_attention"] + ours["text_attention"]
    with FlopCounterMode(display=False) as counter:
        model(images, tokens)
    assert counter.get_total_flops() == ours["forward"] - attention
    with FlopCounterMode(display=False) as counter:
        logits_per_image, _ = model(images, tokens)
        logits_per_image.sum().backward()
    assert counter.get_total_flops() == ours["train_step"] - 3 * attention


def test_wider_resnet_costs_about_the_square():
    base = get_config("tiny-rn")
    narrow = clip_flops(replace(base, vision=replace(base.vision, width=16)), 8)
    wide = clip_flops(replace(base, vision=replace(base.vision, width=32)), 8)
    assert wide["bottlenecks"] == 4 * narrow["bottlenecks"]  # every bottleneck conv is W x W
    assert wide["text_dense"] == narrow["text_dense"]


def test_flops_errors_name_the_problem():
    with pytest.raises(ValueError, match="batch must be a positive int"):
        clip_flops(get_config("tiny-rn"), 0)
    with pytest.raises(ValueError, match=r"text_length must be an int in \[1, context_length=32\]"):
        clip_flops(get_config("tiny-rn"), 4, text_length=33)
    with pytest.raises(TypeError, match="expects a CLIPConfig"):
        clip_flops("tiny-rn", 4)


def test_benchmarks_count_with_the_same_function(monkeypatch):
    spec = importlib.util.spec_from_file_location("_bench_common_for_scaling", ROOT / "benchmarks" / "common.py")
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    for config in (get_config("tiny-vit"), get_config("small-vit"), get_config("tiny-rn")):
        assert common.clip_flops(config, 8, text_length=10) == clip_flops(config, 8, text_length=10)
    # the benchmarks call the package's counter, not a copy of it
    import clipmini.scaling

    sentinel = {"called": "clipmini.scaling.clip_flops"}
    monkeypatch.setattr(clipmini.scaling, "clip_flops", lambda *args, **kwargs: sentinel)
    assert common.clip_flops(get_config("tiny-vit"), 8) is sentinel


# ----------------------------------------------------------------------------------------------
# A run's FLOPs
# ----------------------------------------------------------------------------------------------


def _run_config(**changes) -> TrainConfig:
    return TrainConfig(**({"model": "tiny-rn", "steps": 3, "batch_size": 8, "progress": False, "out_dir": None} | changes))


def test_text_lengths_are_the_models_trim_of_each_batch():
    config = _run_config()
    world, tokenizer = make_world(config), make_tokenizer(config)
    lengths = text_lengths(config, tokenizer)
    assert lengths.shape == (3,)
    model = create_model(config.clip_config())
    for step, length in enumerate(lengths):
        tokens = tokenizer(world.captions(step, 8), context_length=32, truncate=True)  # [8, 32]
        assert length == model._check_tokens(tokens)[2]  # the length encode_text runs
        assert length == int((tokens != 0).sum(dim=1).max())  # the longest caption, SOT and EOT included


def test_training_flops_sum_the_steps():
    config = _run_config()
    tokenizer = make_tokenizer(config)
    lengths = text_lengths(config, tokenizer)
    expected = sum(clip_flops(config.clip_config(), 8, int(n))["train_step"] for n in lengths)
    assert training_flops(config, lengths) == expected
    longer = text_lengths(_run_config(steps=5), tokenizer)
    assert (longer[:3] == lengths).all()  # the same world and batch: a shorter run sees the first batches
    with pytest.raises(ValueError, match="one text length per step"):
        training_flops(config, longer)
    with pytest.raises(ValueError, match="micro_batch"):
        training_flops(_run_config(micro_batch=4), lengths)
    with pytest.raises(TypeError, match="expects a TrainConfig"):
        text_lengths(config.clip_config(), tokenizer)


# ----------------------------------------------------------------------------------------------
# fit_power_law
# ----------------------------------------------------------------------------------------------


def test_power_law_recovers_its_parameters():
    x = np.array([1e9, 3e9, 1e10, 4e10, 2e11])
    fit = fit_power_law(x, 50.0 * x**-0.27)
    assert fit.exponent == pytest.approx(-0.27, abs=1e-12)
    assert fit.coefficient == pytest.approx(50.0, rel=1e-9)
    assert fit.r2 == pytest.approx(1.0)
    assert fit(1e10) == pytest.approx(50.0 * 1e10**-0.27)
    assert fit.ratio(4) == pytest.approx(4**-0.27)  # each 4x compute: error x 0.69


def test_power_law_r2_falls_with_scatter():
    rng = np.random.default_rng(0)
    x = np.logspace(8, 12, 20)
    noisy = fit_power_law(x, 3.0 * x**-0.2 * np.exp(rng.normal(0, 0.3, x.size)))
    assert noisy.exponent < 0 and 0 < noisy.r2 < 1
    flat = fit_power_law(x, np.full(x.size, 0.5))
    assert flat.exponent == pytest.approx(0, abs=1e-12) and flat.r2 == 1.0  # a constant is fitted exactly
    assert isinstance(flat, PowerLaw)


def test_power_law_errors_name_the_problem():
    with pytest.raises(ValueError, match="an error of 0 has no logarithm"):
        fit_power_law([1, 2, 3], [0.5, 0.2, 0.0])
    with pytest.raises(ValueError, match="two distinct x"):
        fit_power_law([5, 5], [0.5, 0.4])
    with pytest.raises(ValueError, match="1-D arrays of one length"):
        fit_power_law([1, 2, 3], [0.5, 0.4])
    assert math.isfinite(fit_power_law([1, 2], [0.5, 0.4]).exponent)

