"""The CLIP model: an image tower and a text tower projected into one embedding space.

The module also reads checkpoints. Its parameter names are those of OpenAI's released `state_dict`s,
so `build_model` loads them strictly (inferring the configuration where the shapes fix it), and
`load` opens OpenAI's TorchScript archives, open_clip's pickles and safetensors files.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import urllib.parse
import urllib.request
import warnings
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .config import CLIPConfig, TextConfig, VisionConfig, get_config
from .fileio import atomic_open, atomic_write_bytes, sha256_file
from .torchscript import is_torchscript_archive, read_torchscript_weights
from .towers import LayerNorm, Transformer, build_vision_tower

__all__ = [
    "CLIP",
    "infer_config",
    "build_model",
    "create_model",
    "load",
    "save",
    "config_metadata",
    "read_state_dict",
    "KNOWN_CHECKPOINTS",
    "sha256_file",
    "download_checkpoint",
    "default_cache_dir",
]


class CLIP(nn.Module):
    """Contrastive Language-Image Pre-training: `encode_image`, `encode_text`, and their logits."""

    def __init__(self, config: CLIPConfig):
        super().__init__()
        if not isinstance(config, CLIPConfig):
            raise TypeError(
                f"CLIP expects a CLIPConfig; got {type(config).__name__} "
                "(use clipmini.model.create_model for a model name or a dict)"
            )
        self.config = config
        text = config.text
        self.embed_dim = config.embed_dim
        self.image_size = config.vision.image_size
        self.context_length = text.context_length
        self.vocab_size = text.vocab_size
        # Check inputs' values (finite pixels, ids in range); each check costs one host sync.
        self.validate_inputs = True
        # Run the text transformer only up to the batch's last EOT. Exact: under the causal mask
        # no position after EOT can reach it. Captions are much shorter than the context, so
        # this saves most of the text tower's work, for one host sync (shared with the checks).
        self.trim_padding = True

        self.visual = build_vision_tower(config.vision, config.embed_dim, config.quick_gelu)
        self.transformer = Transformer(text.width, text.layers, text.heads, config.quick_gelu)
        self.token_embedding = nn.Embedding(text.vocab_size, text.width)  # [V, Wt]
        self.positional_embedding = nn.Parameter(torch.empty(text.context_length, text.width))  # [L, Wt]
        self.ln_final = LayerNorm(text.width)
        self.text_projection = nn.Parameter(torch.empty(text.width, config.embed_dim))  # [Wt, E]
        self.logit_scale = nn.Parameter(torch.full((), config.init_logit_scale))  # [] ln(1/tau)
        self.init_parameters()

    def init_parameters(self) -> None:
        """The reference initialization of the text tower (the image towers initialize themselves)."""
        width, layers = self.transformer.width, self.transformer.layers
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        attn_std = width**-0.5
        proj_std = width**-0.5 * (2 * layers) ** -0.5  # residual branches shrink with depth
        fc_std = (2 * width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width**-0.5)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Trade compute for memory: recompute each transformer block's activations in backward."""
        self.transformer.set_grad_checkpointing(enable)
        self.visual.set_grad_checkpointing(enable)

    # ----- input checks: errors that say what was expected and what arrived -----

    def _check_images(self, images: torch.Tensor) -> None:
        R = self.image_size
        expected = f"[B, 3, {R}, {R}]"
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"image must be a torch.Tensor {expected}; got {type(images).__name__}")
        if images.dim() != 4:
            hint = " (add a batch dimension with images.unsqueeze(0))" if images.dim() == 3 else ""
            raise ValueError(
                f"image must be {expected} for this model; got a {images.dim()}-D tensor "
                f"{list(images.shape)}{hint}"
            )
        if not images.is_floating_point():
            raise TypeError(
                f"image must be a floating-point tensor; got {images.dtype} "
                "(convert pixels to float and normalize them first)"
            )
        if tuple(images.shape[1:]) != (3, R, R):
            _, c, h, w = images.shape
            raise ValueError(f"image must be {expected} for this model; got [B, {c}, {h}, {w}]")
        if self.validate_inputs and images.device.type != "meta" and not torch.isfinite(images).all():
            raise ValueError("image contains NaN or infinite values")

    def _check_tokens(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Checked tokens, each row's EOT position `[B]`, and the length that holds every EOT."""
        ctx, vocab = self.context_length, self.vocab_size
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(
                f"tokens must be a torch.Tensor of token ids [B, {ctx}]; got {type(tokens).__name__} "
                "(use clipmini.tokenize(texts))"
            )
        if tokens.dtype == torch.bool or tokens.is_floating_point() or tokens.is_complex():
            raise TypeError(
                f"tokens must be an integer tensor of token ids; got {tokens.dtype} "
                "(use clipmini.tokenize(texts), or tokens.long())"
            )
        if tokens.dim() != 2:
            hint = " (add a batch dimension with tokens.unsqueeze(0))" if tokens.dim() == 1 else ""
            raise ValueError(
                f"tokens must be [B, L] with L <= {ctx}; got a {tokens.dim()}-D tensor "
                f"{list(tokens.shape)}{hint}"
            )
        if not 0 < tokens.shape[1] <= ctx:
            raise ValueError(
                f"tokens must be [B, L] with 0 < L <= context_length={ctx}; got length {tokens.shape[1]}"
            )
        if tokens.dtype not in (torch.int64, torch.int32):
            tokens = tokens.long()  # nn.Embedding takes int32/int64 indices only
        eot = tokens.argmax(dim=-1)  # [B]: EOT has the largest id
        length = tokens.shape[1]
        on_host = tokens.device.type != "meta" and not torch.jit.is_tracing()
        check, trim = self.validate_inputs and on_host, self.trim_padding and on_host
        if (check or trim) and tokens.shape[0]:
            lo, hi, last = torch.stack([*tokens.aminmax(), eot.max()]).tolist()  # one host sync
            if check and (lo < 0 or hi >= vocab):
                raise ValueError(
                    f"token ids must be in [0, vocab_size={vocab}); got min {lo}, max {hi}"
                )
            if trim:
                length = last + 1
        return tokens, eot, length

    # ----- the two towers and the logits -----

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Image features `[B, E]` (L2-normalized only if `normalize`)."""
        self._check_images(images)
        features = self.visual(images)  # [B, E]
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Text features `[B, E]`: the transformer's output at the end-of-text token, projected."""
        tokens, eot, L = self._check_tokens(tokens)  # eot [B]; L: the positions that matter
        tokens = tokens[:, :L]  # [B, L]
        x = self.token_embedding(tokens)  # [B, L, Wt]
        x = x + self.positional_embedding[:L].to(x.dtype)  # [B, L, Wt]
        x = self.transformer(x, causal=True)  # [B, L, Wt]
        # Read out at EOT. LayerNorm acts per position, so normalizing only the EOT row equals
        # ln_final over every position followed by the gather.
        x = x[torch.arange(x.shape[0], device=x.device), eot]  # [B, Wt]
        x = self.ln_final(x)  # [B, Wt]
        features = x @ self.text_projection  # [B, E]
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled cosine similarities: `logits_per_image [B_i, B_t]` and its transpose."""
        image_features = self.encode_image(images, normalize=True)  # [B_i, E]
        text_features = self.encode_text(tokens, normalize=True)  # [B_t, E]
        logits_per_image = self.logit_scale.exp() * image_features @ text_features.t()  # [B_i, B_t]
        return logits_per_image, logits_per_image.t()


# ---------------------------------------------------------------------------------------------
# Building a model from a state_dict
# ---------------------------------------------------------------------------------------------

# Entries of exported archives that are not weights: OpenAI's TorchScript archives carry three
# scalars, and a traced open_clip model also carries its causal mask (recomputed here).
_ARCHIVE_EXTRAS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


def _need(state_dict: Mapping, key: str, why: str) -> torch.Tensor:
    if key not in state_dict:
        raise ValueError(f"not an OpenAI-format CLIP state_dict: missing {key!r} ({why})")
    return state_dict[key]


def _exact_sqrt(n: int, key: str) -> int:
    root = math.isqrt(n)
    if root * root != n:
        raise ValueError(f"{key} has {n + 1} rows; expected a square grid plus one class/query row")
    return root


def _block_indices(state_dict: Mapping, prefix: str) -> set[int]:
    """The distinct integer indices N of keys `prefix.N.*`."""
    depth = prefix.count(".") + 1
    found = set()
    for key in state_dict:
        if key.startswith(prefix + "."):
            part = key.split(".")[depth]
            if part.isdigit():
                found.add(int(part))
    return found


def _shapes(state_dict: Mapping[str, torch.Tensor]) -> tuple[int, dict, dict]:
    """What the weights' shapes say: `embed_dim`, and the two towers' config fields but `head_width`."""
    text_projection = _need(state_dict, "text_projection", "the text tower's projection")
    positional = _need(state_dict, "positional_embedding", "the text positional embedding")
    token_embedding = _need(state_dict, "token_embedding.weight", "the token embedding")
    ln_final = _need(state_dict, "ln_final.weight", "the text tower's final LayerNorm")
    if "visual.proj" in state_dict:  # ViT
        conv1 = _need(state_dict, "visual.conv1.weight", "the ViT patch embedding")
        pos = _need(state_dict, "visual.positional_embedding", "the ViT positional embedding")
        patch = conv1.shape[-1]
        grid = _exact_sqrt(pos.shape[0] - 1, "visual.positional_embedding")
        vision = dict(
            image_size=patch * grid,
            layers=sum(
                1 for k in state_dict if k.startswith("visual.") and k.endswith("attn.in_proj_weight")
            ),
            width=conv1.shape[0],
            patch_size=patch,
        )
    elif "visual.attnpool.positional_embedding" in state_dict:  # ModifiedResNet
        pos = state_dict["visual.attnpool.positional_embedding"]
        grid = _exact_sqrt(pos.shape[0] - 1, "visual.attnpool.positional_embedding")
        width = _need(state_dict, "visual.layer1.0.conv1.weight", "the ResNet's first block").shape[0]
        vision = dict(
            image_size=32 * grid,
            layers=tuple(len(_block_indices(state_dict, f"visual.layer{b}")) for b in (1, 2, 3, 4)),
            width=width,
            patch_size=None,
        )
    else:
        raise ValueError(
            "not an OpenAI-format CLIP state_dict: it has neither 'visual.proj' (a ViT image tower) "
            "nor 'visual.attnpool.positional_embedding' (a ModifiedResNet image tower)"
        )
    text = dict(
        context_length=positional.shape[0],
        vocab_size=token_embedding.shape[0],
        width=ln_final.shape[0],
        layers=len(_block_indices(state_dict, "transformer.resblocks")),
    )
    return text_projection.shape[1], vision, text


def _openai_release(embed_dim: int, vision: dict, text: dict) -> str | None:
    """The name of OpenAI's released model with exactly these shapes, if there is one."""
    try:
        config = CLIPConfig(embed_dim, VisionConfig(**vision), TextConfig(**text))  # 64-wide heads, QuickGELU
    except (TypeError, ValueError):
        return None
    return next((name for name in KNOWN_CHECKPOINTS if get_config(name) == config), None)


def infer_config(
    state_dict: Mapping[str, torch.Tensor], head_width: int | None = None, quick_gelu: bool | None = None
) -> CLIPConfig:
    """The `CLIPConfig` that an OpenAI-format `state_dict` was made with.

    Shapes record neither the channels per attention head nor the activation: give them as
    `head_width` (both towers) and `quick_gelu`. Left out, they take OpenAI's convention (64, True)
    only when the shapes are exactly those of one of OpenAI's released models; otherwise this
    raises ValueError rather than guess.
    """
    embed_dim, vision, text = _shapes(state_dict)
    if head_width is None or quick_gelu is None:
        if _openai_release(embed_dim, vision, text) is None:
            unknown = []
            if head_width is None:
                pool = "attention-pool" if vision["patch_size"] is None else "transformer"
                vision_width = vision["width"] * (32 if vision["patch_size"] is None else 1)
                unknown.append(
                    f"how many attention heads split the text width {text['width']} and the vision "
                    f"{pool} width {vision_width}"
                )
            if quick_gelu is None:
                unknown.append("whether the activation is QuickGELU or GELU")
            raise ValueError(
                f"the weights' shapes do not tell {' or '.join(unknown)}, and they are not the shapes of "
                "one of OpenAI's released models (where 64-channel heads and QuickGELU are known). Pass the "
                "architecture: config= a CLIPConfig or a model name (load(path, config='tiny-vit'), "
                "build_model(state_dict, config=...)), or config=infer_config(state_dict, head_width=..., "
                "quick_gelu=...)"
            )
    head_width = 64 if head_width is None else head_width
    try:
        return CLIPConfig(
            embed_dim=embed_dim,
            vision=VisionConfig(**vision, head_width=head_width),
            text=TextConfig(**text, head_width=head_width),
            quick_gelu=True if quick_gelu is None else quick_gelu,
        )
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"could not infer a CLIPConfig from the state_dict ({err}); pass config= explicitly"
        ) from err


