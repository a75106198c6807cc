"""Compute and the power law: FLOPs counted from a model's shapes, and error fitted against them.

The paper plots average zero-shot error against training compute on log-log axes and finds a smooth,
straight trend over a 44x range of compute (its Figure 9, five ResNet CLIPs); it fits no exponent. A
straight line in log-log is a power law, error ≈ a · C^b with b < 0. Here `clip_flops` counts the FLOPs
of one forward pass and one training step from a `CLIPConfig` (every matmul and convolution, 2 FLOPs
per multiply-add), `training_flops` adds them up over the steps of a caption-world run, and
`fit_power_law` fits the line by least squares in log space. The counts are checked against
`torch.utils.flop_counter.FlopCounterMode` in the tests.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from .config import CLIPConfig, VisionConfig

__all__ = [
    "TEXT_TERMS",
    "clip_flops",
    "text_lengths",
    "training_flops",
    "PowerLaw",
    "fit_power_law",
]

TEXT_TERMS = ("text_dense", "text_attention", "text_proj")  # the text tower's share of `clip_flops`


def _transformer_flops(tokens: int, width: int, layers: int) -> tuple[int, int]:
    """(dense, attention) FLOPs of `layers` pre-LN blocks over `tokens` positions of width `width`."""
    # per block: q, k, v 2·T·W·3W + output projection 2·T·W·W + MLP (W → 4W → W) 2·T·W·4W·2 = 24·T·W²
    dense = 24 * tokens * width**2
    # per block: Q Kᵀ and A V, each 2·T·T·W over all heads (H·D = W); the causal mask is not discounted
    attention = 4 * tokens**2 * width
    return layers * dense, layers * attention


def _vit_flops(v: VisionConfig, embed_dim: int) -> tuple[dict[str, int], int]:
    """Per-image terms of a ViT, and the FLOPs of its pixel-reading layer (the patch embedding)."""
    G = v.image_size // v.patch_size
    tokens = G * G + 1  # the patches and the class token
    patch_embed = 2 * G * G * (3 * v.patch_size**2) * v.width  # the stride-P convolution as a matmul
    dense, attention = _transformer_flops(tokens, v.width, v.layers)
    terms = {
        "patch_embed": patch_embed,
        "vision_dense": dense,
        "vision_attention": attention,
        "vision_proj": 2 * v.width * embed_dim,  # the class token only
    }
    return terms, patch_embed


def _conv(size: int, c_in: int, c_out: int, kernel: int = 1) -> int:
    """FLOPs of a k×k convolution with a `size`×`size` output (padded borders count as full windows)."""
    return 2 * size * size * c_in * kernel * kernel * c_out


def _resnet_flops(v: VisionConfig, embed_dim: int) -> tuple[dict[str, int], int]:
    """Per-image terms of OpenAI's ModifiedResNet, and the FLOPs of its first (pixel-reading) conv."""
    W = v.width
    size = v.image_size // 2  # the stem's first conv has stride 2
    pixels = _conv(size, 3, W // 2, 3)
    stem = pixels + _conv(size, W // 2, W // 2, 3) + _conv(size, W // 2, W, 3)
    size //= 2  # the stem's 2×2 average pool
    bottlenecks, inplanes = 0, W
    for stage, blocks in enumerate(v.layers):
        planes = W * 2**stage
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            out = size // stride  # the anti-aliasing average pool comes before conv3 and the shortcut
            bottlenecks += _conv(size, inplanes, planes) + _conv(size, planes, planes, 3) + _conv(out, planes, 4 * planes)
            if stride > 1 or inplanes != 4 * planes:
                bottlenecks += _conv(out, inplanes, 4 * planes)  # the shortcut's 1×1 conv
            inplanes, size = 4 * planes, out
    C, tokens = 32 * W, size * size + 1  # the attention pool: the map's positions and their mean
    terms = {
        "stem": stem,
        "bottlenecks": bottlenecks,
        "attnpool_qkv": 2 * C * C + 2 * (2 * tokens * C * C),  # q of the mean token; k and v of all tokens
        "vision_attention": 4 * tokens * C,  # one query: q Kᵀ and a V
        "vision_proj": 2 * C * embed_dim,  # c_proj
    }
    return terms, pixels


def clip_flops(config: CLIPConfig, batch: int, text_length: int | None = None) -> dict[str, int]:
    """FLOPs of one CLIP forward pass and one training step on `batch` image-caption pairs, by term.

    Counted: every matmul and convolution, 2 FLOPs per multiply-add. Not counted: norms, activations,
    pooling, softmax, embedding lookups, residual adds and the optimizer (each O(1) per activation,
    small next to the matmuls). Per transformer block of T tokens and width W:

        dense     = 24 · T · W²    # q, k, v 6TW² + output projection 2TW² + MLP (W → 4W → W) 16TW²
        attention =  4 · T² · W    # Q Kᵀ and A V over the full T × T square

    ViT image tower (grid G = R/P, T_v = G² + 1): `patch_embed` 2·G²·3P²·W_v, the blocks, and
    `vision_proj` 2·W_v·E. ModifiedResNet: the `stem`'s three 3×3 convs, the `bottlenecks`' convs
    (1×1, 3×3, 1×1 and the shortcut's 1×1), and the attention pool at width C = 32·W over the final
    map's S² positions plus their mean: `attnpool_qkv`, its one-query `vision_attention`, and
    `vision_proj` (c_proj, 2·C·E). Text tower: T_t = `text_length` positions (the model runs up to the
    batch's last EOT; default the whole context), its blocks and `text_proj` 2·W_t·E. `logits`: 2·B²·E.

    `train_step` = forward + backward. Backward costs each matmul twice its forward (the gradients of
    its input and of its weight), except the first layer, whose input (the pixels) needs no gradient:
    `train_step = 3 · forward − first layer`.
    """
    if not isinstance(config, CLIPConfig):
        raise TypeError(f"clip_flops expects a CLIPConfig; got {type(config).__name__}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int; got {batch!r}")
    t, E = config.text, config.embed_dim
    L = t.context_length if text_length is None else text_length
    if isinstance(L, bool) or not isinstance(L, int) or not 1 <= L <= t.context_length:
        raise ValueError(f"text_length must be an int in [1, context_length={t.context_length}]; got {text_length!r}")

    vision, first_layer = (_vit_flops if config.vision.is_vit else _resnet_flops)(config.vision, E)
    text_dense, text_attention = _transformer_flops(L, t.width, t.layers)
    per_pair = {**vision, "text_dense": text_dense, "text_attention": text_attention, "text_proj": 2 * t.width * E}
    counts = {name: batch * value for name, value in per_pair.items()}
    counts["logits"] = 2 * batch * batch * E  # image_features @ text_features.T
    forward = sum(counts.values())
    counts["forward"] = forward
    counts["train_step"] = 3 * forward - batch * first_layer
    return counts


def text_lengths(config, tokenizer) -> np.ndarray:
    """The text tower's length at every step of `config`'s caption-world run: up to its batch's last EOT. [steps]"""
    from .train import TrainConfig, make_world

    if not isinstance(config, TrainConfig):
        raise TypeError(f"text_lengths expects a TrainConfig; got {type(config).__name__}")
    if config.data != "world":
        raise ValueError(f"text_lengths reads the caption world's batches; this run has data={config.data!r}")
    world, context_length = make_world(config), config.clip_config().text.context_length
    lengths = np.empty(config.steps, dtype=np.int64)
    for step in range(config.steps):
        tokens = tokenizer(world.captions(step, config.batch_size), context_length=context_length, truncate=True)
        lengths[step] = int(tokens.argmax(dim=-1).max()) + 1  # EOT has the largest id, as in the model's trim
    return lengths


def training_flops(config, lengths) -> int:
    """FLOPs of `config`'s whole training run (one process, no accumulation): Σ over steps of `train_step`.

    `lengths` [steps] holds each step's text length (`text_lengths`). Runs on one caption world with one
    batch size draw the same batches, so a shorter run's lengths are the first `steps` of a longer one's.
    Evaluations are not training compute.
    """
    if config.micro_batch is not None:
        raise ValueError(
            "training_flops counts plain steps; with micro_batch set, gradient accumulation runs the towers "
            "a second time (with gradient) and each micro-batch trims its own text length"
        )
    lengths = np.asarray(lengths)
    if lengths.shape != (config.steps,):
        raise ValueError(f"lengths must hold one text length per step: shape ({config.steps},); got {lengths.shape}")
    clip_config = config.clip_config()
    counts = Counter(int(n) for n in lengths)
    return sum(n * clip_flops(clip_config, config.batch_size, length)["train_step"] for length, n in counts.items())


@dataclass(frozen=True)
class PowerLaw:
    """y = coefficient · x^exponent, fitted in log space; `r2` is the fit's R² there."""

    coefficient: float
    exponent: float
    r2: float

    def __call__(self, x) -> np.ndarray:
        return self.coefficient * np.asarray(x, dtype=float) ** self.exponent

    def ratio(self, factor: float) -> float:
        """What y is multiplied by when x grows `factor`-fold: factor^exponent."""
        return float(factor) ** self.exponent


def fit_power_law(x, y) -> PowerLaw:
    """Least squares of log y = log a + b · log x; x and y positive, at least two distinct x."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"x and y must be 1-D arrays of one length; got shapes {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all() and (x > 0).all() and (y > 0).all()):
        raise ValueError(
            "a power law is fitted to the logs: every x and y must be finite and > 0 "
            f"(an error of 0 has no logarithm); got x={x.tolist()}, y={y.tolist()}"
        )
    if np.unique(x).size < 2:
        raise ValueError(f"fitting a line needs at least two distinct x values; got {x.tolist()}")
    lx, ly = np.log(x), np.log(y)
    design = np.stack([np.ones_like(lx), lx], axis=1)  # [n, 2]
    (intercept, slope), *_ = np.linalg.lstsq(design, ly, rcond=None)
    residual = ly - (intercept + slope * lx)
    total = ((ly - ly.mean()) ** 2).sum()
    r2 = 1.0 - float((residual**2).sum() / total) if total > 0 else 1.0
    return PowerLaw(coefficient=math.exp(intercept), exponent=float(slope), r2=r2)
