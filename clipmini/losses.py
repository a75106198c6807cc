"""CLIP's objective: symmetric InfoNCE over a batch of image-text pairs (plus SigLIP's sigmoid variant).

Everything here takes features that are already L2-normalized, and ``logit_scale`` already exponentiated
(the multiplier s = 1/τ, not the parameter ln(1/τ)), like ``open_clip``'s losses.

Under ``torch.distributed`` (world size W > 1) both losses return the loss of the GLOBAL batch of
N = W·n pairs, and their gradients (after DDP averages them over ranks) equal those of one process on
the concatenated batch. How:

* every rank gathers the features of all ranks with :class:`AllGather`, whose backward sums the
  gradients that all ranks computed for each slice (``all_reduce``) and hands each rank its own slice;
* each rank computes only its own rows against all columns (its "local" share ℓ_r of the global loss
  L = Σ_r ℓ_r), with labels offset by rank·n;
* the graph carries W·ℓ_r, because DDP divides the summed gradients by W;
* the value returned is L itself (an ``all_reduce`` of the detached shares), the same on every rank.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F

Scale = Union[torch.Tensor, float]

_DIRECTIONS = ("both", "image", "text")


# ----------------------------------------------------------------------------------------------------
# Distributed helpers


def _world() -> tuple[int, int]:
    """(rank, world_size) of the default process group, or (0, 1) when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class AllGather(torch.autograd.Function):
    """Concatenate ``x`` [n, ...] from every rank into [W·n, ...], keeping the gradient path.

    Forward: ``all_gather``. Backward: the gathered tensor was used by every rank's loss, so the
    gradient of the global loss w.r.t. this rank's slice is the SUM over ranks of the gradients each
    rank computed for that slice: ``all_reduce(SUM)``, then keep our slice.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        rank, world = _world()
        ctx.rank, ctx.n = rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)  # [W·n, ...]

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()  # all_reduce works in place; never touch autograd's buffer
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]  # [n, ...]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """[n, ...] on each rank -> [W·n, ...] in rank order, differentiable (see :class:`AllGather`)."""
    return AllGather.apply(x)


def all_gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """[n, ...] -> [W·n, ...] without gradient (for ids and for showing what goes wrong without one)."""
    parts = [torch.empty_like(x) for _ in range(_world()[1])]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts, dim=0)


class _ReportGlobal(torch.autograd.Function):
    """Return ``value`` (the global loss) while gradients flow into ``carried`` (the scaled local share)."""

    @staticmethod
    def forward(ctx, carried: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return value.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def _global_loss(local_share: torch.Tensor, world: int) -> torch.Tensor:
    """Value Σ_r ℓ_r (same on every rank); gradient of W·ℓ_r (DDP then averages over the W ranks)."""
    value = local_share.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return _ReportGlobal.apply(local_share * world, value)


def _check_equal_local_batches(n: int, device: torch.device, world: int) -> None:
    sizes = all_gather_no_grad(torch.tensor([n], device=device))
    if (sizes != n).any():
        raise ValueError(
            f"every rank must pass the same local batch size to the distributed loss; got {sizes.tolist()}"
            " (drop the last incomplete batch, e.g. DataLoader(drop_last=True))"
        )


# ----------------------------------------------------------------------------------------------------
# Input checks


def _check_features(image_features: torch.Tensor, text_features: torch.Tensor) -> None:
    for name, x in (("image_features", image_features), ("text_features", text_features)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2:
            raise ValueError(f"{name} must be 2-D [N, E]; got shape {list(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if image_features.shape != text_features.shape:
        raise ValueError(
            "image_features and text_features must have the same shape [N, E] (one text per image); got "
            f"image_features {list(image_features.shape)} and text_features {list(text_features.shape)}"
        )
    if image_features.shape[0] == 0:
        raise ValueError("the batch is empty: image_features and text_features have N = 0 rows")
    if image_features.dtype != text_features.dtype:
        raise TypeError(
            f"image_features ({image_features.dtype}) and text_features ({text_features.dtype}) must share a dtype"
        )
    for name, x in (("image_features", image_features), ("text_features", text_features)):
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contains non-finite values (nan or inf); check the encoder and the data")


def _check_scale(value: Scale, name: str, *, positive: bool) -> torch.Tensor | float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar (one element); got shape {list(value.shape)}")
        v = float(value.detach().reshape(()))
        out: torch.Tensor | float = value.reshape(())
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        v = float(value)
        out = v
    else:
        raise TypeError(f"{name} must be a float or a scalar tensor, got {type(value).__name__}")
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if positive and v < 0:
        raise ValueError(
            f"{name} is the exponentiated multiplier s = 1/τ and must be >= 0, got {v}"
            " (pass model.logit_scale.exp(), not model.logit_scale)"
        )
    return out


def _check_caption_ids(caption_ids: Optional[torch.Tensor], n: int, device: torch.device) -> None:
    if caption_ids is None:
        return
    if not isinstance(caption_ids, torch.Tensor):
        raise TypeError(f"caption_ids must be a LongTensor [N], got {type(caption_ids).__name__}")
    if caption_ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"caption_ids must hold integer ids (LongTensor [N]), got {caption_ids.dtype}")
    if caption_ids.shape != (n,):
        raise ValueError(f"caption_ids must be [N] = [{n}] (one id per pair); got shape {list(caption_ids.shape)}")
    if caption_ids.device != device:
        raise ValueError(f"caption_ids is on {caption_ids.device} but the features are on {device}")


# ----------------------------------------------------------------------------------------------------
# The InfoNCE core: rows A [n, E] against columns B [M, E]; the positive of row i is column offset + i.
#   loss = row_weight · Σ_i CE(row i)  +  col_weight · Σ_j CE(column j)    (columns only when square)
# Masked pairs (same caption id, not the positive) are dropped from every softmax's denominator.


def _same_caption_mask(row_ids, col_ids, row_start: int, rows: int, offset: int) -> Optional[torch.Tensor]:
    """[rows, M] True where the pair shares a caption id but is not the positive (so it is no negative)."""
    if row_ids is None:
        return None
    mask = row_ids[row_start : row_start + rows, None] == col_ids[None, :]  # [rows, M]
    i = torch.arange(rows, device=mask.device)
    mask[i, offset + row_start + i] = False  # keep the true pair
    return mask


def _infonce_plain(A, B, scale, offset, row_weight, col_weight, row_ids, col_ids) -> torch.Tensor:
    n = A.shape[0]
    logits = scale * (A @ B.t())  # [n, M]
    mask = _same_caption_mask(row_ids, col_ids, 0, n, offset)
    if mask is not None:
        logits = logits.masked_fill(mask, float("-inf"))
    labels = torch.arange(n, device=A.device) + offset  # [n]
    loss = logits.new_zeros(())
    if row_weight:
        loss = loss + row_weight * F.cross_entropy(logits, labels, reduction="sum")
    if col_weight:
        loss = loss + col_weight * F.cross_entropy(logits.t(), labels, reduction="sum")
    return loss


class _ChunkedInfoNCE(torch.autograd.Function):
    """The same loss as :func:`_infonce_plain`, holding only ``chunk_size`` rows of logits at a time.

    Forward: per chunk of rows, logits [c, M] give the rows' logsumexps and update a running column
    logsumexp [M]. Backward: recompute each chunk's logits; dL/dlogits = row_w·softmax_row +
    col_w·softmax_col (minus the positives, done once on the diagonal), then
    dA = s·G@B, dB = s·Gᵀ@A, ds = Σ G∘(A@Bᵀ).
    """

    @staticmethod
    def forward(ctx, A, B, scale, offset, row_weight, col_weight, row_ids, col_ids, chunk_size):
        with torch.autocast(A.device.type, enabled=False):  # the whole computation in fp32 (or fp64)
            loss, row_lse, col_lse = _ChunkedInfoNCE._forward(
                A, B, scale, offset, row_weight, col_weight, row_ids, col_ids, chunk_size
            )
        ctx.save_for_backward(A, B, scale, row_lse, col_lse, row_ids, col_ids)
        ctx.config = (offset, row_weight, col_weight, chunk_size)
        return loss.to(A.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        A, B, scale, row_lse, col_lse, row_ids, col_ids = ctx.saved_tensors
        with torch.autocast(A.device.type, enabled=False):
            dA, dB, ds = _ChunkedInfoNCE._backward(A, B, scale, row_lse, col_lse, row_ids, col_ids, *ctx.config)
        g = grad_loss.to(dA.dtype)
        dscale = (g * ds).to(scale.dtype) if ctx.needs_input_grad[2] else None
        return (g * dA).to(A.dtype), (g * dB).to(B.dtype), dscale, None, None, None, None, None, None

    @staticmethod
    def _forward(A, B, scale, offset, row_weight, col_weight, row_ids, col_ids, chunk_size):
        n, M = A.shape[0], B.shape[0]
        dtype = torch.promote_types(A.dtype, torch.float32)  # fp16/bf16 inputs are computed in fp32
        s = scale.to(dtype)
        Af, Bf = A.to(dtype), B.to(dtype)
        row_lse = Af.new_empty(n)  # [n]
        col_lse = Af.new_full((M,), float("-inf")) if col_weight else None  # [M]
        for start in range(0, n, chunk_size):
            c = min(chunk_size, n - start)
            z = s * (Af[start : start + c] @ Bf.t())  # [c, M]
            mask = _same_caption_mask(row_ids, col_ids, start, c, offset)
            if mask is not None:
                z.masked_fill_(mask, float("-inf"))
            row_lse[start : start + c] = torch.logsumexp(z, dim=1)
            if col_weight:
                col_lse = torch.logaddexp(col_lse, torch.logsumexp(z, dim=0))
        positive = s * (Af * Bf[offset : offset + n]).sum(dim=1)  # [n] logits of the true pairs
        loss = row_weight * (row_lse - positive).sum()
        if col_weight:
            loss = loss + col_weight * (col_lse - positive).sum()
        return loss, row_lse, col_lse

    @staticmethod
    def _backward(A, B, scale, row_lse, col_lse, row_ids, col_ids, offset, row_weight, col_weight, chunk_size):
        n = A.shape[0]
        dtype = torch.promote_types(A.dtype, torch.float32)
        s = scale.to(dtype)
        Af, Bf = A.to(dtype), B.to(dtype)
        dA = torch.empty_like(Af)  # [n, E]
        dB = torch.zeros_like(Bf)  # [M, E]
        ds = Af.new_zeros(())
        s_value = float(s)
        for start in range(0, n, chunk_size):
            c = min(chunk_size, n - start)
            Ac = Af[start : start + c]  # [c, E]
            z = s * (Ac @ Bf.t())  # [c, M], recomputed
            mask = _same_caption_mask(row_ids, col_ids, start, c, offset)
            if mask is not None:
                z.masked_fill_(mask, float("-inf"))
            # G = dL/dz without the positives' -1s: row_w·softmax over rows + col_w·softmax over columns
            if row_weight and col_weight:
                G = (z - row_lse[start : start + c, None]).exp_().mul_(row_weight)  # [c, M]
                G.add_(z.sub_(col_lse[None, :]).exp_().mul_(col_weight))  # z is reused in place
            elif row_weight:
                G = z.sub_(row_lse[start : start + c, None]).exp_().mul_(row_weight)
            else:
                G = z.sub_(col_lse[None, :]).exp_().mul_(col_weight)
            GB = G @ Bf  # [c, E]
            dA[start : start + c] = s * GB
            dB.addmm_(G.t(), Ac, alpha=s_value)  # dB += s·Gᵀ@A_c  [M, E]
            ds += (Ac * GB).sum()  # Σ G∘(A Bᵀ) without a second [c, M] buffer
        # the positives: d(-(rw + cw)·s·<A_i, B_{offset+i}>)
        w = row_weight + col_weight
        Bpos = Bf[offset : offset + n]  # [n, E]
        dA -= w * s * Bpos
        dB[offset : offset + n] -= w * s * Af
        ds -= w * (Af * Bpos).sum()
        return dA, dB, ds


def _infonce(A, B, scale, offset, row_weight, col_weight, row_ids, col_ids, chunk_size) -> torch.Tensor:
    if chunk_size is None:
        return _infonce_plain(A, B, scale, offset, row_weight, col_weight, row_ids, col_ids)
    scale_t = scale if isinstance(scale, torch.Tensor) else torch.tensor(float(scale), device=A.device)
    return _ChunkedInfoNCE.apply(A, B, scale_t, offset, row_weight, col_weight, row_ids, col_ids, chunk_size)


# ----------------------------------------------------------------------------------------------------
# Public losses


def clip_loss(
    image_features: torch.Tensor,  # [N, E], L2-normalized
    text_features: torch.Tensor,  # [N, E], L2-normalized
    logit_scale: Scale,  # s = exp(model.logit_scale) = 1/τ
    *,
    direction: str = "both",  # "image": image→text rows only; "text": text→image columns only
    caption_ids: Optional[torch.Tensor] = None,  # [N]; equal ids = identical captions, not negatives
    chunk_size: Optional[int] = None,  # rows of logits held at once; None = the plain N×N form
    gather: bool = True,  # under torch.distributed: the loss of the global batch
) -> torch.Tensor:
    """Symmetric InfoNCE: mean of the image→text and text→image cross-entropies over s·I·Tᵀ."""
    _check_features(image_features, text_features)
    scale = _check_scale(logit_scale, "logit_scale", positive=True)
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction must be one of {_DIRECTIONS}, got {direction!r}")
    n = image_features.shape[0]
    _check_caption_ids(caption_ids, n, image_features.device)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int (rows of logits per chunk) or None, got {chunk_size!r}")
    if caption_ids is not None:
        caption_ids = caption_ids.long()

    rank, world = _world()
    if not gather or world == 1:
        # One process: one pass over the N×N logits gives both directions.
        row_w = {"both": 0.5, "image": 1.0, "text": 0.0}[direction] / n
        col_w = {"both": 0.5, "image": 0.0, "text": 1.0}[direction] / n
        return _infonce(image_features, text_features, scale, 0, row_w, col_w, caption_ids, caption_ids, chunk_size)

    # DDP: this rank's rows (its images against all texts) and its columns (its texts against all images).
    _check_equal_local_batches(n, image_features.device, world)
    all_image = all_gather_with_grad(image_features)  # [W·n, E]
    all_text = all_gather_with_grad(text_features)  # [W·n, E]
    all_ids = all_gather_no_grad(caption_ids) if caption_ids is not None else None  # [W·n]
    total, offset = n * world, n * rank
    weight = (0.5 if direction == "both" else 1.0) / total
    terms = []
    if direction in ("both", "image"):
        terms.append(_infonce(image_features, all_text, scale, offset, weight, 0.0, caption_ids, all_ids, chunk_size))
    if direction in ("both", "text"):
        terms.append(_infonce(text_features, all_image, scale, offset, weight, 0.0, caption_ids, all_ids, chunk_size))
    return _global_loss(sum(terms), world)  # value Σ_r share_r; gradient of W·share_r


def siglip_loss(
    image_features: torch.Tensor,  # [N, E], L2-normalized
    text_features: torch.Tensor,  # [N, E], L2-normalized
    logit_scale: Scale,  # s, already exponentiated
    logit_bias: Scale,  # b
    *,
    gather: bool = True,  # under torch.distributed: the loss of the global batch
) -> torch.Tensor:
    """SigLIP: −Σ_ij log σ(label_ij·(s·I_i·T_j + b)) / N, label +1 on the diagonal and −1 elsewhere."""
    _check_features(image_features, text_features)
    scale = _check_scale(logit_scale, "logit_scale", positive=True)
    bias = _check_scale(logit_bias, "logit_bias", positive=False)
    n = image_features.shape[0]
    rank, world = _world()
    distributed = gather and world > 1
    if distributed:
        _check_equal_local_batches(n, image_features.device, world)
        texts = all_gather_with_grad(text_features)  # [W·n, E]
    else:
        texts = text_features
    total, offset = n * world if distributed else n, n * rank if distributed else 0
    logits = scale * (image_features @ texts.t()) + bias  # [n, W·n]
    labels = -torch.ones_like(logits)
    i = torch.arange(n, device=logits.device)
    labels[i, offset + i] = 1.0  # [n, W·n]
    share = -F.logsigmoid(labels * logits).sum() / total
    return _global_loss(share, world) if distributed else share


def paper_pseudocode_loss(I_f, T_f, W_i, W_t, t) -> torch.Tensor:
    """The paper's Figure 3 pseudocode, line for line in torch (the reference the book and tests use).

    I_f [n, d_i] and T_f [n, d_t] are encoder outputs, W_i [d_i, d_e] and W_t [d_t, d_e] the
    projections, and t the learned log-temperature (so the multiplier is exp(t)).
    """

    def l2_normalize(x, axis):
        return x / torch.linalg.norm(x, dim=axis, keepdim=True)

    def cross_entropy_loss(logits, labels, axis):
        # softmax along `axis`; the correct entry of slice k is labels[k]
        logp = torch.log_softmax(logits, dim=axis)
        return -torch.take_along_dim(logp, labels.unsqueeze(axis), dim=axis).mean()

    n = I_f.shape[0]
    # joint multimodal embedding [n, d_e]
    I_e = l2_normalize(I_f @ W_i, axis=1)
    T_e = l2_normalize(T_f @ W_t, axis=1)
    # scaled pairwise cosine similarities [n, n]
    logits = (I_e @ T_e.T) * torch.exp(torch.as_tensor(t))
    # symmetric loss function
    labels = torch.arange(n, device=logits.device)
    loss_i = cross_entropy_loss(logits, labels, axis=0)
    loss_t = cross_entropy_loss(logits, labels, axis=1)
    loss = (loss_i + loss_t) / 2
    return loss