def _first(names: list[str], n: int = 5) -> str:
    shown = ", ".join(names[:n])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > n else shown


def build_model(state_dict: Mapping[str, torch.Tensor], config: CLIPConfig | str | Mapping | None = None) -> CLIP:
    """A fp32 `CLIP` holding `state_dict`'s weights; the config (a `CLIPConfig`, a model name or a
    dict) is inferred unless given, which `infer_config` refuses where the shapes are ambiguous.

    Raises ValueError naming the missing, unexpected and mis-shaped keys if the weights do not fit.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of names to tensors; got {type(state_dict).__name__}")
    state_dict = {k: v for k, v in state_dict.items() if k not in _ARCHIVE_EXTRAS}
    not_tensors = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"state_dict values must be tensors; these are not: {_first(not_tensors)}")
    config = infer_config(state_dict) if config is None else _as_config(config, "build_model's config")
    with torch.device("meta"):  # shapes only: no memory, no random init
        model = CLIP(config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [
        f"{k} {list(state_dict[k].shape)} (expected {list(v.shape)})"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or misshaped:
        problems = []
        if missing:
            problems.append(f"missing keys: {_first(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {_first(unexpected)}")
        if misshaped:
            problems.append(f"mis-shaped keys: {_first(misshaped)}")
        raise ValueError("state_dict does not fit the CLIP model it describes; " + "; ".join(problems))
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        model.load_state_dict(state_dict, strict=True)  # copies and casts every tensor to fp32
    return model


def _as_config(name_or_config: str | CLIPConfig | Mapping, what: str) -> CLIPConfig:
    """A `CLIPConfig` from a name in `MODEL_CONFIGS`, a `CLIPConfig` or its dict."""
    if isinstance(name_or_config, str):
        return get_config(name_or_config)
    if isinstance(name_or_config, CLIPConfig):
        return name_or_config
    if isinstance(name_or_config, Mapping):
        return CLIPConfig.from_dict(dict(name_or_config))
    raise TypeError(f"{what} expects a model name, a CLIPConfig or a dict; got {type(name_or_config).__name__}")


def create_model(name_or_config: str | CLIPConfig | Mapping) -> CLIP:
    """A randomly initialized CLIP from a name in `MODEL_CONFIGS`, a `CLIPConfig` or its dict."""
    return CLIP(_as_config(name_or_config, "create_model"))


# ---------------------------------------------------------------------------------------------
# Reading and writing checkpoint files
# ---------------------------------------------------------------------------------------------

_CONFIG_METADATA_KEY = "clipmini_config"  # safetensors metadata entry holding CLIPConfig JSON


def config_metadata(config: CLIPConfig) -> dict[str, str]:
    """The safetensors metadata that stores `config` beside the weights (`read_state_dict` reads it back)."""
    if not isinstance(config, CLIPConfig):
        raise TypeError(f"config_metadata expects a CLIPConfig; got {type(config).__name__}")
    return {_CONFIG_METADATA_KEY: json.dumps(config.to_dict())}


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    # A safetensors file starts with a little-endian u64 header length, then the JSON header.
    return len(head) == 9 and 0 < int.from_bytes(head[:8], "little") < 2**28 and head[8:] == b"{"


def _strip_prefixes(state_dict: dict) -> dict:
    """Remove wrappers' prefixes: DDP's `module.` and torch.compile's `_orig_mod.`."""
    out = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "_orig_mod."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def read_state_dict(
    path: str | os.PathLike, *, trust_code: bool = False
) -> tuple[dict[str, torch.Tensor], CLIPConfig | None]:
    """The CPU state_dict in a checkpoint file, and the CLIPConfig stored with it, if any.

    Reads safetensors files; OpenAI's TorchScript archives, whose tensors are read without running
    any code from the file (`trust_code=True` opens them with `torch.jit.load` instead, which runs
    the archive's code: only for files you trust); and pickles with `torch.load(weights_only=True)`,
    either a bare state_dict or `{"state_dict": ..., "config": ...}`.
    """
    if not isinstance(trust_code, bool):
        raise TypeError(f"trust_code must be True or False; got {type(trust_code).__name__} {trust_code!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    config_dict = None
    try:
        if _is_safetensors(path):
            from safetensors import safe_open

            state_dict = {}
            with safe_open(str(path), framework="pt", device="cpu") as f:
                metadata = f.metadata() or {}
                for key in f.keys():
                    state_dict[key] = f.get_tensor(key)
            if _CONFIG_METADATA_KEY in metadata:
                config_dict = json.loads(metadata[_CONFIG_METADATA_KEY])
        elif is_torchscript_archive(path) and trust_code:
            with warnings.catch_warnings():  # TorchScript is deprecated, but OpenAI ships it
                warnings.simplefilter("ignore", FutureWarning)
                archive = torch.jit.load(str(path), map_location="cpu")  # runs the archive's code
            state_dict = dict(archive.state_dict())
        elif is_torchscript_archive(path):
            state_dict = read_torchscript_weights(path)
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, Mapping) and "state_dict" in obj:
                config_dict = obj.get("config")
                obj = obj["state_dict"]
            if not isinstance(obj, Mapping):
                raise ValueError(f"expected a state_dict (a dict of tensors); found a {type(obj).__name__}")
            state_dict = dict(obj)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"could not read checkpoint {path}: it holds objects other than tensors and plain "
            f"containers, which torch.load(weights_only=True) refuses to unpickle ({err})"
        ) from err
    except ValueError as err:
        raise ValueError(f"could not read checkpoint {path}: {err}") from err
    except Exception as err:  # truncated zips, bad headers, EOF in a pickle...
        raise ValueError(
            f"could not read checkpoint {path}: the file is truncated, corrupt or not a checkpoint "
            f"({type(err).__name__}: {err})"
        ) from err
    config = None
    if config_dict is not None:
        if isinstance(config_dict, CLIPConfig):
            config = config_dict
        else:
            try:
                config = CLIPConfig.from_dict(config_dict)
            except (TypeError, ValueError) as err:
                raise ValueError(f"checkpoint {path} stores an invalid config: {err}") from err
    return _strip_prefixes(state_dict), config


