"""The book's figures: training curves, accuracy against samples seen, similarity matrices, embedding maps.

Every function builds a new Figure of a fixed size and returns it; nothing here calls `plt.show()`, so
chapters display the returned figure and tests inspect it under the Agg backend.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor

__all__ = [
    "plot_training_curves",
    "plot_accuracy_vs_samples",
    "plot_similarity_matrix",
    "plot_embedding_map",
    "pca_2d",
]

# History keys, in order of preference, for each quantity of `plot_training_curves`.
X_KEYS = ("samples_seen", "samples", "step")
LOSS_KEYS = ("loss", "train_loss")
TEMPERATURE_KEYS = ("tau", "temperature")  # tau itself
LOGIT_SCALE_KEYS = ("logit_scale",)  # ln(1/tau), as the model stores it
SCALE_KEYS = ("scale", "logit_scale_exp")  # exp(logit_scale) = 1/tau
ZEROSHOT_KEYS = ("zeroshot_top1", "zero_shot_top1", "zeroshot_acc", "zero_shot_acc", "zeroshot", "top1")


def _number(v: object) -> float | None:
    """A finite-or-inf float from a number or a one-element tensor; None for None, NaN or non-numbers."""
    if isinstance(v, Tensor) and v.numel() == 1:
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
        return None
    return float(v)


def _records(history: Mapping | Sequence[Mapping], x_key: str) -> list[dict]:
    """The history as a list of per-step dicts that all carry `x_key`.

    A dict of equal-length lists becomes records. A record without `x_key` but with a "step" (the
    trainer's evaluation records) gets x = step * samples-per-step, the ratio read off the records that
    carry both.
    """
    if isinstance(history, Mapping):
        lengths = {k: len(v) for k, v in history.items() if isinstance(v, Sequence) and not isinstance(v, str)}
        n = lengths.get(x_key)
        if n is None:
            raise ValueError(f"history[{x_key!r}] must be a list")
        uneven = sorted(k for k, m in lengths.items() if m != n)
        if uneven:
            raise ValueError(
                f"history lists {uneven} do not have the {n} entries of history[{x_key!r}]; "
                "pass a list of per-step records instead (a key may be missing from some records)"
            )
        history = [{k: history[k][i] for k in lengths} for i in range(n)]
    per_step = None
    if x_key != "step":
        ratios = [
            r[x_key] / r["step"] for r in history
            if _number(r.get(x_key)) is not None and _number(r.get("step")) not in (None, 0.0)
        ]
        per_step = ratios[-1] if ratios else None
    records = []
    for r in history:
        if _number(r.get(x_key)) is not None:
            records.append(dict(r))
        elif per_step is not None and _number(r.get("step")) is not None:
            records.append({**r, x_key: r["step"] * per_step})
    return records


def _series(records: Sequence[Mapping], keys: Sequence[str], x_key: str) -> tuple[str | None, list, list]:
    """(key found, xs, ys) of the first of `keys` the records hold; records without it (or with None/NaN)
    are skipped, as an evaluation that runs every N steps is absent from the others."""
    for key in keys:
        pairs = [(float(r[x_key]), _number(r.get(key))) for r in records]
        pairs = [(x, y) for x, y in pairs if y is not None]
        if pairs:
            return key, [p[0] for p in pairs], [p[1] for p in pairs]
    return None, [], []


def _zeroshot_series(records: Sequence[Mapping], x_key: str) -> dict[str, tuple[list, list]]:
    """Zero-shot top-1 curves {label: (xs, ys)}: a flat key (ZEROSHOT_KEYS) or the trainer's nested
    "eval": {task: {"top1": ...}} records, one curve per task."""
    key, xs, ys = _series(records, ZEROSHOT_KEYS, x_key)
    curves: dict[str, tuple[list, list]] = {key: (xs, ys)} if key else {}
    for r in records:
        evaluation = r.get("eval")
        if not isinstance(evaluation, Mapping):
            continue
        for task, metrics in evaluation.items():
            y = _number(metrics.get("top1")) if isinstance(metrics, Mapping) else None
            if y is not None:
                curve = curves.setdefault(str(task), ([], []))
                curve[0].append(float(r[x_key]))
                curve[1].append(y)
    return curves


def _x_key(history: Mapping | Sequence[Mapping]) -> str:
    present = set(history) if isinstance(history, Mapping) else set().union(*(set(r) for r in history))
    for key in X_KEYS:
        if key in present:
            return key
    raise ValueError(f"the history needs an x axis: one of {', '.join(X_KEYS)}; it has {sorted(present)}")


def _missing(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"{what}\nnot recorded", ha="center", va="center", transform=ax.transAxes, color="0.5")


def plot_training_curves(history: Mapping | Sequence[Mapping], *, title: str | None = None) -> Figure:
    """Three panels against samples seen: the contrastive loss, the temperature tau, zero-shot top-1.

    `history` is `train(...).history` (a list of per-step records; evaluation records hold
    "eval": {task: {"top1": ...}}, one curve per task) or a dict of equal-length lists. tau is read from
    "tau"/"temperature", or derived from "logit_scale" (ln 1/tau, as the model stores it) or "scale"
    (1/tau). A quantity the history lacks leaves its panel empty with a note.
    """
    if isinstance(history, (str, bytes)) or not isinstance(history, (Mapping, Sequence)) or len(history) == 0:
        raise ValueError("history must be a non-empty dict of lists or list of per-step dicts")
    if not isinstance(history, Mapping) and not all(isinstance(r, Mapping) for r in history):
        raise TypeError("a list history must hold one dict per step")
    x_key = _x_key(history)
    records = _records(history, x_key)
    xlabel = {"samples_seen": "samples seen", "samples": "samples seen", "step": "step"}[x_key]
    fig, (ax_loss, ax_tau, ax_zs) = plt.subplots(1, 3, figsize=(12, 3.5))

    key, xs, ys = _series(records, LOSS_KEYS, x_key)
    if key:
        ax_loss.plot(xs, ys, color="C0", lw=1.2)
    else:
        _missing(ax_loss, "loss")
    ax_loss.set(xlabel=xlabel, ylabel="loss", title="contrastive loss")

    key, xs, ys = _series(records, TEMPERATURE_KEYS, x_key)
    if key is None:
        key, xs, ys = _series(records, LOGIT_SCALE_KEYS, x_key)
        ys = [math.exp(-y) for y in ys]  # tau = exp(-logit_scale)
    if key is None:
        key, xs, ys = _series(records, SCALE_KEYS, x_key)
        ys = [1.0 / y for y in ys]
    if key:
        ax_tau.plot(xs, ys, color="C1", lw=1.2)
        ax_tau.axhline(0.01, color="0.6", ls=":", lw=1)  # the clamp: exp(logit_scale) <= 100
    else:
        _missing(ax_tau, "temperature")
    ax_tau.set(xlabel=xlabel, ylabel="τ", title="temperature τ")

    curves = _zeroshot_series(records, x_key)
    for i, (label, (xs, ys)) in enumerate(curves.items()):
        ax_zs.plot(xs, ys, color=f"C{2 + i}", marker="o", ms=3, lw=1.2, label=label)
    if curves:
        ax_zs.set_ylim(0, 1)
        if len(curves) > 1:
            ax_zs.legend(frameon=False, fontsize=7)
    else:
        _missing(ax_zs, "zero-shot accuracy")
    ax_zs.set(xlabel=xlabel, ylabel="top-1", title="zero-shot top-1")

    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_accuracy_vs_samples(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    logx: bool = True,
    ylabel: str = "zero-shot top-1",
    title: str | None = None,
) -> Figure:
    """One line per label: accuracy against the number of training samples seen (the paper's Figure 2)."""
    if not isinstance(curves, Mapping) or not curves:
        raise ValueError("curves must be a non-empty dict {label: (samples, accuracy)}")
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, curve in curves.items():
        if not isinstance(curve, (tuple, list)) or len(curve) != 2:
            raise ValueError(f"curves[{label!r}] must be a (samples, accuracy) pair")
        samples, acc = (torch.as_tensor(v, dtype=torch.float64).flatten().tolist() for v in curve)
        if len(samples) != len(acc):
            raise ValueError(f"curves[{label!r}] has {len(samples)} sample counts but {len(acc)} accuracies")
        if logx and any(s <= 0 for s in samples):
            raise ValueError(f"curves[{label!r}] has samples <= 0, which a log axis cannot show; pass logx=False")
        ax.plot(samples, acc, marker="o", ms=3, lw=1.5, label=str(label))
    if logx:
        ax.set_xscale("log")
    ax.set(xlabel="samples seen", ylabel=ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def plot_similarity_matrix(
    image_features: Tensor,
    text_features: Tensor,
    captions: Sequence[str] | None = None,
    *,
    annotate: bool | None = None,
    title: str = "cosine similarity",
) -> Figure:
    """The cosine-similarity matrix as a picture: a row per caption, a column per image (as in OpenAI's
    notebook). `annotate` writes the values in the cells (default: when both sides have at most 12)."""
    for name, x in (("image_features", image_features), ("text_features", text_features)):
        if not isinstance(x, Tensor) or x.dim() != 2:
            raise ValueError(f"{name} must be [N, E]; got {list(getattr(x, 'shape', [])) or type(x).__name__}")
    if image_features.shape[1] != text_features.shape[1]:
        raise ValueError(
            f"image and text features must share E; got {image_features.shape[1]} and {text_features.shape[1]}"
        )
    if captions is not None and len(captions) != text_features.shape[0]:
        raise ValueError(f"got {len(captions)} captions for {text_features.shape[0]} text features")
    sim = (
        F.normalize(text_features.detach().float().cpu(), dim=-1)
        @ F.normalize(image_features.detach().float().cpu(), dim=-1).T
    )  # [M, N]
    n_texts, n_images = sim.shape
    annotate = (n_texts <= 12 and n_images <= 12) if annotate is None else annotate

    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(sim.numpy(), cmap="viridis", vmin=min(0.0, sim.min().item()), vmax=max(1e-6, sim.max().item()))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="cosine similarity")
    ax.set_xlabel("image")
    ax.set_ylabel("caption" if captions is not None else "text")
    if captions is not None:
        ax.set_yticks(range(n_texts), [str(c) for c in captions], fontsize=8)
    if annotate:
        for t in range(n_texts):
            for i in range(n_images):
                ax.text(i, t, f"{sim[t, i]:.2f}", ha="center", va="center", fontsize=7, color="white")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def pca_2d(features: Tensor) -> tuple[Tensor, Tensor]:
    """The first two principal components of [N, D] features: coordinates [N, 2] and the fraction of the
    variance each explains [2]. Signs are fixed (largest-magnitude loading positive) so maps are stable."""
    if not isinstance(features, Tensor) or features.dim() != 2:
        raise ValueError(f"features must be [N, D]; got {list(getattr(features, 'shape', [])) or type(features).__name__}")
    if features.shape[0] < 2:
        raise ValueError(f"PCA needs at least 2 points; got {features.shape[0]}")
    x = features.detach().double().cpu()
    x = x - x.mean(dim=0)  # [N, D]
    _, s, vh = torch.linalg.svd(x, full_matrices=False)  # s [K], vh [K, D]
    k = min(2, vh.shape[0])
    components = vh[:k]  # [k, D]
    flip = torch.sign(components.gather(1, components.abs().argmax(dim=1, keepdim=True)))  # [k, 1]
    components = components * torch.where(flip == 0, torch.ones_like(flip), flip)
    coords = x @ components.T  # [N, k]
    total = s.pow(2).sum()
    explained = s[:k].pow(2) / total if total > 0 else torch.zeros(k, dtype=x.dtype)
    if k < 2:  # one-dimensional data: a flat second axis
        coords = torch.cat([coords, torch.zeros(x.shape[0], 2 - k, dtype=x.dtype)], dim=1)
        explained = torch.cat([explained, torch.zeros(2 - k, dtype=x.dtype)])
    return coords.float(), explained.float()


def plot_embedding_map(
    features: Tensor,
    labels: Tensor | Sequence[int] | None = None,
    method: str = "pca",
    *,
    classnames: Sequence[str] | None = None,
    normalize: bool = True,
    title: str | None = None,
) -> Figure:
    """A 2-D map of embeddings (PCA of the L2-normalized features), one colour and legend entry per class."""
    if method != "pca":
        raise ValueError(f"method must be 'pca' (the only projection that needs no extra dependency); got {method!r}")
    if not isinstance(features, Tensor) or features.dim() != 2:
        raise ValueError(f"features must be [N, D]; got {list(getattr(features, 'shape', [])) or type(features).__name__}")
    x = F.normalize(features.detach().float(), dim=-1) if normalize else features.detach().float()
    coords, explained = pca_2d(x)
    fig, ax = plt.subplots(figsize=(6, 5))
    if labels is None:
        ax.scatter(coords[:, 0], coords[:, 1], s=8, alpha=0.7)
    else:
        labels = torch.as_tensor(labels).cpu()
        if labels.dim() != 1 or labels.shape[0] != features.shape[0]:
            raise ValueError(f"labels must be [N={features.shape[0]}]; got shape {list(labels.shape)}")
        classes = labels.unique().tolist()
        if classnames is not None and len(classnames) <= max(classes):
            raise ValueError(f"labels go up to {max(classes)} but only {len(classnames)} classnames were given")
        cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        for i, c in enumerate(classes):
            mask = labels == c
            name = classnames[c] if classnames is not None else str(c)
            ax.scatter(coords[mask, 0], coords[mask, 1], s=8, alpha=0.7, color=cmap(i % cmap.N), label=name)
        if len(classes) <= 20:
            ax.legend(frameon=False, fontsize=7, markerscale=2, loc="best")
    ax.set_xlabel(f"PC1 ({100 * explained[0].item():.0f}% of variance)")
    ax.set_ylabel(f"PC2 ({100 * explained[1].item():.0f}% of variance)")
    ax.set_title(title or "embedding map (PCA)")
    fig.tight_layout()
    return fig
