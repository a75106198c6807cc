"""Zero-shot evaluation sets from torchvision, each with its class names and the paper's templates.

Nothing is downloaded unless the reader asks (`download=True`); a missing dataset raises a
`FileNotFoundError` that says where it was looked for and how to get it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch.utils.data import Dataset

from ..prompts import CIFAR10_CLASSNAMES, CIFAR100_CLASSNAMES, CIFAR_TEMPLATES, IMAGENET_TEMPLATES

__all__ = ["ZeroShotSet", "cifar10", "cifar100", "image_folder"]


@dataclass
class ZeroShotSet:
    """A labelled image dataset plus what a zero-shot classifier needs to name its classes."""

    dataset: Dataset  # items are (image, label)
    classnames: tuple[str, ...]
    templates: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.dataset)


def _cifar(cls, folder: str, classnames, root, train, download, transform) -> ZeroShotSet:
    root = Path(root)
    if not download and not (root / folder).is_dir():
        raise FileNotFoundError(
            f"{cls.__name__} not found under {root} (expected the folder {root / folder}); "
            f"pass download=True to fetch it (about 170 MB), or point root at an existing copy"
        )
    dataset = cls(root=str(root), train=train, download=download, transform=transform)
    if len(dataset.classes) != len(classnames):  # pragma: no cover - guards a torchvision change
        raise ValueError(f"{cls.__name__} has {len(dataset.classes)} classes; expected {len(classnames)}")
    return ZeroShotSet(dataset=dataset, classnames=tuple(classnames), templates=CIFAR_TEMPLATES)


def cifar10(root: str | os.PathLike, *, train: bool = False, download: bool = False, transform: Callable | None = None) -> ZeroShotSet:
    """CIFAR-10 (test split by default) with its 10 class names and the paper's 18 CIFAR templates."""
    from torchvision.datasets import CIFAR10

    return _cifar(CIFAR10, "cifar-10-batches-py", CIFAR10_CLASSNAMES, root, train, download, transform)


def cifar100(root: str | os.PathLike, *, train: bool = False, download: bool = False, transform: Callable | None = None) -> ZeroShotSet:
    """CIFAR-100 (test split by default) with its 100 class names and the paper's 18 CIFAR templates."""
    from torchvision.datasets import CIFAR100

    return _cifar(CIFAR100, "cifar-100-python", CIFAR100_CLASSNAMES, root, train, download, transform)


def image_folder(
    root: str | os.PathLike,
    *,
    transform: Callable | None = None,
    classnames: dict[str, str] | None = None,
    templates: tuple[str, ...] = IMAGENET_TEMPLATES,
) -> ZeroShotSet:
    """`root/<class>/<image>` folders. Class names are the folder names with `_` read as a space, unless
    `classnames` maps folder names to better ones (as the paper edits ImageNet's)."""
    from torchvision.datasets import ImageFolder

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root} (expected root/<class>/<image files>)")
    dataset = ImageFolder(str(root), transform=transform)
    classnames = classnames or {}
    unknown = sorted(set(classnames) - set(dataset.classes))
    if unknown:
        raise ValueError(f"classnames names folders that do not exist: {unknown}; the folders are {dataset.classes}")
    names = tuple(classnames.get(c, c.replace("_", " ")) for c in dataset.classes)
    return ZeroShotSet(dataset=dataset, classnames=names, templates=tuple(templates))
