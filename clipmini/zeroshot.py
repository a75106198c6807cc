"""Zero-shot classification: class names become a linear classifier through the text tower.

For every class, format each prompt template ("a photo of a {}."), encode the texts, L2-normalize each
embedding, average them and normalize again; the C class prototypes are the columns of W [E, C]. An image
is classified by `100 * normalize(image_features) @ W`. The prototypes depend only on the class names and
templates, so they are built once (`PrototypeCache`) and evaluation is one matmul per batch.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clipmini.eval import _encode_images, _inference, _iter_batches, _model_device, extract_features
from clipmini.prompts import CIFAR_TEMPLATES, IMAGENET_TEMPLATES, IMAGENET_TEMPLATES_7

__all__ = [
    "IMAGENET_TEMPLATES",
    "IMAGENET_TEMPLATES_7",
    "CIFAR_TEMPLATES",
    "BARE_TEMPLATE",
    "build_classifier",
    "PrototypeCache",
    "predict",
    "accuracy",
    "per_class_accuracy",
    "encode_texts",
    "classifier_from_prompts",
    "candidate_logits",
    "summarize",
    "evaluate",
    "evaluate_zeroshot",
]

# The "template" of the prompt-engineering baseline: the bare class name ("dog"), no sentence around it.
BARE_TEMPLATE: tuple[str, ...] = ("{}",)

# The fixed multiplier of zero-shot logits: OpenAI's evaluation uses 100, the clamp value of exp(logit_scale).
ZERO_SHOT_LOGIT_SCALE = 100.0

Template = str | Callable[[str], str]


def _context_length(model: nn.Module) -> int | None:
    """The model's text context length (`model.config.text.context_length`), or None if it has none."""
    config = getattr(model, "config", None)
    text = getattr(config, "text", None)
    length = getattr(text, "context_length", None)
    if length is None:
        length = getattr(model, "context_length", None)
    return length if isinstance(length, int) else None


def _accepts_context_length(tokenizer: Callable) -> bool:
    try:
        params = inspect.signature(tokenizer).parameters.values()
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        return False
    return any(p.name == "context_length" or p.kind is p.VAR_KEYWORD for p in params)


