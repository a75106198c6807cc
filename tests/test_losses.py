"""clip_loss / siglip_loss on one process: hand values, the paper's pseudocode, open_clip, chunking, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss

from clipmini.losses import clip_loss, paper_pseudocode_loss, siglip_loss


pytestmark = pytest.mark.usefixtures("one_thread")


def _features(n: int, e: int = 16, dtype=torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, e, generator=g, dtype=dtype), dim=1)
    text = F.normalize(torch.randn(n, e, generator=g, dtype=dtype), dim=1)
    return image, text


def _lse_ce(logits_row, label):  # -log softmax(row)[label], by hand
    return math.log(sum(math.exp(v) for v in logits_row)) - logits_row[label]


# ---------------------------------------------------------------------------------------------------- values


def test_two_by_two_by_hand():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    s = 2.0
    # logits = s·I·Tᵀ = [[1.2, 0.0], [1.6, 2.0]]
    rows = (math.log(1 + math.exp(-1.2)) + math.log(1 + math.exp(-0.4))) / 2  # row 0 picks 1.2, row 1 picks 2.0
    cols = (math.log(1 + math.exp(0.4)) + math.log(1 + math.exp(-2.0))) / 2  # col 0 picks 1.2 over 1.6, col 1 picks 2.0
    assert clip_loss(image, text, s).item() == pytest.approx((rows + cols) / 2, abs=1e-6)
    assert clip_loss(image, text, s, direction="image").item() == pytest.approx(rows, abs=1e-6)
    assert clip_loss(image, text, s, direction="text").item() == pytest.approx(cols, abs=1e-6)
    assert clip_loss(image, text, s, chunk_size=1).item() == pytest.approx((rows + cols) / 2, abs=1e-6)


def test_matches_paper_pseudocode_and_open_clip():
    torch.manual_seed(0)
    I_f, T_f = torch.randn(12, 24), torch.randn(12, 20)
    W_i, W_t = torch.randn(24, 16), torch.randn(20, 16)
    t = torch.tensor(math.log(1 / 0.07))
    image, text = F.normalize(I_f @ W_i, dim=1), F.normalize(T_f @ W_t, dim=1)
    ours = clip_loss(image, text, t.exp())
    assert ours.item() == pytest.approx(paper_pseudocode_loss(I_f, T_f, W_i, W_t, t).item(), rel=1e-6)
    assert ours.item() == pytest.approx(ClipLoss()(image, text, t.exp()).item(), rel=1e-6)


@pytest.mark.parametrize("chunk_size", [None, 5])
def test_gradients_match_open_clip(chunk_size):
    image, text = _features(10, dtype=torch.float32, seed=1)
    ours_in = [image.clone().requires_grad_(), text.clone().requires_grad_(), torch.tensor(14.0, requires_grad=True)]
    ref_in = [x.detach().clone().requires_grad_() for x in ours_in]
    ours = clip_loss(*ours_in, chunk_size=chunk_size)
    ref = ClipLoss()(*ref_in)
    ours.backward()
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    for a, b in zip(ours_in, ref_in):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


def test_siglip_matches_open_clip_and_hand_formula():
    image, text = _features(9, dtype=torch.float32, seed=2)
    s, b = torch.tensor(10.0, requires_grad=True), torch.tensor(-10.0, requires_grad=True)
    s_ref, b_ref = s.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    ours = siglip_loss(image, text, s, b)
    ref = SigLipLoss()(image, text, s_ref, b_ref)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    ours.backward()
    ref.backward()
    torch.testing.assert_close((s.grad, b.grad), (s_ref.grad, b_ref.grad), rtol=1e-5, atol=1e-7)
    # −Σ log σ(label·(s·I·Tᵀ + b)) / N, spelled out
    logits = 10.0 * image @ text.T - 10.0
    labels = 2 * torch.eye(9) - 1
    by_hand = -torch.log(torch.sigmoid(labels * logits)).sum() / 9
    assert ours.item() == pytest.approx(by_hand.item(), rel=1e-5)


@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_zero_scale_gives_ln_n(n):
    image, text = _features(n)
    for chunk_size in (None, 3):
        assert clip_loss(image, text, 0.0, chunk_size=chunk_size).item() == pytest.approx(math.log(n), abs=1e-12)


def test_swapping_image_and_text_keeps_the_symmetric_loss():
    image, text = _features(11, seed=3)
    assert clip_loss(image, text, 9.0).item() == pytest.approx(clip_loss(text, image, 9.0).item(), abs=1e-12)
    # ...and turns one direction into the other
    assert clip_loss(image, text, 9.0, direction="image").item() == pytest.approx(
        clip_loss(text, image, 9.0, direction="text").item(), abs=1e-12
    )


def test_one_direction_options_are_the_two_cross_entropies():
    image, text = _features(13, seed=4)
    s = 20.0
    labels = torch.arange(13)
    i2t = F.cross_entropy(s * image @ text.T, labels)
    t2i = F.cross_entropy(s * text @ image.T, labels)
    assert clip_loss(image, text, s, direction="image").item() == pytest.approx(i2t.item(), abs=1e-12)
    assert clip_loss(image, text, s, direction="text").item() == pytest.approx(t2i.item(), abs=1e-12)
    assert clip_loss(image, text, s).item() == pytest.approx(((i2t + t2i) / 2).item(), abs=1e-12)
    assert i2t.item() != pytest.approx(t2i.item(), abs=1e-3)  # the two directions really differ here


def test_duplicate_captions_are_not_negatives():
    # Pairs 0 and 1 have the same caption text (id 0); pair 2 has its own.
    image = torch.eye(3, dtype=torch.float64)
    text = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    ids = torch.tensor([0, 0, 1])
    # s = 1: logits[i, j] = text[j][i] = [[1, .6, 0], [0, .8, 0], [0, 0, 1]]
    # masked: (0, 1) and (1, 0) leave every softmax they are not the positive of
    row = [_lse_ce([1.0, 0.0], 0), _lse_ce([0.8, 0.0], 0), _lse_ce([0.0, 0.0, 1.0], 2)]
    col = [_lse_ce([1.0, 0.0], 0), _lse_ce([0.8, 0.0], 0), _lse_ce([0.0, 0.0, 1.0], 2)]
    expected = (sum(row) / 3 + sum(col) / 3) / 2
    unmasked_rows = [_lse_ce([1.0, 0.6, 0.0], 0), _lse_ce([0.0, 0.8, 0.0], 1), _lse_ce([0.0, 0.0, 1.0], 2)]
    unmasked_cols = [_lse_ce([1.0, 0.0, 0.0], 0), _lse_ce([0.6, 0.8, 0.0], 1), _lse_ce([0.0, 0.0, 1.0], 2)]
    unmasked = (sum(unmasked_rows) / 3 + sum(unmasked_cols) / 3) / 2
    for chunk_size in (None, 2):
        masked = clip_loss(image, text, 1.0, caption_ids=ids, chunk_size=chunk_size).item()
        plain = clip_loss(image, text, 1.0, chunk_size=chunk_size).item()
        assert masked == pytest.approx(expected, abs=1e-12)
        assert plain == pytest.approx(unmasked, abs=1e-12)
        assert masked < plain
    # all ids distinct: no change at all
    assert clip_loss(image, text, 1.0, caption_ids=torch.arange(3)).item() == pytest.approx(unmasked, abs=1e-12)


# ---------------------------------------------------------------------------------------------------- chunked


def _loss_and_grads(image, text, s, **kw):
    inputs = [image.clone().requires_grad_(), text.clone().requires_grad_(), torch.tensor(s, dtype=image.dtype, requires_grad=True)]
    loss = clip_loss(*inputs, **kw)
    return loss.detach(), torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize("n,chunk_size", [(1, 1), (5, 2), (16, 4), (16, 16), (37, 8), (37, 64), (50, 7)])
@pytest.mark.parametrize("direction", ["both", "image", "text"])
def test_chunked_equals_plain(n, chunk_size, direction):
    image, text = _features(n, seed=n)
    ids = torch.randint(0, max(1, n // 3), (n,), generator=torch.Generator().manual_seed(n))
    for caption_ids in (None, ids):
        plain, plain_grads = _loss_and_grads(image, text, 12.5, direction=direction, caption_ids=caption_ids)
        chunk, chunk_grads = _loss_and_grads(image, text, 12.5, direction=direction, caption_ids=caption_ids, chunk_size=chunk_size)
        torch.testing.assert_close(chunk, plain, rtol=1e-12, atol=1e-12)
        for name, a, b in zip(("image_features", "text_features", "logit_scale"), chunk_grads, plain_grads):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"gradient w.r.t. {name}")


def test_chunked_fp32_and_float_scale():
    image, text = _features(300, e=32, dtype=torch.float32, seed=7)
    plain, plain_grads = _loss_and_grads(image, text, 100.0)
    chunk, chunk_grads = _loss_and_grads(image, text, 100.0, chunk_size=64)
    torch.testing.assert_close(chunk, plain, rtol=1e-5, atol=1e-6)
    for a, b in zip(chunk_grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # a plain Python float as the scale works in both forms
    assert clip_loss(image, text, 100.0, chunk_size=64).item() == pytest.approx(plain.item(), rel=1e-5)


def test_chunked_ignores_autocast():
    image, text = _features(40, e=8, dtype=torch.float32, seed=8)
    reference, reference_grads = _loss_and_grads(image, text, 30.0, chunk_size=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # would run the matmuls in bf16 if it leaked in
        loss, grads = _loss_and_grads(image, text, 30.0, chunk_size=16)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-6)
    for a, b in zip(grads, reference_grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def _largest_saved_tensor(n: int, **kw) -> int:
    """numel of the largest tensor autograd keeps for the backward pass of clip_loss."""
    image, text = _features(n, seed=5)
    image.requires_grad_()
    text.requires_grad_()
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = clip_loss(image, text, torch.tensor(10.0, dtype=image.dtype, requires_grad=True), **kw)
    loss.backward()
    return max(sizes)


def test_chunked_backward_never_keeps_the_n_by_n_matrix():
    n = 96
    assert _largest_saved_tensor(n) >= n * n  # the plain form does keep it (so this check can fail)
    assert _largest_saved_tensor(n, chunk_size=16) < n * n
    assert _largest_saved_tensor(n, chunk_size=16, caption_ids=torch.arange(n) % 5) < n * n


# ---------------------------------------------------------------------------------------------------- errors


def test_bad_inputs_raise_clear_errors():
    image, text = _features(4)
    with pytest.raises(ValueError, match=r"image_features must be 2-D"):
        clip_loss(image[0], text, 1.0)
    with pytest.raises(ValueError, match=r"image_features \[4, 16\] and text_features \[3, 16\]"):
        clip_loss(image, text[:3], 1.0)
    with pytest.raises(ValueError, match=r"image_features \[4, 16\] and text_features \[4, 8\]"):
        clip_loss(image, text[:, :8], 1.0)
    bad = text.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="text_features contains non-finite"):
        clip_loss(image, bad, 1.0)
    with pytest.raises(ValueError, match="image_features contains non-finite"):
        siglip_loss(bad, text, 1.0, 0.0)
    with pytest.raises(ValueError, match="logit_scale must be finite"):
        clip_loss(image, text, float("inf"))
    with pytest.raises(ValueError, match="must be >= 0"):
        clip_loss(image, text, torch.tensor(-2.0))
    with pytest.raises(ValueError, match="logit_scale must be a scalar"):
        clip_loss(image, text, torch.ones(2))
    with pytest.raises(TypeError, match="logit_scale must be a float or a scalar tensor"):
        clip_loss(image, text, "1.0")
    with pytest.raises(ValueError, match="logit_bias must be finite"):
        siglip_loss(image, text, 1.0, float("nan"))
    with pytest.raises(ValueError, match="direction must be one of"):
        clip_loss(image, text, 1.0, direction="rows")
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        clip_loss(image, text, 1.0, chunk_size=0)
    with pytest.raises(ValueError, match=r"caption_ids must be \[N\] = \[4\]"):
        clip_loss(image, text, 1.0, caption_ids=torch.arange(3))
    with pytest.raises(TypeError, match="caption_ids must hold integer ids"):
        clip_loss(image, text, 1.0, caption_ids=torch.zeros(4))
    with pytest.raises(TypeError, match="image_features must be a torch.Tensor"):
        clip_loss(image.tolist(), text, 1.0)
    with pytest.raises(TypeError, match="share a dtype"):
        clip_loss(image.float(), text, 1.0)
    with pytest.raises(ValueError, match="N = 0"):
        clip_loss(image[:0], text[:0], 1.0)