def save(model: CLIP, path: str | os.PathLike) -> Path:
    """Write `model`'s weights and config to a `.safetensors` file, atomically."""
    from safetensors.torch import save as safetensors_bytes

    if not isinstance(model, CLIP):
        raise TypeError(f"save expects a clipmini CLIP (its config is stored too); got {type(model).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata=config_metadata(model.config)))
    return path


# OpenAI's released checkpoints: the sha256 of each file is the directory in its URL.
_OPENAI_BASE = "https://openaipublic.azureedge.net/clip/models"
KNOWN_CHECKPOINTS: dict[str, tuple[str, str]] = {
    name: (f"{_OPENAI_BASE}/{sha}/{file}", sha)
    for name, sha, file in [
        ("RN50", "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762", "RN50.pt"),
        ("RN101", "8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599", "RN101.pt"),
        ("RN50x4", "7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd", "RN50x4.pt"),
        ("RN50x16", "52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa", "RN50x16.pt"),
        ("RN50x64", "be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c", "RN50x64.pt"),
        ("ViT-B/32", "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af", "ViT-B-32.pt"),
        ("ViT-B/16", "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f", "ViT-B-16.pt"),
        ("ViT-L/14", "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836", "ViT-L-14.pt"),
        (
            "ViT-L/14@336px",
            "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02",
            "ViT-L-14-336px.pt",
        ),
    ]
}


def default_cache_dir() -> Path:
    """`$CLIPMINI_CACHE`, else `~/.cache/clipmini`."""
    return Path(os.environ.get("CLIPMINI_CACHE") or Path.home() / ".cache" / "clipmini")


def download_checkpoint(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The path of a known checkpoint in the cache, downloaded (atomically, sha256-checked) if needed."""
    if name not in KNOWN_CHECKPOINTS:
        raise ValueError(f"unknown checkpoint {name!r}; known names are: {', '.join(KNOWN_CHECKPOINTS)}")
    url, expected_sha = KNOWN_CHECKPOINTS[name]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / Path(urllib.parse.urlparse(url).path).name
    if target.is_file():
        if sha256_file(target) == expected_sha:
            return target
        warnings.warn(f"{target} does not match its sha256 {expected_sha}; downloading it again", stacklevel=2)
    digest = hashlib.sha256()
    with atomic_open(target, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
        for chunk in iter(lambda: response.read(1 << 20), b""):
            digest.update(chunk)
            out.write(chunk)
        if digest.hexdigest() != expected_sha:  # raising here discards the temporary file
            raise ValueError(
                f"sha256 mismatch for {url}: expected {expected_sha}, got {digest.hexdigest()}; "
                "the download is corrupt or was tampered with, and was not kept"
            )
    return target


def load(
    name_or_path: str | os.PathLike,
    device: str | torch.device = "cpu",
    config: CLIPConfig | str | Mapping | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    trust_code: bool = False,
) -> CLIP:
    """A fp32 CLIP in eval mode from a checkpoint file or a known name (downloaded and verified).

    The config comes from `config` (a `CLIPConfig`, a model name or a dict), else the one stored
    in the file, else the named model's, else the weights' shapes, which `infer_config` reads only
    where they are unambiguous (OpenAI's released architectures); otherwise it raises ValueError.
    TorchScript archives are read without running their code; `trust_code=True` opens them with
    `torch.jit.load`, which runs it (see `read_state_dict`).
    """
    path = Path(name_or_path)
    named_config = None
    if not path.is_file():
        if isinstance(name_or_path, str) and name_or_path in KNOWN_CHECKPOINTS:
            path = download_checkpoint(name_or_path, cache_dir)
            named_config = get_config(name_or_path)
        else:
            raise FileNotFoundError(
                f"no checkpoint file at {str(name_or_path)!r}, and it is not a known checkpoint "
                f"name ({', '.join(KNOWN_CHECKPOINTS)})"
            )
    config = None if config is None else _as_config(config, "load's config")
    state_dict, stored_config = read_state_dict(path, trust_code=trust_code)
    try:
        model = build_model(state_dict, config or stored_config or named_config)
    except ValueError as err:
        raise ValueError(f"cannot load checkpoint {path}: {err}") from err
    return model.to(device).eval()
