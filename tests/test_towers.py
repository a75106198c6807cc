"""Shapes, masking, pooling, initialization, parameter counts and input checks of clipmini's towers."""

import math

import pytest
import torch
import torch.nn.functional as F

from clipmini.config import MODEL_CONFIGS, CLIPConfig, TextConfig, VisionConfig, get_config
from clipmini.model import CLIP, create_model
from clipmini.towers import (
    AttentionPool2d,
    LayerNorm,
    ModifiedResNet,
    MultiheadSelfAttention,
    QuickGELU,
    Transformer,
    VisionTransformer,
)

torch.set_num_threads(1)


def make_tokens(model: CLIP, batch: int, eot_positions, seed: int = 0) -> torch.Tensor:
    """Random ids in [1, EOT), an EOT (the largest id) at each given position, zero padding after."""
    g = torch.Generator().manual_seed(seed)
    eot = model.vocab_size - 1
    tokens = torch.randint(1, eot, (batch, model.context_length), generator=g)
    for row, p in enumerate(eot_positions):
        tokens[row, p] = eot
        tokens[row, p + 1 :] = 0
    return tokens


@pytest.fixture(scope="module")
def tiny_vit() -> CLIP:
    torch.manual_seed(0)
    return create_model("tiny-vit").eval()


@pytest.fixture(scope="module")
def tiny_rn() -> CLIP:
    torch.manual_seed(0)
    return create_model("tiny-rn").eval()


# ----- shapes -----


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_model_shapes(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    E, R = model.embed_dim, model.image_size
    images = torch.randn(3, 3, R, R)
    tokens = make_tokens(model, 2, [4, 9])
    with torch.no_grad():
        assert model.encode_image(images).shape == (3, E)
        assert model.encode_text(tokens).shape == (2, E)
        logits_per_image, logits_per_text = model(images, tokens)
    assert logits_per_image.shape == (3, 2)
    assert torch.equal(logits_per_text, logits_per_image.t())
    assert model.visual.output_dim == E
    assert model.visual(images).shape == (3, E)


def test_forward_is_scaled_cosine_similarity(tiny_vit):
    images = torch.randn(2, 3, 32, 32)
    tokens = make_tokens(tiny_vit, 3, [3, 5, 7])
    with torch.no_grad():
        logits_per_image, _ = tiny_vit(images, tokens)
        i = tiny_vit.encode_image(images)
        t = tiny_vit.encode_text(tokens)
    cosine = F.cosine_similarity(i[:, None], t[None], dim=-1)  # [2, 3]
    torch.testing.assert_close(logits_per_image, cosine / 0.07, rtol=1e-5, atol=1e-5)


def test_tower_shapes():
    x = torch.randn(2, 5, 64)
    assert Transformer(64, 2, 4)(x).shape == (2, 5, 64)
    assert MultiheadSelfAttention(64, 4)(x).shape == (2, 5, 64)
    vit = VisionTransformer(VisionConfig(image_size=32, layers=1, width=64, patch_size=8), output_dim=24)
    assert vit.positional_embedding.shape == (4 * 4 + 1, 64)
    assert vit(torch.randn(2, 3, 32, 32)).shape == (2, 24)
    rn = ModifiedResNet(VisionConfig(image_size=64, layers=(1, 2, 1, 1), width=16, patch_size=None), 24)
    assert rn.attnpool.positional_embedding.shape == (2 * 2 + 1, 32 * 16)
    assert len(rn.layer2) == 2
    assert rn.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 24)
    pool = AttentionPool2d(spatial_dim=3, width=64, heads=2, output_dim=10)
    assert pool(torch.randn(2, 64, 3, 3)).shape == (2, 10)


def test_layernorm_runs_in_fp32_and_casts_back():
    ln = LayerNorm(8)
    x = (torch.randn(4, 8) * 1000).to(torch.bfloat16)
    y = ln(x)
    assert y.dtype == torch.bfloat16
    expected = F.layer_norm(x.float(), (8,), ln.weight, ln.bias, ln.eps).to(torch.bfloat16)
    assert torch.equal(y, expected)


def test_quick_gelu_formula():
    x = torch.linspace(-4, 4, 41)
    assert torch.allclose(QuickGELU()(x), x * torch.sigmoid(1.702 * x))
    assert not torch.allclose(QuickGELU()(x), F.gelu(x), atol=1e-3)  # an approximation, not GELU