def _tokenize(tokenizer: Callable, texts: list[str], context_length: int | None) -> Tensor:
    if context_length is not None and _accepts_context_length(tokenizer):
        tokens = tokenizer(texts, context_length=context_length)
    else:
        tokens = tokenizer(texts)
    if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.shape[0] != len(texts):
        shape = list(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise TypeError(f"the tokenizer must return a LongTensor [B={len(texts)}, L]; got {shape}")
    return tokens


def _check_names(classnames: Sequence[str], templates: Sequence[Template]) -> tuple[tuple[str, ...], tuple[Template, ...]]:
    if isinstance(classnames, str) or not isinstance(classnames, Sequence):
        raise TypeError(f"classnames must be a list of strings; got {type(classnames).__name__}")
    if isinstance(templates, str) or not isinstance(templates, Sequence):
        raise TypeError(f"templates must be a list of '...{{}}...' strings (got {type(templates).__name__}); "
                        "wrap a single template in a list")
    classnames, templates = tuple(classnames), tuple(templates)
    if not classnames:
        raise ValueError("classnames is empty; zero-shot classification needs at least one class")
    if not templates:
        raise ValueError("templates is empty; use BARE_TEMPLATE ('{}') for bare class names")
    for name in classnames:
        if not isinstance(name, str):
            raise TypeError(f"every class name must be a str; got {type(name).__name__} {name!r}")
    for t in templates:
        if isinstance(t, str):
            if "{}" not in t:
                raise ValueError(f"template {t!r} has no '{{}}' slot for the class name")
        elif not callable(t):
            raise TypeError(f"a template must be a '...{{}}...' string or a callable; got {type(t).__name__}")
    return classnames, templates


def _fill(template: Template, classname: str) -> str:
    return template.format(classname) if isinstance(template, str) else template(classname)


def encode_texts(
    model: nn.Module,
    tokenizer: Callable,
    texts: Sequence[str],
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    context_length: int | None = None,
) -> Tensor:
    """L2-normalized text features [N, E] (float32) of `texts`, in batches, under eval() and no_grad.

    The tokenizer is any callable `texts -> LongTensor[B, L]`; it is given `context_length` (default: the
    model's `config.text.context_length`) when it accepts that keyword.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
    texts = list(texts)
    if not texts:
        raise ValueError("no texts to encode")
    device = torch.device(device) if device is not None else _model_device(model)
    context_length = context_length if context_length is not None else _context_length(model)
    chunks = []
    with _inference(model):
        for start in range(0, len(texts), batch_size):
            tokens = _tokenize(tokenizer, texts[start:start + batch_size], context_length).to(device)  # [b, L]
            text_features = model.encode_text(tokens)  # [b, E]
            if not isinstance(text_features, Tensor) or text_features.dim() != 2:
                raise ValueError("model.encode_text must return [B, E] features")
            chunks.append(F.normalize(text_features.float(), dim=-1))
    return torch.cat(chunks)  # [N, E]


def _check_prompts(prompts: Sequence[Sequence[str]]) -> tuple[tuple[str, ...], ...]:
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
        raise TypeError("prompts must be a non-empty list with one list of prompt strings per class")
    out = []
    for c, group in enumerate(prompts):
        if isinstance(group, str) or not isinstance(group, Sequence) or not group:
            raise TypeError(f"prompts[{c}] must be a non-empty list of strings (one class's prompts); got {group!r}")
        if not all(isinstance(t, str) for t in group):
            raise TypeError(f"prompts[{c}] must hold strings only")
        out.append(tuple(group))
    return tuple(out)


def classifier_from_prompts(
    model: nn.Module,
    tokenizer: Callable,
    prompts: Sequence[Sequence[str]],
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    context_length: int | None = None,
) -> Tensor:
    """W [E, C] from ready-made prompts: column c is the normalized mean of the normalized embeddings of
    `prompts[c]` (classes may have different numbers of prompts)."""
    prompts = _check_prompts(prompts)
    texts = [t for group in prompts for t in group]  # class-major
    embeddings = encode_texts(
        model, tokenizer, texts, batch_size=batch_size, device=device, context_length=context_length
    )  # [sum T_c, E]
    groups = embeddings.split([len(group) for group in prompts])  # C x [T_c, E]
    prototypes = F.normalize(torch.stack([g.mean(dim=0) for g in groups]), dim=-1)  # [C, E]
    return prototypes.T.contiguous()  # [E, C]


def build_classifier(
    model: nn.Module,
    tokenizer: Callable,
    classnames: Sequence[str],
    templates: Sequence[Template],
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    context_length: int | None = None,
) -> Tensor:
    """The zero-shot weights W [E, C]: column c is the normalized mean of the normalized text embeddings of
    every template filled with class c. Runs under eval() and no_grad; see `encode_texts` for the tokenizer.
    """
    classnames, templates = _check_names(classnames, templates)
    prompts = [[_fill(t, c) for t in templates] for c in classnames]  # [C][T]
    return classifier_from_prompts(
        model, tokenizer, prompts, batch_size=batch_size, device=device, context_length=context_length
    )


def _weights_version(model: nn.Module) -> int:
    """A counter that changes whenever any parameter or buffer is modified in place (an optimizer step,
    load_state_dict), so cached prototypes of a model that has since trained are never served."""
    return sum(t._version for t in model.parameters()) + sum(t._version for t in model.buffers())


class PrototypeCache:
    """Class prototypes of one model and tokenizer, built once per (classnames, templates) and reused.

    `cache(classnames, templates)` returns W [E, C]; `cache.from_prompts(prompts)` does the same for
    ready-made per-class prompts. Entries are rebuilt automatically after the model's weights change in
    place (a training step); `builds` counts the text-tower passes actually made.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Callable,
        *,
        batch_size: int = 256,
        device: torch.device | str | None = None,
        context_length: int | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.device = device
        self.context_length = context_length
        self.builds = 0  # how many classifiers were encoded (cache misses)
        self._entries: dict[tuple, tuple[int, Tensor]] = {}

    def __call__(self, classnames: Sequence[str], templates: Sequence[Template]) -> Tensor:
        classnames, templates = _check_names(classnames, templates)
        return self._get(("names", classnames, templates), lambda: [[_fill(t, c) for t in templates] for c in classnames])

    get = __call__

    def from_prompts(self, prompts: Sequence[Sequence[str]]) -> Tensor:
        prompts = _check_prompts(prompts)
        return self._get(("prompts", prompts), lambda: prompts)

    def _get(self, key: tuple, make_prompts: Callable[[], Sequence[Sequence[str]]]) -> Tensor:
        version = _weights_version(self.model)
        entry = self._entries.get(key)
        if entry is not None and entry[0] == version:
            return entry[1]
        weights = classifier_from_prompts(
            self.model, self.tokenizer, make_prompts(),
            batch_size=self.batch_size, device=self.device, context_length=self.context_length,
        )
        self.builds += 1
        self._entries[key] = (version, weights)
        return weights

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()


def predict(image_features: Tensor, classifier: Tensor, *, logit_scale: float = ZERO_SHOT_LOGIT_SCALE) -> Tensor:
    """Zero-shot logits [B, C] = logit_scale * normalize(image_features) @ classifier."""
    if not isinstance(image_features, Tensor) or image_features.dim() != 2:
        raise ValueError(f"image_features must be [B, E]; got {_shape(image_features)}")
    if not isinstance(classifier, Tensor) or classifier.dim() != 2:
        raise ValueError(f"classifier must be [E, C] (from build_classifier); got {_shape(classifier)}")
    if image_features.shape[1] != classifier.shape[0]:
        raise ValueError(
            f"image_features are [B, {image_features.shape[1]}] but the classifier is [{classifier.shape[0]}, C]; "
            "build the classifier with the same model (or pass W [E, C], not its transpose)"
        )
    image_features = F.normalize(image_features.float(), dim=-1)  # [B, E]
    return logit_scale * image_features @ classifier.to(image_features.device, torch.float32)  # [B, C]


def _shape(x: object) -> str:
    return str(list(x.shape)) if isinstance(x, Tensor) else type(x).__name__


def _check_logits(logits: Tensor, labels: Tensor) -> Tensor:
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        raise ValueError(f"logits must be [N, C]; got {_shape(logits)}")
    if not isinstance(labels, Tensor):
        labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels must be [N={logits.shape[0]}] to match logits; got {_shape(labels)}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"labels must hold integer class indices; got {labels.dtype}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise ValueError(f"labels must lie in [0, C={logits.shape[1]}); got {labels.min().item()}..{labels.max().item()}")
    return labels.to(logits.device).long()


def accuracy(logits: Tensor, labels: Tensor, topk: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy (fraction in [0, 1]) for each k, keyed "top1", "top5", ... A k larger than the number
    of classes is clamped to it (top-5 of a 3-way task is 1.0)."""
    labels = _check_logits(logits, labels)
    topk = tuple(topk)
    if not topk or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in topk):
        raise ValueError(f"topk must be positive ints; got {topk!r}")
    if labels.numel() == 0:
        raise ValueError("accuracy of zero examples is undefined")
    kmax = min(max(topk), logits.shape[1])
    ranked = logits.topk(kmax, dim=1).indices  # [N, kmax]
    hits = ranked == labels[:, None]  # [N, kmax]
    return {f"top{k}": hits[:, : min(k, kmax)].any(dim=1).float().mean().item() for k in topk}


def per_class_accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Top-1 accuracy of each class [C] (NaN for a class with no examples)."""
    labels = _check_logits(logits, labels)
    num_classes = logits.shape[1]
    correct = (logits.argmax(dim=1) == labels).float()
    totals = torch.bincount(labels, minlength=num_classes).float()  # [C]
    hits = torch.zeros(num_classes, device=logits.device).index_add_(0, labels, correct)  # [C]
    return (hits / totals).cpu()  # 0/0 -> NaN for empty classes


def evaluate(
    model: nn.Module,
    images: Tensor | Iterable,
    labels: Tensor | None,
    classifier: Tensor,
    topk: Sequence[int] = (1, 5),
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> dict:
    """Zero-shot accuracy of `model` with a prebuilt classifier W [E, C]: one image-tower pass and one
    matmul per batch. `images` is [N, 3, R, R] with `labels` [N], or an iterable of (images, labels)
    batches with `labels=None`. Returns {"top1", "top5", ..., "per_class" [C], "mean_per_class", "n"}.
    """
    if not isinstance(classifier, Tensor) or classifier.dim() != 2:
        raise ValueError(f"classifier must be [E, C] (from build_classifier); got {_shape(classifier)}")
    device = torch.device(device) if device is not None else _model_device(model)
    all_logits, all_labels = [], []
    with _inference(model):
        for batch, batch_labels in _iter_batches(images, labels, batch_size):
            if batch_labels is None:
                raise ValueError("evaluate needs labels: pass labels [N], or a loader yielding (images, labels)")
            image_features = _encode_images(model, batch, device)  # [b, E]
            all_logits.append(predict(image_features, classifier).cpu())  # [b, C]
            all_labels.append(torch.as_tensor(batch_labels).cpu())
    if not all_logits:
        raise ValueError("no images to evaluate")
    return summarize(torch.cat(all_logits), torch.cat(all_labels), topk)  # [N, C], [N]


def summarize(logits: Tensor, labels: Tensor, topk: Sequence[int] = (1, 5)) -> dict:
    """{"top1", "top5", ..., "per_class" [C], "mean_per_class", "n"} of logits [N, C] against labels [N]."""
    result: dict = accuracy(logits, labels, topk)
    result["per_class"] = per_class_accuracy(logits, labels)
    result["mean_per_class"] = _nan_mean(result["per_class"])  # the paper's metric for unbalanced sets
    result["n"] = int(labels.shape[0])
    return result


def _nan_mean(x: Tensor) -> float:
    """Mean of the finite entries (the mean per-class accuracy, skipping empty classes)."""
    finite = x[~torch.isnan(x)]
    return finite.mean().item() if finite.numel() else math.nan


def candidate_logits(
    model: nn.Module,
    tokenizer: Callable,
    image_features: Tensor,
    candidates: Sequence[Sequence[str]],
    *,
    batch_size: int = 256,
    logit_scale: float = ZERO_SHOT_LOGIT_SCALE,
) -> Tensor:
    """Logits [N, C] when every image has its own C candidate captions (`candidates[i][c]`, e.g. "two red
    circles" ... "four red circles"): each distinct caption is encoded once, and image i is scored against
    its own row. This is zero-shot classification where the class text depends on the sample."""
    if not isinstance(image_features, Tensor) or image_features.dim() != 2:
        raise ValueError(f"image_features must be [N, E]; got {_shape(image_features)}")
    candidates = _check_prompts(candidates)
    n = image_features.shape[0]
    if len(candidates) != n:
        raise ValueError(f"got {len(candidates)} candidate lists for {n} images")
    num_classes = len(candidates[0])
    if any(len(row) != num_classes for row in candidates):
        raise ValueError("every image needs the same number of candidate captions (one per class)")
    unique: dict[str, int] = {}
    index = torch.tensor([[unique.setdefault(t, len(unique)) for t in row] for row in candidates])  # [N, C]
    text_features = encode_texts(model, tokenizer, list(unique), batch_size=batch_size)  # [U, E]
    image_features = F.normalize(image_features.float(), dim=-1).to(text_features.device)  # [N, E]
    per_image = text_features[index.to(text_features.device)]  # [N, C, E]
    return (logit_scale * torch.einsum("ne,nce->nc", image_features, per_image)).cpu()  # [N, C]


def evaluate_zeroshot(
    model: nn.Module,
    tokenizer: Callable,
    task,
    *,
    templates: Sequence[Template] | None = None,
    topk: Sequence[int] | None = None,
    cache: PrototypeCache | None = None,
    batch_size: int = 256,
) -> dict:
    """Zero-shot accuracy on a labelled task (a `clipmini.data` Task, or anything with `.images`,
    `.labels`, `.classnames` and `.templates`). Returns `summarize`'s dict.

    The class texts, in order of preference: `templates` when given (filled with the class names); the
    task's per-sample `candidates` (count, relation); the task's own `prompts()` (its templates with its
    grammar fixes); its `templates`. Class prototypes come from `cache` when one is given.
    `topk` defaults to (1, 5), or (1,) for fewer than 5 classes.
    """
    missing = [a for a in ("images", "labels", "classnames") if not hasattr(task, a)]
    if missing:
        raise TypeError(f"task must have .images, .labels and .classnames; {type(task).__name__} lacks {missing}")
    if cache is not None and cache.model is not model:
        raise ValueError("the PrototypeCache belongs to a different model")
    classnames = task.classnames
    if topk is None:
        topk = (1, 5) if len(classnames) >= 5 else (1,)
    candidates = getattr(task, "candidates", None)
    if templates is None and candidates is not None:
        image_features = extract_features(model, task.images, batch_size)  # [N, E]
        logits = candidate_logits(model, tokenizer, image_features, candidates, batch_size=batch_size)
        return summarize(logits, task.labels, topk)
    if templates is None and callable(getattr(task, "prompts", None)):
        prompts = task.prompts()
        if cache is not None:
            classifier = cache.from_prompts(prompts)
        else:
            classifier = classifier_from_prompts(model, tokenizer, prompts, batch_size=batch_size)
    else:
        templates = templates if templates is not None else getattr(task, "templates", None)
        if templates is None:
            raise ValueError("the task carries no templates; pass templates= (e.g. BARE_TEMPLATE)")
        if cache is not None:
            classifier = cache(classnames, templates)
        else:
            classifier = build_classifier(model, tokenizer, classnames, templates, batch_size=batch_size)
    return evaluate(model, task.images, task.labels, classifier, topk, batch_size=batch_size)
