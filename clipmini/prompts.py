"""The prompt templates and class names of the CLIP paper's zero-shot evaluations, as importable data.

Copied string for string from the templates published with the paper: each template is a format
string with one `{}` for the class name. `IMAGENET_TEMPLATES` is the 80-prompt ensemble, `IMAGENET_TEMPLATES_7` the 7 prompts picked
from it by forward selection, `CIFAR_TEMPLATES` the 18 prompts used for CIFAR-10 and CIFAR-100.
Oddities such as "a origami {}" and "itap of a {}" ("I took a picture") are the paper's own; they
stay, because they are part of the measured result.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "IMAGENET_TEMPLATES",
    "IMAGENET_TEMPLATES_7",
    "CIFAR_TEMPLATES",
    "CIFAR10_CLASSNAMES",
    "CIFAR100_CLASSNAMES",
    "format_prompts",
]

IMAGENET_TEMPLATES: tuple[str, ...] = (
    'a bad photo of a {}.',
    'a photo of many {}.',
    'a sculpture of a {}.',
    'a photo of the hard to see {}.',
    'a low resolution photo of the {}.',
    'a rendering of a {}.',
    'graffiti of a {}.',
    'a bad photo of the {}.',
    'a cropped photo of the {}.',
    'a tattoo of a {}.',
    'the embroidered {}.',
    'a photo of a hard to see {}.',
    'a bright photo of a {}.',
    'a photo of a clean {}.',
    'a photo of a dirty {}.',
    'a dark photo of the {}.',
    'a drawing of a {}.',
    'a photo of my {}.',
    'the plastic {}.',
    'a photo of the cool {}.',
    'a close-up photo of a {}.',
    'a black and white photo of the {}.',
    'a painting of the {}.',
    'a painting of a {}.',
    'a pixelated photo of the {}.',
    'a sculpture of the {}.',
    'a bright photo of the {}.',
    'a cropped photo of a {}.',
    'a plastic {}.',
    'a photo of the dirty {}.',
    'a jpeg corrupted photo of a {}.',
    'a blurry photo of the {}.',
    'a photo of the {}.',
    'a good photo of the {}.',
    'a rendering of the {}.',
    'a {} in a video game.',
    'a photo of one {}.',
    'a doodle of a {}.',
    'a close-up photo of the {}.',
    'a photo of a {}.',
    'the origami {}.',
    'the {} in a video game.',
    'a sketch of a {}.',
    'a doodle of the {}.',
    'a origami {}.',
    'a low resolution photo of a {}.',
    'the toy {}.',
    'a rendition of the {}.',
    'a photo of the clean {}.',
    'a photo of a large {}.',
    'a rendition of a {}.',
    'a photo of a nice {}.',
    'a photo of a weird {}.',
    'a blurry photo of a {}.',
    'a cartoon {}.',
    'art of a {}.',
    'a sketch of the {}.',
    'a embroidered {}.',
    'a pixelated photo of a {}.',
    'itap of the {}.',
    'a jpeg corrupted photo of the {}.',
    'a good photo of a {}.',
    'a plushie {}.',
    'a photo of the nice {}.',
    'a photo of the small {}.',
    'a photo of the weird {}.',
    'the cartoon {}.',
    'art of the {}.',
    'a drawing of the {}.',
    'a photo of the large {}.',
    'a black and white photo of a {}.',
    'the plushie {}.',
    'a dark photo of a {}.',
    'itap of a {}.',
    'graffiti of the {}.',
    'a toy {}.',
    'itap of my {}.',
    'a photo of a cool {}.',
    'a photo of a small {}.',
    'a tattoo of the {}.',
)

IMAGENET_TEMPLATES_7: tuple[str, ...] = (
    'itap of a {}.',
    'a bad photo of the {}.',
    'a origami {}.',
    'a photo of the large {}.',
    'a {} in a video game.',
    'art of the {}.',
    'a photo of the small {}.',
)

CIFAR_TEMPLATES: tuple[str, ...] = (
    'a photo of a {}.',
    'a blurry photo of a {}.',
    'a black and white photo of a {}.',
    'a low contrast photo of a {}.',
    'a high contrast photo of a {}.',
    'a bad photo of a {}.',
    'a good photo of a {}.',
    'a photo of a small {}.',
    'a photo of a big {}.',
    'a photo of the {}.',
    'a blurry photo of the {}.',
    'a black and white photo of the {}.',
    'a low contrast photo of the {}.',
    'a high contrast photo of the {}.',
    'a bad photo of the {}.',
    'a good photo of the {}.',
    'a photo of the small {}.',
    'a photo of the big {}.',
)

# torchvision's CIFAR-10 label order
CIFAR10_CLASSNAMES: tuple[str, ...] = (
    'airplane', 'automobile', 'bird', 'cat', 'deer',
    'dog', 'frog', 'horse', 'ship', 'truck',
)

# the CIFAR-100 fine labels in label order (alphabetical), underscores written as spaces as in CLIP's evaluation
CIFAR100_CLASSNAMES: tuple[str, ...] = (
    'apple', 'aquarium fish', 'baby', 'bear', 'beaver', 'bed',
    'bee', 'beetle', 'bicycle', 'bottle', 'bowl', 'boy',
    'bridge', 'bus', 'butterfly', 'camel', 'can', 'castle',
    'caterpillar', 'cattle', 'chair', 'chimpanzee', 'clock', 'cloud',
    'cockroach', 'couch', 'crab', 'crocodile', 'cup', 'dinosaur',
    'dolphin', 'elephant', 'flatfish', 'forest', 'fox', 'girl',
    'hamster', 'house', 'kangaroo', 'keyboard', 'lamp', 'lawn mower',
    'leopard', 'lion', 'lizard', 'lobster', 'man', 'maple tree',
    'motorcycle', 'mountain', 'mouse', 'mushroom', 'oak tree', 'orange',
    'orchid', 'otter', 'palm tree', 'pear', 'pickup truck', 'pine tree',
    'plain', 'plate', 'poppy', 'porcupine', 'possum', 'rabbit',
    'raccoon', 'ray', 'road', 'rocket', 'rose', 'sea',
    'seal', 'shark', 'shrew', 'skunk', 'skyscraper', 'snail',
    'snake', 'spider', 'squirrel', 'streetcar', 'sunflower', 'sweet pepper',
    'table', 'tank', 'telephone', 'television', 'tiger', 'tractor',
    'train', 'trout', 'tulip', 'turtle', 'wardrobe', 'whale',
    'willow tree', 'wolf', 'woman', 'worm',
)


def format_prompts(classnames: Sequence[str], templates: Sequence[str]) -> list[list[str]]:
    """Every template filled with every class name: `prompts[c][t] = templates[t].format(classnames[c])`."""
    if isinstance(classnames, str) or isinstance(templates, str):
        raise TypeError("classnames and templates must be sequences of strings, not a single string")
    classnames, templates = list(classnames), list(templates)
    if not classnames or not templates:
        raise ValueError(f"need at least one class name and one template; got {len(classnames)} and {len(templates)}")
    for t in templates:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise ValueError(f"each template must be a string with exactly one '{{}}'; got {t!r}")
    for c in classnames:
        if not isinstance(c, str) or not c.strip():
            raise ValueError(f"each class name must be a non-empty string; got {c!r}")
    return [[t.format(c) for t in templates] for c in classnames]