def test_resnet_downsample_path_matches_openai_layout():
    rn = ModifiedResNet(VisionConfig(image_size=32, layers=(1, 1, 1, 1), width=16, patch_size=None), 8)
    keys = set(rn.state_dict())
    assert "layer2.0.downsample.0.weight" in keys and "layer2.0.downsample.1.running_var" in keys
    assert not any(".downsample.pool" in k for k in keys)  # the pool has no parameters
    assert rn.layer2[0].downsample.pool.kernel_size == 2


# ----- causal mask and EOT pooling -----


def test_causal_attention_matches_explicit_mask():
    torch.manual_seed(0)
    attn = MultiheadSelfAttention(32, 4)
    x = torch.randn(2, 7, 32)
    # The same attention written out with an additive -inf mask above the diagonal.
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    split = lambda t: t.view(2, 7, 4, 8).transpose(1, 2)  # noqa: E731  [B, H, L, D]
    scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(8)  # [B, H, L, L]
    mask = torch.full((7, 7), float("-inf")).triu(1)
    out = (scores + mask).softmax(-1) @ split(v)  # [B, H, L, D]
    expected = attn.out_proj(out.transpose(1, 2).reshape(2, 7, 32))
    torch.testing.assert_close(attn(x, causal=True), expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(attn(x, causal=False), expected, atol=1e-3)


def test_causal_mask_later_tokens_do_not_change_earlier_positions(tiny_vit):
    tokens = make_tokens(tiny_vit, 2, [20, 25])
    t = 6
    changed = tokens.clone()
    changed[:, t + 1 :] = torch.randint(1, 1000, changed[:, t + 1 :].shape)
    with torch.no_grad():
        run = lambda tok: tiny_vit.transformer(  # noqa: E731
            tiny_vit.token_embedding(tok) + tiny_vit.positional_embedding, causal=True
        )
        a, b = run(tokens), run(changed)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :], atol=1e-3)


def test_eot_pooling_ignores_padding_and_reads_the_eot_position(tiny_vit):
    tokens = make_tokens(tiny_vit, 2, [5, 11])
    with torch.no_grad():
        full = tiny_vit.encode_text(tokens)
        # Whatever follows EOT is invisible to it: other pad values give the same features...
        repadded = tokens.clone()
        repadded[0, 6:] = 7
        repadded[1, 12:] = 3
        assert torch.allclose(tiny_vit.encode_text(repadded), full, atol=1e-6)
        # ...and so does cutting the sequence right after EOT.
        assert torch.allclose(tiny_vit.encode_text(tokens[:1, :6]), full[:1], atol=1e-6)
        # Moving EOT one step later changes the features.
        moved = make_tokens(tiny_vit, 2, [6, 11])
        moved[0, :5] = tokens[0, :5]
        moved[0, 5] = tokens[0, 4]
        assert not torch.allclose(tiny_vit.encode_text(moved)[0], full[0], atol=1e-3)


def test_trimming_padding_is_exact_and_shortens_the_text_run():
    torch.manual_seed(0)
    model = create_model("tiny-vit").train()
    tokens = make_tokens(model, 3, [4, 9, 6])
    lengths = []
    hook = model.transformer.register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[1]))
    try:
        results = {}
        for trim in (False, True):
            model.trim_padding = trim
            model.zero_grad()
            features = model.encode_text(tokens)
            features.square().sum().backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            results[trim] = features.detach(), grads
    finally:
        hook.remove()
        model.trim_padding = True
    assert lengths == [32, 10]  # the whole context, then up to the last EOT (position 9)
    torch.testing.assert_close(results[True][0], results[False][0], rtol=1e-5, atol=1e-6)
    assert results[True][1].keys() == results[False][1].keys()
    for name, grad in results[False][1].items():  # equal up to fp32 rounding of the sums
        scale = grad.abs().max().item()
        torch.testing.assert_close(results[True][1][name], grad, rtol=1e-4, atol=1e-5 * scale, msg=name)


# ----- initialization -----


def test_text_init_statistics():
    torch.manual_seed(0)
    model = create_model("small-vit")  # 49408 x 256 token embedding: a precise std estimate
    w, L = 256, 6
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert model.logit_scale.item() == pytest.approx(2.6593, abs=1e-4)
    assert model.logit_scale.shape == ()
    assert model.token_embedding.weight.std().item() == pytest.approx(0.02, rel=0.01)
    assert model.positional_embedding.std().item() == pytest.approx(0.01, rel=0.05)
    block = model.transformer.resblocks[0]
    assert block.attn.in_proj_weight.std().item() == pytest.approx(w**-0.5, rel=0.02)
    assert block.attn.out_proj.weight.std().item() == pytest.approx(w**-0.5 * (2 * L) ** -0.5, rel=0.02)
    assert block.mlp.c_fc.weight.std().item() == pytest.approx((2 * w) ** -0.5, rel=0.02)
    assert block.mlp.c_proj.weight.std().item() == pytest.approx(w**-0.5 * (2 * L) ** -0.5, rel=0.02)
    assert model.text_projection.std().item() == pytest.approx(w**-0.5, rel=0.05)
    # The ViT's scaled Gaussians; its blocks keep nn.MultiheadAttention's start (zero biases).
    visual = model.visual
    assert visual.positional_embedding.std().item() == pytest.approx(256**-0.5, rel=0.05)
    assert visual.proj.std().item() == pytest.approx(256**-0.5, rel=0.05)
    assert torch.count_nonzero(visual.transformer.resblocks[0].attn.in_proj_bias) == 0


