"""Data for clipmini: the procedural caption world, and loaders for real image-text pairs.

The caption world (`CaptionWorld`) draws images of colored shapes in six visual domains with web-like
alt-text, as fast as a CPU trains on them, with deterministic random access for exact resume and DDP.
`real` reads CSV/TSV and WebDataset image-text pairs; `torchvision_sets` gives CIFAR and image folders
with their class names and the paper's templates.
"""

from .attributes import COLOR_RGB, COLORS, COUNTS, DOMAINS, KINDS, POSITIONS, RELATIONS, SHAPES, SIZES, WRITTEN_WORDS
from .captions import COLOR_SYNONYMS, SHAPE_SYNONYMS, CaptionInfo, label_caption
from .normalize import CLIP_MEAN, CLIP_STD, denormalize, normalize
from .real import CsvImageText, SkipCounter, SkippedSamplesWarning, WebDatasetImageText, clip_transform
from .scenes import Scenes
from .show import show_grid
from .tasks import TASK_TEMPLATES, TASKS, ArticleTemplate, Task, WordOrderPairs, fix_articles
from .torchvision_sets import ZeroShotSet, cifar10, cifar100, image_folder
from .world import BatchMeta, CaptionWorld, CaptionWorldDataset, CaptionWorldStream, WorldConfig

__all__ = [
    # the caption world
    "WorldConfig", "CaptionWorld", "CaptionWorldStream", "CaptionWorldDataset", "BatchMeta", "Scenes",
    "CaptionInfo", "Task", "WordOrderPairs", "TASKS", "TASK_TEMPLATES", "ArticleTemplate", "fix_articles", "label_caption",
    "show_grid",
    # its vocabulary
    "SHAPES", "COLORS", "COLOR_RGB", "SIZES", "POSITIONS", "COUNTS", "RELATIONS", "DOMAINS", "KINDS",
    "WRITTEN_WORDS", "COLOR_SYNONYMS", "SHAPE_SYNONYMS",
    # pixels
    "CLIP_MEAN", "CLIP_STD", "normalize", "denormalize",
    # real data
    "clip_transform", "CsvImageText", "WebDatasetImageText", "SkipCounter", "SkippedSamplesWarning",
    "ZeroShotSet", "cifar10", "cifar100", "image_folder",
]
