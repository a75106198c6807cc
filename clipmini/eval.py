"""Evaluation on frozen features: image-text retrieval and linear / few-shot probes.

The paper measures a representation three ways besides zero-shot classification: retrieval R@k in both
directions (image -> text, text -> image), a linear probe (logistic regression on frozen image features,
its L2 strength picked on a validation split), and few-shot probes (the same fit on k examples per class).
Everything here works on feature tensors; `extract_features` turns a model and images into them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "extract_features",
    "retrieval_metrics",
    "linear_probe",
    "few_shot_probe",
    "sample_k_per_class",
    "DEFAULT_L2_GRID",
]

# L2 strengths tried by `linear_probe`: lambda in  mean CE + lambda/2 * ||W||^2  on standardized features.
# The paper sweeps 96 log-spaced values in [1e-6, 1e6] with a parametric binary search; 7 decades
# cover the useful range on standardized features at a fraction of the cost.
DEFAULT_L2_GRID: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


# ----------------------------------------------------------------------------- feature extraction


def _model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a parameter-free module)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def _inference(model: nn.Module) -> Iterator[None]:
    """eval() + no_grad for the duration, then restore the model's previous train/eval mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _iter_batches(
    images: Tensor | Iterable, labels: Tensor | None, batch_size: int
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Yield (images, labels-or-None) batches from a tensor (sliced) or an iterable such as a DataLoader.

    An iterable may yield image tensors, (images, labels, ...) tuples/lists, or dicts with "image(s)" and
    optionally "label(s)" keys.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
    if isinstance(images, Tensor):
        if images.dim() != 4:
            raise ValueError(f"images must be [N, 3, R, R]; got shape {list(images.shape)}")
        if labels is not None:
            if not isinstance(labels, Tensor) or labels.dim() != 1:
                raise ValueError("labels must be a 1-D tensor [N] of class indices")
            if labels.shape[0] != images.shape[0]:
                raise ValueError(
                    f"images and labels disagree on N: {images.shape[0]} images, {labels.shape[0]} labels"
                )
        for start in range(0, images.shape[0], batch_size):
            stop = start + batch_size
            yield images[start:stop], (None if labels is None else labels[start:stop])
        return
    if labels is not None:
        raise ValueError("pass labels only with an images tensor; a DataLoader must yield (images, labels)")
    if not isinstance(images, Iterable):
        raise TypeError(f"images must be a [N, 3, R, R] tensor or an iterable of batches; got {type(images).__name__}")
    for batch in images:
        if isinstance(batch, Tensor):
            yield batch, None
        elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
            batch_labels = batch[1] if len(batch) > 1 and isinstance(batch[1], Tensor) else None
            yield batch[0], batch_labels
        elif isinstance(batch, dict):
            img = batch.get("images", batch.get("image"))
            if not isinstance(img, Tensor):
                raise TypeError("a dict batch must hold an 'images' (or 'image') tensor")
            yield img, batch.get("labels", batch.get("label"))
        else:
            raise TypeError(
                f"each batch must be an image tensor, an (images, labels) pair or a dict; got {type(batch).__name__}"
            )


def _encode_images(model: nn.Module, images: Tensor, device: torch.device) -> Tensor:
    """One batch through `model.encode_image` (or `model(images)` for a bare image encoder) -> [B, E] float32.
    The towers cast the pixels to their own weight dtype, so fp16 checkpoints take float32 images."""
    images = images.to(device)
    encode = getattr(model, "encode_image", None)
    features = encode(images) if callable(encode) else model(images)  # [B, E]
    if not isinstance(features, Tensor) or features.dim() != 2:
        shape = list(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"the image encoder must return [B, E] features; got {shape}")
    return features.float()


