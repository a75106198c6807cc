"""A look at the data: images in a grid, each with its caption wrapped underneath."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import torch

from .normalize import denormalize


def show_grid(
    images: torch.Tensor,
    captions: Sequence[str] | None = None,
    *,
    ncols: int = 8,
    normalized: bool = True,
    cell_inches: float = 1.6,
    wrap: int = 22,
    fontsize: float = 7.0,
):
    """Plot [B, 3, R, R] images with captions; returns a matplotlib Figure (a notebook displays it).

    `normalized=True` undoes CLIP's normalization first (what `CaptionWorld.batch` returns); pass False
    for images already in [0, 1]. The figure size depends only on the grid shape, never on the data.
    """
    from matplotlib.figure import Figure  # no pyplot state: the caller decides to show or save

    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a [B, 3, R, R] tensor; got {shape}")
    if captions is not None and len(captions) != images.shape[0]:
        raise ValueError(f"got {images.shape[0]} images but {len(captions)} captions")
    if not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols must be a positive int; got {ncols!r}")
    B = images.shape[0]
    ncols = min(ncols, max(B, 1))
    nrows = max(1, -(-B // ncols))
    pixels = denormalize(images.detach().float().cpu()) if normalized else images.detach().float().cpu().clamp(0, 1)
    text_rows = 0 if captions is None else 3
    fig = Figure(figsize=(ncols * cell_inches, nrows * cell_inches * (1 + 0.12 * text_rows)))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= B:
            continue
        ax.imshow(pixels[i].permute(1, 2, 0).numpy(), interpolation="nearest")
        if captions is not None:
            lines = textwrap.wrap(str(captions[i]), wrap)[:text_rows] or [""]
            ax.text(0.5, -0.04, "\n".join(lines), transform=ax.transAxes, ha="center", va="top", fontsize=fontsize)
    fig.tight_layout()
    return fig
