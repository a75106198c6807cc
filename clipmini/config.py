"""Typed configurations for CLIP's two towers, and the named models of the paper's table.

A `CLIPConfig` is everything needed to build a `clipmini.model.CLIP` of the right shapes. The
names follow the paper and OpenAI's code: `embed_dim` is the joint embedding size E, `width` is a
tower's residual-stream size, `context_length` is the text length in tokens.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = [
    "VisionConfig",
    "TextConfig",
    "CLIPConfig",
    "MODEL_CONFIGS",
    "get_config",
]


def _check_positive_int(owner: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}.{name} must be an int; got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ValueError(f"{owner}.{name} must be positive; got {value}")


def _reject_unknown_keys(cls: type, data: dict) -> None:
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__}.from_dict expects a dict; got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(
            f"unknown key(s) for {cls.__name__}: {', '.join(map(repr, unknown))}; "
            f"valid keys are {', '.join(sorted(known))}"
        )


@dataclass
class VisionConfig:
    """The image tower: a ViT when `patch_size` is set, OpenAI's ModifiedResNet when it is None."""

    image_size: int = 224  # input resolution R; images are [B, 3, R, R]
    # ViT: number of transformer blocks. ModifiedResNet: blocks in each of the 4 stages.
    layers: int | tuple[int, int, int, int] = 12
    # ViT: residual width. ModifiedResNet: stem/first-stage width W (the stages are W, 2W, 4W, 8W
    # with bottleneck expansion 4, so the attention pool works at 32W).
    width: int = 768
    patch_size: int | None = 32  # ViT patch size P; None selects the ModifiedResNet
    head_width: int = 64  # channels per attention head; OpenAI uses 64 everywhere

    def __post_init__(self) -> None:
        owner = "VisionConfig"
        _check_positive_int(owner, "image_size", self.image_size)
        _check_positive_int(owner, "width", self.width)
        _check_positive_int(owner, "head_width", self.head_width)
        if self.patch_size is None:
            if isinstance(self.layers, list):
                self.layers = tuple(self.layers)
            if not isinstance(self.layers, tuple) or len(self.layers) != 4:
                raise ValueError(
                    f"{owner}.layers must be a 4-tuple of block counts for a ModifiedResNet "
                    f"(patch_size=None); got {self.layers!r}"
                )
            for i, n in enumerate(self.layers):
                _check_positive_int(owner, f"layers[{i}]", n)
            if self.width % 2:
                raise ValueError(
                    f"{owner}.width must be even for a ModifiedResNet (the stem's first conv "
                    f"has width/2 channels); got {self.width}"
                )
            if self.image_size % 32:
                raise ValueError(
                    f"{owner}.image_size must be a multiple of 32 for a ModifiedResNet "
                    f"(it downsamples 32x); got {self.image_size}"
                )
            attn_width = 32 * self.width
            if attn_width % self.head_width:
                raise ValueError(
                    f"{owner}.head_width={self.head_width} must divide the attention-pool width "
                    f"32*width={attn_width}"
                )
        else:
            _check_positive_int(owner, "patch_size", self.patch_size)
            _check_positive_int(owner, "layers", self.layers)
            if self.image_size % self.patch_size:
                raise ValueError(
                    f"{owner}.image_size={self.image_size} must be a multiple of "
                    f"patch_size={self.patch_size}"
                )
            if self.width % self.head_width:
                raise ValueError(
                    f"{owner}.head_width={self.head_width} must divide width={self.width}"
                )

    @property
    def is_vit(self) -> bool:
        return self.patch_size is not None

    @property
    def heads(self) -> int:
        """Attention heads: of every ViT block, or of the ResNet's attention pool."""
        attn_width = self.width if self.is_vit else 32 * self.width
        return attn_width // self.head_width

    def to_dict(self) -> dict:
        d = asdict(self)
        if isinstance(d["layers"], tuple):
            d["layers"] = list(d["layers"])  # JSON has no tuples
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "VisionConfig":
        _reject_unknown_keys(cls, data)
        return cls(**data)


@dataclass
class TextConfig:
    """The text tower: a causal transformer read out at the end-of-text token."""

    context_length: int = 77  # tokens per caption, SOT and EOT included
    vocab_size: int = 49408  # OpenAI's BPE: 256 bytes x 2 + 48,894 merges + 2 special tokens
    width: int = 512
    layers: int = 12
    head_width: int = 64  # channels per attention head

    def __post_init__(self) -> None:
        owner = "TextConfig"
        for name in ("context_length", "vocab_size", "width", "layers", "head_width"):
            _check_positive_int(owner, name, getattr(self, name))
        if self.context_length < 2:
            raise ValueError(
                f"{owner}.context_length must be >= 2 (room for <|startoftext|> and <|endoftext|>); "
                f"got {self.context_length}"
            )
        if self.width % self.head_width:
            raise ValueError(f"{owner}.head_width={self.head_width} must divide width={self.width}")

    @property
    def heads(self) -> int:
        return self.width // self.head_width

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TextConfig":
        _reject_unknown_keys(cls, data)
        return cls(**data)