def test_resnet_init():
    torch.manual_seed(0)
    model = create_model("tiny-rn")
    bn3 = [b.bn3.weight for stage in (1, 2, 3, 4) for b in getattr(model.visual, f"layer{stage}")]
    assert len(bn3) == 4 and all(torch.count_nonzero(w) == 0 for w in bn3)
    assert torch.count_nonzero(model.visual.bn3.weight) == 16  # the stem's bn3 is not zeroed
    pool = model.visual.attnpool
    for proj in (pool.q_proj, pool.k_proj, pool.v_proj):
        assert proj.weight.std().item() == pytest.approx(512**-0.5, rel=0.02)
    assert pool.c_proj.weight.std().item() == pytest.approx(512**-0.5, rel=0.1)


# ----- parameter counts: the paper's table -----

PAPER_PARAMS_M = {
    "RN50": 102.0,
    "RN101": 119.7,
    "RN50x4": 178.3,
    "RN50x16": 291.0,
    "RN50x64": 623.3,
    "ViT-B/32": 151.3,
    "ViT-B/16": 149.6,
    "ViT-L/14": 427.6,
    "ViT-L/14@336px": 427.9,
}


@pytest.mark.parametrize("name", list(PAPER_PARAMS_M))
def test_parameter_counts_match_paper(name):
    with torch.device("meta"):
        model = CLIP(get_config(name))
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(count - PAPER_PARAMS_M[name]) <= 0.05, f"{name}: {count:.3f}M"


def test_every_named_config_builds_on_meta():
    for name, config in MODEL_CONFIGS.items():
        with torch.device("meta"):
            model = CLIP(config)
        assert model.visual.output_dim == config.embed_dim, name
    assert set(PAPER_PARAMS_M) <= set(MODEL_CONFIGS)


# ----- bad inputs -----


@pytest.mark.parametrize(
    "images, error, message",
    [
        (torch.randn(2, 1, 28, 28), ValueError, r"image must be \[B, 3, 32, 32\] for this model; got \[B, 1, 28, 28\]"),
        (torch.randn(2, 3, 64, 64), ValueError, r"got \[B, 3, 64, 64\]"),
        (torch.randn(3, 32, 32), ValueError, r"3-D tensor \[3, 32, 32\].*unsqueeze"),
        (torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8), TypeError, "floating-point.*torch.uint8"),
        (torch.full((2, 3, 32, 32), float("nan")), ValueError, "NaN or infinite"),
        ([[0.0]], TypeError, "torch.Tensor"),
    ],
)
def test_bad_images_raise(tiny_vit, images, error, message):
    with pytest.raises(error, match=message):
        tiny_vit.encode_image(images)


@pytest.mark.parametrize(
    "tokens, error, message",
    [
        (torch.zeros(2, 32), TypeError, "integer tensor.*torch.float32"),
        (torch.zeros(2, 32, dtype=torch.bool), TypeError, "integer tensor"),
        (torch.zeros(32, dtype=torch.long), ValueError, r"\[B, L\].*1-D.*unsqueeze"),
        (torch.zeros(2, 40, dtype=torch.long), ValueError, "context_length=32; got length 40"),
        (torch.full((2, 32), 1024), ValueError, r"\[0, vocab_size=1024\).*max 1024"),
        (torch.full((2, 32), -1), ValueError, "min -1"),
        ([[1, 2]], TypeError, "clipmini.tokenize"),
    ],
)
def test_bad_tokens_raise(tiny_vit, tokens, error, message):
    with pytest.raises(error, match=message):
        tiny_vit.encode_text(tokens)


def test_value_checks_can_be_switched_off(tiny_vit):
    images = torch.randn(1, 3, 32, 32)
    images[0, 0, 0, 0] = float("nan")
    tiny_vit.validate_inputs = False
    try:
        assert torch.isnan(tiny_vit.encode_image(images)).all()  # no check: NaN flows through
    finally:
        tiny_vit.validate_inputs = True


