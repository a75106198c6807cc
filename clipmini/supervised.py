"""The supervised baseline of the robustness comparison: CLIP's image tower trained on fixed labels.

The paper contrasts zero-shot CLIP with a model trained by cross-entropy on a closed label set
(ImageNet's 1000 classes): same architecture, a linear head on top, labels instead of captions. Trained
in one visual domain and tested in others, it shows how much of its accuracy is tied to the training
distribution. This module is that baseline at book scale: any image encoder [B, 3, R, R] -> [B, D] plus
`nn.Linear(D, C)`, AdamW with warmup + cosine decay, deterministic by seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clipmini.eval import _inference, _iter_batches, _model_device
from clipmini.schedule import cosine_lr

__all__ = ["SupervisedConfig", "SupervisedClassifier", "train_supervised", "supervised_baseline"]


@dataclass
class SupervisedConfig:
    """The training recipe of the supervised baseline."""

    steps: int = 300  # optimizer steps; the paper's baselines are fully trained ImageNet models
    batch_size: int = 64
    lr: float = 1e-3  # peak learning rate of AdamW
    weight_decay: float = 0.1  # applied to matrices and conv kernels only, never to gains or biases
    warmup_steps: int = 10  # linear warmup before the cosine decay to zero
    betas: tuple[float, float] = (0.9, 0.98)  # CLIP's AdamW betas (ViT recipe)
    eps: float = 1e-6
    train_encoder: bool = True  # False freezes the tower and trains the head only (a linear probe)
    seed: int = 0  # seeds the head's init and the order of the batches

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SupervisedConfig.{name} must be a positive int; got {value!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"SupervisedConfig.warmup_steps must be >= 0; got {self.warmup_steps}")
        if not self.lr > 0:
            raise ValueError(f"SupervisedConfig.lr must be > 0; got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"SupervisedConfig.weight_decay must be >= 0; got {self.weight_decay}")


class SupervisedClassifier(nn.Module):
    """An image encoder followed by a linear head: images [B, 3, R, R] -> logits [B, C]."""

    def __init__(self, encoder: nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(feature_dim, num_classes)
        self.num_classes = num_classes

    def forward(self, images: Tensor) -> Tensor:
        features = self.encoder(images)  # [B, D]
        return self.head(features)  # [B, C]

    def predict_logits(self, images: Tensor, batch_size: int = 256) -> Tensor:
        """Logits [N, C] on CPU, under eval() and no_grad (BatchNorm uses its running statistics)."""
        device = _model_device(self)
        chunks = []
        with _inference(self):
            for batch, _ in _iter_batches(images, None, batch_size):
                chunks.append(self(batch.to(device)).float().cpu())
        return torch.cat(chunks)

    def predict(self, images: Tensor, batch_size: int = 256) -> Tensor:
        """Predicted class indices [N]."""
        return self.predict_logits(images, batch_size).argmax(dim=1)

    def accuracy(self, images: Tensor, labels: Tensor, batch_size: int = 256) -> float:
        """Top-1 accuracy (fraction) on labelled images."""
        labels = torch.as_tensor(labels).cpu()
        predictions = self.predict(images, batch_size)
        if predictions.shape != labels.shape:
            raise ValueError(f"got {predictions.shape[0]} images but labels of shape {list(labels.shape)}")
        return (predictions == labels).float().mean().item()


def _feature_dim(encoder: nn.Module, images: Tensor) -> int:
    """D of an encoder: its `output_dim` if it declares one, else the width of one probe forward pass."""
    dim = getattr(encoder, "output_dim", None)
    if isinstance(dim, int):
        return dim
    with _inference(encoder):
        out = encoder(images[:1].to(_model_device(encoder)))
    if not isinstance(out, Tensor) or out.dim() != 2:
        raise ValueError(f"the encoder must map images to [B, D] features; got {list(getattr(out, 'shape', []))}")
    return out.shape[1]


def _param_groups(model: nn.Module, weight_decay: float, train_encoder: bool) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad or (not train_encoder and name.startswith("encoder.")):
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_supervised(
    encoder: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    num_classes: int | None = None,
    config: SupervisedConfig | None = None,
    device: torch.device | str | None = None,
) -> tuple[SupervisedClassifier, dict[str, list[float]]]:
    """Train `encoder` + a linear head with cross-entropy on (images [N, 3, R, R], labels [N]).

    Returns the trained `SupervisedClassifier` (in eval mode; call `.predict(images)`) and the history
    {"step", "loss", "lr", "accuracy"} of every step (accuracy on that step's batch). The same seed gives
    the same classifier.
    """
    config = config or SupervisedConfig()
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError(f"images must be a [N, 3, R, R] tensor; got {list(getattr(images, 'shape', []))}")
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels must be [N={images.shape[0]}]; got shape {list(labels.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"labels must hold integer class indices; got {labels.dtype}")
    if labels.min() < 0:
        raise ValueError(f"labels must be non-negative; got {labels.min().item()}")
    labels = labels.long()
    num_classes = num_classes if num_classes is not None else int(labels.max()) + 1
    if labels.max() >= num_classes:
        raise ValueError(f"labels go up to {labels.max().item()} but num_classes={num_classes}")
    device = torch.device(device) if device is not None else _model_device(encoder)

    with torch.random.fork_rng(devices=[]):  # seed the head without touching the caller's RNG
        torch.manual_seed(config.seed)
        model = SupervisedClassifier(encoder, _feature_dim(encoder, images), num_classes).to(device)
    optimizer = torch.optim.AdamW(
        _param_groups(model, config.weight_decay, config.train_encoder),
        lr=config.lr, betas=config.betas, eps=config.eps,
    )
    generator = torch.Generator().manual_seed(config.seed)
    n = images.shape[0]
    batch_size = min(config.batch_size, n)
    order, cursor = torch.randperm(n, generator=generator), 0
    history: dict[str, list[float]] = {"step": [], "loss": [], "lr": [], "accuracy": []}

    model.train()
    if not config.train_encoder:
        model.encoder.eval()  # a frozen tower keeps its BatchNorm statistics
    for step in range(config.steps):
        if cursor + batch_size > n:  # a new epoch: reshuffle
            order, cursor = torch.randperm(n, generator=generator), 0
        idx = order[cursor:cursor + batch_size]
        cursor += batch_size
        batch, target = images[idx].to(device), labels[idx].to(device)  # [b, 3, R, R], [b]

        lr = cosine_lr(step, base_lr=config.lr, warmup_steps=config.warmup_steps, total_steps=config.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if config.train_encoder:
            logits = model(batch)  # [b, C]
        else:
            with torch.no_grad():
                features = model.encoder(batch)  # [b, D]
            logits = model.head(features)
        loss = F.cross_entropy(logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

        history["step"].append(step)
        history["loss"].append(loss.item())
        history["lr"].append(lr)
        history["accuracy"].append((logits.argmax(dim=1) == target).float().mean().item())
    model.eval()
    return model, history


def supervised_baseline(
    clip_config,
    images: Tensor,
    labels: Tensor,
    *,
    num_classes: int | None = None,
    config: SupervisedConfig | None = None,
    device: torch.device | str | None = None,
) -> tuple[SupervisedClassifier, dict[str, list[float]]]:
    """A fresh CLIP image tower of `clip_config` (the same `visual` a `CLIP(clip_config)` builds, seeded by
    `config.seed`) trained with labels by `train_supervised`."""
    from clipmini.towers import build_vision_tower

    config = config or SupervisedConfig()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        encoder = build_vision_tower(clip_config.vision, clip_config.embed_dim, clip_config.quick_gelu)
    if images.dim() == 4 and images.shape[-1] != clip_config.vision.image_size:
        raise ValueError(
            f"images must be [N, 3, {clip_config.vision.image_size}, {clip_config.vision.image_size}] for this "
            f"config; got {list(images.shape)}"
        )
    return train_supervised(encoder, images, labels, num_classes=num_classes, config=config, device=device)