@dataclass
class CLIPConfig:
    """A whole CLIP model: two towers projected into a shared `embed_dim`-sized space."""

    embed_dim: int = 512  # E, the size of the joint image-text embedding
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    quick_gelu: bool = True  # x*sigmoid(1.702x), as in OpenAI's checkpoints; False = exact GELU
    init_logit_scale: float = math.log(1 / 0.07)  # ln(1/tau) with the paper's tau = 0.07

    def __post_init__(self) -> None:
        _check_positive_int("CLIPConfig", "embed_dim", self.embed_dim)
        if not isinstance(self.vision, VisionConfig):
            raise TypeError(
                f"CLIPConfig.vision must be a VisionConfig; got {type(self.vision).__name__} "
                "(use CLIPConfig.from_dict for nested dicts)"
            )
        if not isinstance(self.text, TextConfig):
            raise TypeError(
                f"CLIPConfig.text must be a TextConfig; got {type(self.text).__name__} "
                "(use CLIPConfig.from_dict for nested dicts)"
            )
        if not isinstance(self.quick_gelu, bool):
            raise TypeError(f"CLIPConfig.quick_gelu must be a bool; got {self.quick_gelu!r}")
        if isinstance(self.init_logit_scale, bool) or not isinstance(self.init_logit_scale, (int, float)):
            raise TypeError(
                f"CLIPConfig.init_logit_scale must be a float; got {self.init_logit_scale!r}"
            )
        if not math.isfinite(self.init_logit_scale):
            raise ValueError(
                f"CLIPConfig.init_logit_scale must be finite; got {self.init_logit_scale}"
            )
        self.init_logit_scale = float(self.init_logit_scale)

    def to_dict(self) -> dict:
        return {
            "embed_dim": self.embed_dim,
            "vision": self.vision.to_dict(),
            "text": self.text.to_dict(),
            "quick_gelu": self.quick_gelu,
            "init_logit_scale": self.init_logit_scale,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "CLIPConfig":
        _reject_unknown_keys(cls, data)
        data = dict(data)
        if "vision" in data and isinstance(data["vision"], dict):
            data["vision"] = VisionConfig.from_dict(data["vision"])
        if "text" in data and isinstance(data["text"], dict):
            data["text"] = TextConfig.from_dict(data["text"])
        return cls(**data)


def _resnet(embed_dim: int, image_size: int, layers: tuple, width: int, text_width: int) -> CLIPConfig:
    return CLIPConfig(
        embed_dim=embed_dim,
        vision=VisionConfig(image_size=image_size, layers=layers, width=width, patch_size=None),
        text=TextConfig(width=text_width),
    )


def _vit(embed_dim: int, image_size: int, layers: int, width: int, patch: int, text_width: int) -> CLIPConfig:
    return CLIPConfig(
        embed_dim=embed_dim,
        vision=VisionConfig(image_size=image_size, layers=layers, width=width, patch_size=patch),
        text=TextConfig(width=text_width),
    )


# The tiny text tower of the book's own runs: a 1,024-id vocabulary is what our BPE trains
# (512 byte tokens + 510 merges + SOT + EOT), and 32 tokens fit the short synthetic captions.
def _tiny_text() -> TextConfig:
    return TextConfig(context_length=32, vocab_size=1024, width=64, layers=2, head_width=32)


MODEL_CONFIGS: dict[str, CLIPConfig] = {
    # OpenAI's released models (the table in clip-facts.md): E, resolution, vision, text width.
    "RN50": _resnet(1024, 224, (3, 4, 6, 3), 64, 512),
    "RN101": _resnet(512, 224, (3, 4, 23, 3), 64, 512),
    "RN50x4": _resnet(640, 288, (4, 6, 10, 6), 80, 640),
    "RN50x16": _resnet(768, 384, (6, 8, 18, 8), 96, 768),
    "RN50x64": _resnet(1024, 448, (3, 15, 36, 10), 128, 1024),
    "ViT-B/32": _vit(512, 224, 12, 768, 32, 512),
    "ViT-B/16": _vit(512, 224, 12, 768, 16, 512),
    "ViT-L/14": _vit(768, 224, 24, 1024, 14, 768),
    "ViT-L/14@336px": _vit(768, 336, 24, 1024, 14, 768),
    # The book's CPU-sized models for 32x32 images (CIFAR-like); two heads of 32 channels.
    "tiny-vit": CLIPConfig(
        embed_dim=64,
        vision=VisionConfig(image_size=32, layers=4, width=64, patch_size=4, head_width=32),
        text=_tiny_text(),
    ),
    # A ModifiedResNet with one bottleneck per stage; 32 px in, a 1x1 map into the attention pool.
    "tiny-rn": CLIPConfig(
        embed_dim=64,
        vision=VisionConfig(image_size=32, layers=(1, 1, 1, 1), width=16, patch_size=None),
        text=_tiny_text(),
    ),
    # A mid-sized ViT for benchmarks: 64 px images, 8 px patches, OpenAI's tokenizer.
    "small-vit": CLIPConfig(
        embed_dim=256,
        vision=VisionConfig(image_size=64, layers=6, width=256, patch_size=8),
        text=TextConfig(context_length=77, vocab_size=49408, width=256, layers=6),
    ),
}


def get_config(name: str) -> CLIPConfig:
    """A fresh copy of the named configuration (editing it does not change `MODEL_CONFIGS`)."""
    if name not in MODEL_CONFIGS:
        raise ValueError(
            f"unknown model name {name!r}; valid names are: {', '.join(MODEL_CONFIGS)}"
        )
    return CLIPConfig.from_dict(MODEL_CONFIGS[name].to_dict())