def extract_features(
    model: nn.Module,
    images: Tensor | Iterable,
    batch_size: int = 256,
    *,
    device: torch.device | str | None = None,
    normalize: bool = False,
) -> Tensor:
    """Frozen image features [N, E] (float32, on CPU) from `model.encode_image`, under eval() and no_grad.

    `images` is a [N, 3, R, R] tensor or an iterable of batches (a DataLoader). A module without
    `encode_image` (a bare image tower) is called directly. `normalize=True` L2-normalizes the rows.
    """
    device = torch.device(device) if device is not None else _model_device(model)
    chunks = []
    with _inference(model):
        for batch, _ in _iter_batches(images, None, batch_size):
            chunks.append(_encode_images(model, batch, device).cpu())  # [b, E]
    if not chunks:
        raise ValueError("no images to encode")
    features = torch.cat(chunks)  # [N, E]
    return F.normalize(features, dim=-1) if normalize else features


# ----------------------------------------------------------------------------- retrieval


def _check_features(name: str, x: object) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor; got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be [N, E]; got shape {list(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point; got {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values; check the encoder and its inputs")
    return x


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be positive ints; got {ks!r}")
    return ks


def retrieval_metrics(
    image_features: Tensor,
    text_features: Tensor,
    ks: Sequence[int] = (1, 5, 10),
    *,
    text_to_image: Tensor | Sequence[int] | None = None,
) -> dict[str, float]:
    """Recall@k for image -> text and text -> image retrieval by cosine similarity.

    image_features [N, E], text_features [M, E]. Without `text_to_image` the pairing is i <-> i (M == N).
    With several captions per image, `text_to_image[j]` is the image of caption j; an image counts as
    retrieved at k when any of its captions is in its top k. Ties count against the query (a collapsed
    model whose features are all equal scores R@1 = 0, not 1). Returns fractions in [0, 1] keyed
    "image_to_text_R@k" and "text_to_image_R@k", plus the mean ranks (1 = first).
    """
    image_features = _check_features("image_features", image_features)
    text_features = _check_features("text_features", text_features)
    ks = _check_ks(ks)
    n_images, n_texts = image_features.shape[0], text_features.shape[0]
    if image_features.shape[1] != text_features.shape[1]:
        raise ValueError(
            f"image and text features must share the embedding width; got E={image_features.shape[1]} "
            f"and E={text_features.shape[1]}"
        )
    if text_to_image is None:
        if n_images != n_texts:
            raise ValueError(
                f"paired retrieval needs one caption per image (got {n_images} images, {n_texts} captions); "
                "pass text_to_image to map each caption to its image"
            )
        text_to_image = torch.arange(n_texts)
    else:
        text_to_image = torch.as_tensor(text_to_image)
        if text_to_image.dim() != 1 or text_to_image.shape[0] != n_texts:
            raise ValueError(f"text_to_image must be [M={n_texts}]; got shape {list(text_to_image.shape)}")
        if text_to_image.is_floating_point() or text_to_image.dtype == torch.bool:
            raise TypeError(f"text_to_image must hold integer image indices; got {text_to_image.dtype}")
        if text_to_image.min() < 0 or text_to_image.max() >= n_images:
            raise ValueError(f"text_to_image values must lie in [0, {n_images}); got {text_to_image.min()}..{text_to_image.max()}")
    text_to_image = text_to_image.long().cpu()
    captions_per_image = torch.bincount(text_to_image, minlength=n_images)  # [N]
    if (captions_per_image == 0).any():
        missing = (captions_per_image == 0).nonzero().flatten()[:5].tolist()
        raise ValueError(f"every image needs at least one caption for image->text retrieval; images {missing} have none")

    sim = F.normalize(image_features.float().cpu(), dim=-1) @ F.normalize(text_features.float().cpu(), dim=-1).T  # [N, M]
    positive = text_to_image[None, :] == torch.arange(n_images)[:, None]  # [N, M]: caption j belongs to image i

    # image -> text: rank of the best-scoring correct caption among the wrong ones (ties count against).
    best_pos = sim.masked_fill(~positive, -math.inf).amax(dim=1)  # [N]
    i2t_rank = ((sim >= best_pos[:, None]) & ~positive).sum(dim=1)  # [N], 0 = first
    # text -> image: each caption has one correct image.
    pos_score = sim[text_to_image, torch.arange(n_texts)]  # [M]
    t2i_rank = ((sim >= pos_score[None, :]) & ~positive).sum(dim=0)  # [M]

    out: dict[str, float] = {}
    for k in ks:
        out[f"image_to_text_R@{k}"] = (i2t_rank < k).float().mean().item()
    for k in ks:
        out[f"text_to_image_R@{k}"] = (t2i_rank < k).float().mean().item()
    out["image_to_text_mean_rank"] = (i2t_rank.float() + 1).mean().item()
    out["text_to_image_mean_rank"] = (t2i_rank.float() + 1).mean().item()
    return out


# ----------------------------------------------------------------------------- probes


def _check_labelled(name: str, features: object, labels: object) -> tuple[Tensor, Tensor]:
    features = _check_features(f"{name}_features", features)
    if not isinstance(labels, Tensor):
        labels = torch.as_tensor(labels)
    if labels.dim() != 1:
        raise ValueError(f"{name}_labels must be 1-D [N]; got shape {list(labels.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"{name}_labels must hold integer class indices; got {labels.dtype}")
    if labels.shape[0] != features.shape[0]:
        raise ValueError(
            f"{name}_features and {name}_labels disagree on N: {features.shape[0]} rows, {labels.shape[0]} labels"
        )
    if labels.numel() and labels.min() < 0:
        raise ValueError(f"{name}_labels must be non-negative class indices; got {labels.min().item()}")
    return features.detach().cpu(), labels.long().cpu()


def _standardizer(features: Tensor) -> tuple[Tensor, Tensor]:
    """Per-dimension mean and std of [N, D] features; constant dimensions get std 1."""
    mean = features.mean(dim=0)
    std = features.std(dim=0, unbiased=False)
    return mean, torch.where(std > 1e-12, std, torch.ones_like(std))


def _fit_logistic(
    x: Tensor, y: Tensor, num_classes: int, l2: float, max_iter: int, init: tuple[Tensor, Tensor] | None = None
) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression: minimise mean CE(x @ W + b, y) + l2/2 * ||W||^2 by full-batch L-BFGS,
    starting from zeros or from `init` (a warm start from a neighbouring strength)."""
    if init is None:
        weight = torch.zeros(x.shape[1], num_classes, dtype=x.dtype)  # [D, C]
        bias = torch.zeros(num_classes, dtype=x.dtype)  # [C]
    else:
        weight, bias = (t.clone() for t in init)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    opt = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
        tolerance_grad=1e-6, tolerance_change=1e-10, line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return weight.detach(), bias.detach()


def _stratified_split(labels: Tensor, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices (train, val): each class with >= 2 examples gives max(1, round(n_c * val_fraction)) of
    them (keeping at least one for training) to validation."""
    gen = torch.Generator().manual_seed(seed)
    train_idx, val_idx = [], []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        n_val = 0 if idx.numel() < 2 else min(idx.numel() - 1, max(1, round(idx.numel() * val_fraction)))
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return torch.cat(train_idx).sort().values, torch.cat(val_idx).sort().values


def linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    val_fraction: float = 0.2,
    seed: int = 0,
    max_iter: int = 200,
) -> dict:
    """Logistic regression on frozen features, the paper's linear-probe protocol.

    Features are standardized with the training statistics. For each L2 strength in `l2_grid` the probe is
    fit on a stratified split of the train set and scored on the held-out `val_fraction`; the best strength
    (ties go to the stronger one) is refit on all of the train set and scored on the test set. Returns
    {"accuracy", "l2", "C" (= 1/l2, the inverse strength as in the paper), "val_accuracy" {l2: acc},
    "weight" [D, C], "bias" [C], "mean" [D], "std" [D]} -- the last four map raw features to logits as
    ((x - mean) / std) @ weight + bias.
    """
    train_features, train_labels = _check_labelled("train", train_features, train_labels)
    test_features, test_labels = _check_labelled("test", test_features, test_labels)
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"train and test features must share the feature width; got D={train_features.shape[1]} and "
            f"D={test_features.shape[1]}"
        )
    grid = tuple(float(v) for v in l2_grid)
    if not grid or any(not math.isfinite(v) or v < 0 for v in grid):
        raise ValueError(f"l2_grid must be a non-empty sequence of finite strengths >= 0; got {tuple(l2_grid)!r}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1); got {val_fraction}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1; got {max_iter}")
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1

    def fit(x: Tensor, y: Tensor, l2: float, init=None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        mean, std = _standardizer(x)
        w, b = _fit_logistic(((x - mean) / std).double(), y, num_classes, l2, max_iter, init)
        return w, b, mean, std

    def score(params: tuple[Tensor, Tensor, Tensor, Tensor], x: Tensor, y: Tensor) -> float:
        w, b, mean, std = params
        logits = ((x - mean) / std).double() @ w + b  # [N, C]
        return (logits.argmax(dim=1) == y).double().mean().item()

    val_accuracy: dict[float, float] = {}
    if len(grid) == 1:
        best = grid[0]
    else:
        tr, va = _stratified_split(train_labels, val_fraction, seed)
        if va.numel() == 0:
            raise ValueError(
                "no validation examples can be carved from the train set (every class has one example); "
                "pass a single strength, e.g. l2_grid=(1e-3,), to skip the search"
            )
        init = None
        for l2 in sorted(grid, reverse=True):  # strong to weak, each fit warm-started from the previous
            params = fit(train_features[tr], train_labels[tr], l2, init)
            val_accuracy[l2] = score(params, train_features[va], train_labels[va])
            init = params[:2]
        # Highest validation accuracy; among equals, the strongest regularization.
        best = max(grid, key=lambda l2: (val_accuracy[l2], l2))

    params = fit(train_features, train_labels, best)
    w, b, mean, std = params
    return {
        "accuracy": score(params, test_features, test_labels),
        "l2": best,
        "C": math.inf if best == 0 else 1.0 / best,
        "val_accuracy": val_accuracy,
        "weight": w.float(),
        "bias": b.float(),
        "mean": mean.float(),
        "std": std.float(),
    }


def sample_k_per_class(labels: Tensor, k: int, *, seed: int = 0) -> Tensor:
    """Sorted indices of exactly k examples of every class present in `labels`, drawn without replacement
    with a seeded generator (the same seed gives the same draw)."""
    if not isinstance(labels, Tensor):
        labels = torch.as_tensor(labels)
    if labels.dim() != 1:
        raise ValueError(f"labels must be 1-D [N]; got shape {list(labels.shape)}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int; got {k!r}")
    labels = labels.cpu()
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        if idx.numel() < k:
            raise ValueError(f"class {c} has only {idx.numel()} examples; cannot draw k={k} of them")
        chosen.append(idx[torch.randperm(idx.numel(), generator=gen)[:k]])
    return torch.cat(chosen).sort().values


def few_shot_probe(
    features: Tensor,
    labels: Tensor,
    k: int,
    *,
    test_features: Tensor | None = None,
    test_labels: Tensor | None = None,
    seed: int = 0,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    val_fraction: float = 0.2,
    max_iter: int = 200,
) -> dict:
    """A k-shot linear probe: draw k examples per class (seeded) from (features, labels), fit `linear_probe`
    on them, and score on (test_features, test_labels) or, when those are omitted, on the examples not drawn.

    With k = 1 there is nothing to validate on; pass a single strength (`l2_grid=(1e-3,)`).
    Returns `linear_probe`'s dict plus "indices" (the drawn rows) and "k".
    """
    features, labels = _check_labelled("few_shot", features, labels)
    chosen = sample_k_per_class(labels, k, seed=seed)
    if (test_features is None) != (test_labels is None):
        raise ValueError("pass test_features and test_labels together, or neither")
    if test_features is None:
        rest = torch.ones(labels.shape[0], dtype=torch.bool)
        rest[chosen] = False
        if not rest.any():
            raise ValueError("no examples are left to test on; pass test_features and test_labels")
        test_features, test_labels = features[rest], labels[rest]
    if k == 1 and len(tuple(l2_grid)) > 1:
        raise ValueError("a 1-shot probe has no examples to validate the L2 strength on; pass l2_grid=(strength,)")
    result = linear_probe(
        features[chosen], labels[chosen], test_features, test_labels,
        l2_grid=l2_grid, val_fraction=val_fraction, seed=seed, max_iter=max_iter,
    )
    result["indices"] = chosen
    result["k"] = k
    return result
