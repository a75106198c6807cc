"""Released weights: OpenAI's checkpoint format, written out, and agreement with a reference measured.

OpenAI released CLIP as TorchScript archives. Their `state_dict`s keep the weights of every
convolution, linear layer and attention projection (and `proj`, `text_projection`) in float16 and
everything else in float32, and add three integer scalars: `input_resolution`, `context_length` and
`vocab_size`. `released_dtypes` names that layout; `write_openai_archive` writes any clipmini model
in it, so that a random model stands in for a real file when there is no network.
`max_relative_difference` and `compare_features` measure how far two models' outputs are apart.
"""

from __future__ import annotations

import copy
import io
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .eval import _inference
from .fileio import atomic_write_bytes
from .model import CLIP
from .towers import MultiheadSelfAttention

__all__ = [
    "OPENAI_SCALARS",
    "released_dtypes",
    "openai_state_dict",
    "write_openai_archive",
    "max_relative_difference",
    "compare_features",
]

# The integer scalars OpenAI's archives carry beside the weights (loaders drop them).
OPENAI_SCALARS: tuple[str, ...] = ("input_resolution", "context_length", "vocab_size")


def released_dtypes(model: CLIP) -> dict[str, torch.dtype]:
    """The dtype of each `state_dict` entry in OpenAI's released files: float16 for the weights and
    biases of Conv and Linear layers, attention's `in_proj_*`, `proj` and `text_projection`; the rest
    (embeddings, norms, BatchNorm statistics, `logit_scale`) as they are."""
    if not isinstance(model, CLIP):
        raise TypeError(f"released_dtypes expects a clipmini CLIP; got {type(model).__name__}")
    half = set()
    for prefix, module in model.named_modules():
        names: tuple[str, ...] = ()
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            names = ("weight", "bias")
        elif isinstance(module, MultiheadSelfAttention):
            names = ("in_proj_weight", "in_proj_bias")
        elif isinstance(module, CLIP):
            names = ("text_projection",)
        elif hasattr(module, "proj") and isinstance(module.proj, nn.Parameter):  # the ViT's projection
            names = ("proj",)
        for name in names:
            if getattr(module, name, None) is not None:
                half.add(f"{prefix}.{name}" if prefix else name)
    return {k: torch.float16 if k in half else v.dtype for k, v in model.state_dict().items()}


def _scalars(model: CLIP) -> dict[str, torch.Tensor]:
    values = (model.image_size, model.context_length, model.vocab_size)
    return {name: torch.tensor(value) for name, value in zip(OPENAI_SCALARS, values)}


def openai_state_dict(model: CLIP) -> dict[str, torch.Tensor]:
    """`model`'s weights as OpenAI's files hold them: `released_dtypes`, plus the three scalars."""
    dtypes = released_dtypes(model)
    state_dict = {k: v.detach().cpu().to(dtypes[k]) for k, v in model.state_dict().items()}
    return {**state_dict, **_scalars(model)}


class _ArchiveRoot(nn.Module):
    """The module that gets traced: `model`'s children and parameters under their own names, plus
    the three scalars as buffers (the `model` keeps them as plain ints, so it cannot hold them)."""

    def __init__(self, model: CLIP):
        super().__init__()
        for name, child in model.named_children():
            self.add_module(name, child)
        for name, parameter in model.named_parameters(recurse=False):
            self.register_parameter(name, parameter)
        for name, value in _scalars(model).items():
            self.register_buffer(name, value)
        self._forward = model.forward  # a bound method: not a submodule, its weights are ours already

    def forward(self, images: torch.Tensor, tokens: torch.Tensor):
        return self._forward(images, tokens)


def write_openai_archive(model: CLIP, path: str | os.PathLike) -> Path:
    """Write `model` as a TorchScript archive in OpenAI's layout (keys, dtypes, scalars), atomically.

    The archive's code is traced on the CPU in float32, then its weights are cast to
    `released_dtypes`; OpenAI traced theirs on a GPU in float16. Loaders use only the archive's
    `state_dict`: `clipmini.load` reads it without running the code, open_clip's `load_openai_model`
    through `torch.jit.load`.
    """
    if not isinstance(model, CLIP):
        raise TypeError(f"write_openai_archive expects a clipmini CLIP; got {type(model).__name__}")
    path = Path(path)
    model = copy.deepcopy(model).cpu().float()  # the trace shares its weights: cast a copy's, not the caller's
    R = model.image_size
    images = torch.zeros(1, 3, R, R)  # [1, 3, R, R]
    tokens = torch.tensor([[model.vocab_size - 2, model.vocab_size - 1]])  # [1, 2]: SOT, EOT
    source = _ArchiveRoot(model).eval()
    dtypes = released_dtypes(model)
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # TracerWarnings about the input checks' Python branches; TorchScript's deprecation notice
        warnings.simplefilter("ignore")
        archive = torch.jit.trace(source, (images, tokens), check_trace=False)
        for name, parameter in archive.named_parameters():
            parameter.data = parameter.data.to(dtypes[name])
        torch.jit.save(archive, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def max_relative_difference(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """max|ours - theirs| / max|theirs| over the whole tensor: one number per output, scale-free."""
    if ours.shape != theirs.shape:
        raise ValueError(f"cannot compare tensors of shapes {list(ours.shape)} and {list(theirs.shape)}")
    ours, theirs = ours.detach().double().cpu(), theirs.detach().double().cpu()
    scale = theirs.abs().max().item()
    error = (ours - theirs).abs().max().item()
    return error / scale if scale > 0 else error


def compare_features(ours: nn.Module, theirs: nn.Module, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, float]:
    """`max_relative_difference` of `ours` against the reference `theirs` on the same inputs, for the
    image features `[B_i, E]`, the text features `[B_t, E]` and the logits `[B_i, B_t]`. Each model
    needs `encode_image`, `encode_text` and `logit_scale`; both run in eval mode without gradients."""
    outputs = []
    for model in (ours, theirs):
        device = next(model.parameters()).device
        with _inference(model):
            image_features = model.encode_image(images.to(device)).float().cpu()  # [B_i, E]
            text_features = model.encode_text(tokens.to(device)).float().cpu()  # [B_t, E]
            scale = model.logit_scale.exp().float().cpu()
        logits = scale * F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T  # [B_i, B_t]
        outputs.append({"image_features": image_features, "text_features": text_features, "logits": logits})
    return {name: max_relative_difference(outputs[0][name], outputs[1][name]) for name in outputs[0]}