def test_narrow_integer_tokens_are_accepted(tiny_vit):
    tokens = make_tokens(tiny_vit, 2, [3, 6])
    with torch.no_grad():
        assert torch.equal(tiny_vit.encode_text(tokens.int()), tiny_vit.encode_text(tokens))
        assert torch.equal(tiny_vit.encode_text(tokens.short()), tiny_vit.encode_text(tokens))


# ----- configs -----


def test_config_round_trip_and_unknown_keys():
    for name, config in MODEL_CONFIGS.items():
        assert CLIPConfig.from_dict(config.to_dict()) == config, name
    d = get_config("RN50").to_dict()
    assert d["vision"]["layers"] == [3, 4, 6, 3]
    d["vision"]["depth"] = 3
    with pytest.raises(ValueError, match="unknown key.*'depth'"):
        CLIPConfig.from_dict(d)
    with pytest.raises(ValueError, match="unknown key.*'temperature'"):
        CLIPConfig.from_dict({**get_config("RN50").to_dict(), "temperature": 0.07})


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="head_width=64 must divide width=96"):
        TextConfig(width=96)
    with pytest.raises(ValueError, match="image_size=30 must be a multiple of patch_size=4"):
        VisionConfig(image_size=30, patch_size=4, width=64, layers=2)
    with pytest.raises(ValueError, match="4-tuple"):
        VisionConfig(layers=12, patch_size=None, width=64)
    with pytest.raises(ValueError, match="multiple of 32"):
        VisionConfig(image_size=48, layers=(1, 1, 1, 1), patch_size=None, width=64)
    with pytest.raises(ValueError, match="CLIPConfig.embed_dim must be positive"):
        CLIPConfig(embed_dim=0)
    with pytest.raises(TypeError, match="TextConfig.layers must be an int"):
        TextConfig(layers=2.5)
    with pytest.raises(TypeError, match="CLIPConfig.vision must be a VisionConfig"):
        CLIPConfig(vision={"width": 64})
    with pytest.raises(ValueError, match="unknown model name 'ViT-H/14'.*ViT-B/32"):
        get_config("ViT-H/14")


def test_config_heads_and_copies():
    assert get_config("ViT-L/14").vision.heads == 16
    assert get_config("RN50").vision.heads == 32  # the attention pool: 32 * 64 / 64
    assert get_config("tiny-vit").text.heads == 2
    config = get_config("tiny-vit")
    config.embed_dim = 7
    assert MODEL_CONFIGS["tiny-vit"].embed_dim == 64  # get_config hands out a copy


# ----- training-time features -----


def _grads(model: CLIP, images, tokens) -> dict:
    model.zero_grad()
    logits_per_image, logits_per_text = model(images, tokens)
    labels = torch.arange(len(images))
    loss = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_grad_checkpointing_gives_identical_grads():
    torch.manual_seed(0)
    model = create_model("tiny-vit").train()
    images = torch.randn(4, 3, 32, 32)
    tokens = make_tokens(model, 4, [3, 8, 12, 30])
    reference = _grads(model, images, tokens)
    model.set_grad_checkpointing(True)
    assert model.transformer.grad_checkpointing and model.visual.transformer.grad_checkpointing
    checkpointed = _grads(model, images, tokens)
    assert reference.keys() == checkpointed.keys() and len(reference) == len(list(model.parameters()))
    for name in reference:
        torch.testing.assert_close(checkpointed[name], reference[name], rtol=1e-5, atol=1e-7, msg=name)


def test_resnet_grad_checkpointing_warns_and_checkpoints_the_text_tower():
    model = create_model("tiny-rn")
    with pytest.warns(UserWarning, match="BatchNorm"):
        model.set_grad_checkpointing(True)
    assert model.transformer.grad_checkpointing


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_bf16_autocast_on_cpu(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    images = torch.randn(4, 3, 32, 32)
    tokens = make_tokens(model, 4, [3, 8, 12, 30])
    with torch.no_grad():
        i32, t32 = model.encode_image(images), model.encode_text(tokens)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            i16, t16 = model.encode_image(images), model.encode_text(tokens)
            logits, _ = model(images, tokens)
    assert i16.dtype == torch.bfloat16 and t16.dtype == torch.bfloat16
    assert torch.isfinite(logits).all()
    assert F.cosine_similarity(i16.float(), i32, dim=-1).min() > 0.99
    assert F.cosine_similarity(t16.float(), t32, dim=-1).min() > 0.99
