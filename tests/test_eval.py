"""Retrieval metrics, linear and few-shot probes, and feature extraction on hand-built features."""

import math

import pytest
import torch
from torch import nn

from clipmini.eval import (
    DEFAULT_L2_GRID,
    extract_features,
    few_shot_probe,
    linear_probe,
    retrieval_metrics,
    sample_k_per_class,
)

# ----------------------------------------------------------------------------- retrieval


def test_identity_features_retrieve_perfectly():
    features = torch.eye(6)
    m = retrieval_metrics(features, features.clone(), ks=(1, 5))
    assert m["image_to_text_R@1"] == 1.0
    assert m["text_to_image_R@1"] == 1.0
    assert m["image_to_text_R@5"] == 1.0
    assert m["image_to_text_mean_rank"] == 1.0


def test_known_permutation_gives_known_recall():
    # Captions 0 and 1 are swapped: image 0 matches caption 1 exactly and image 1 matches caption 0.
    images = torch.eye(4)
    texts = images[[1, 0, 2, 3]]
    m = retrieval_metrics(images, texts, ks=(1, 2))
    assert m["image_to_text_R@1"] == pytest.approx(0.5)  # images 2 and 3 only
    assert m["text_to_image_R@1"] == pytest.approx(0.5)
    # Image 0's own caption scores 0 and ties with two other zeros; ties count against, so it ranks 4th.
    assert m["image_to_text_R@2"] == pytest.approx(0.5)
    assert m["image_to_text_mean_rank"] == pytest.approx((4 + 4 + 1 + 1) / 4)


def test_rank_two_is_found_at_k_two():
    # Image 0's own caption is second-best (after caption 1), image 1 and 2 are first.
    images = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    texts = torch.tensor([[0.8, 0.0, 0.6], [0.9, 0.436, 0.0], [0.0, 0.0, 1.0]])
    m = retrieval_metrics(images, texts, ks=(1, 2, 3))
    assert m["image_to_text_R@1"] == pytest.approx(2 / 3)
    assert m["image_to_text_R@2"] == pytest.approx(1.0)
    # text -> image: caption 0 scores 0.8 with image 0, 0.6 with image 2 -> first.
    # caption 1 (normalized ~[0.9, 0.436]) scores ~0.9 with image 0, ~0.436 with image 1 -> second.
    # caption 2 -> image 2 first.
    assert m["text_to_image_R@1"] == pytest.approx(2 / 3)
    assert m["text_to_image_mean_rank"] == pytest.approx(4 / 3)


def test_directions_differ_when_asymmetric():
    # Image 0 is a "hub": every caption likes it best. Image->text still works for image 0 only.
    images = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.6, 0.0, 0.8]])
    texts = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.1, 0.0], [1.0, 0.0, 0.1]])
    m = retrieval_metrics(images, texts, ks=(1,))
    # text -> image: every caption's best image is image 0, so only caption 0 succeeds.
    assert m["text_to_image_R@1"] == pytest.approx(1 / 3)
    # image -> text: image 1 = [.6,.8,0] scores caption 1 highest (0.6+0.08 over ~1.005), image 2 likewise.
    assert m["image_to_text_R@1"] == pytest.approx(1.0)
    assert m["image_to_text_R@1"] != m["text_to_image_R@1"]


def test_collapsed_features_do_not_score_perfectly():
    features = torch.ones(5, 4)
    m = retrieval_metrics(features, features, ks=(1,))
    assert m["image_to_text_R@1"] == 0.0
    assert m["text_to_image_R@1"] == 0.0


def test_several_captions_per_image():
    images = torch.eye(3)
    # Six captions, two per image. Caption 1 (image 0's second) is exactly image 2's direction.
    texts = torch.tensor(
        [[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0], [0.1, 1.0, 0], [0, 0.1, 1.0], [0.05, 0, 1.0]]
    )
    text_to_image = torch.tensor([0, 0, 1, 1, 2, 2])
    m = retrieval_metrics(images, texts, ks=(1, 2), text_to_image=text_to_image)
    # Image 0 still succeeds through caption 0 although caption 1 is wrong; image 1 succeeds; image 2's
    # best own caption (0.9988) is beaten by caption 1 (1.0), so it is found only at k = 2.
    assert m["image_to_text_R@1"] == pytest.approx(2 / 3)
    assert m["image_to_text_R@2"] == pytest.approx(1.0)
    # Caption 1 retrieves image 2 first: 5 of 6 captions succeed.
    assert m["text_to_image_R@1"] == pytest.approx(5 / 6)


def test_retrieval_bad_inputs():
    with pytest.raises(ValueError, match=r"\[N, E\]"):
        retrieval_metrics(torch.randn(4), torch.randn(4, 3))
    with pytest.raises(ValueError, match="embedding width"):
        retrieval_metrics(torch.randn(4, 3), torch.randn(4, 5))
    with pytest.raises(ValueError, match="one caption per image"):
        retrieval_metrics(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="text_to_image"):
        retrieval_metrics(torch.randn(2, 3), torch.randn(3, 3), text_to_image=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="at least one caption"):
        retrieval_metrics(torch.randn(3, 3), torch.randn(3, 3), text_to_image=torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="ks"):
        retrieval_metrics(torch.randn(3, 3), torch.randn(3, 3), ks=(0,))
    with pytest.raises(TypeError, match="floating"):
        retrieval_metrics(torch.ones(3, 3, dtype=torch.long), torch.randn(3, 3))


# ----------------------------------------------------------------------------- probes


def _clusters(n_per_class: int, num_classes: int = 4, dim: int = 16, seed: int = 0, spread: float = 0.5, centers=None):
    """Gaussian clusters around fixed centers: (features [N, dim], labels [N], centers)."""
    gen = torch.Generator().manual_seed(seed)
    if centers is None:
        centers = 3.0 * torch.randn(num_classes, dim, generator=gen)
    labels = torch.arange(centers.shape[0]).repeat_interleave(n_per_class)
    features = centers[labels] + spread * torch.randn(labels.numel(), centers.shape[1], generator=gen)
    perm = torch.randperm(labels.numel(), generator=gen)
    return features[perm], labels[perm], centers


def test_linear_probe_separates_gaussian_clusters():
    x_train, y_train, centers = _clusters(40, seed=0)
    x_test, y_test, _ = _clusters(40, seed=1, centers=centers)  # same classes, fresh samples
    grid = (1e-4, 1e-2, 1.0)
    result = linear_probe(x_train, y_train, x_test, y_test, l2_grid=grid, seed=0)
    assert result["accuracy"] >= 0.95
    assert result["l2"] in grid
    assert result["C"] == pytest.approx(1.0 / result["l2"])
    assert set(result["val_accuracy"]) == set(grid)
    # The returned weights reproduce the reported accuracy.
    logits = ((x_test - result["mean"]) / result["std"]) @ result["weight"] + result["bias"]
    assert (logits.argmax(1) == y_test).float().mean().item() == pytest.approx(result["accuracy"])


def test_linear_probe_fails_on_random_labels():
    # The probe is not a constant pass: labels unrelated to the features give chance accuracy on test data.
    x_train, _, centers = _clusters(40, seed=0)
    x_test, y_test, _ = _clusters(40, seed=1, centers=centers)
    random_labels = torch.randint(0, 4, (x_train.shape[0],), generator=torch.Generator().manual_seed(0))
    result = linear_probe(x_train, random_labels, x_test, y_test, l2_grid=(1e-2,))
    assert result["accuracy"] < 0.6


def test_linear_probe_chooses_by_validation():
    # The chosen strength has the best validation accuracy, and among equals it is the strongest.
    x, y, _ = _clusters(30, num_classes=3, dim=40, spread=4.0, seed=3)
    result = linear_probe(x, y, x, y, seed=1)
    val = result["val_accuracy"]
    assert set(val) == set(DEFAULT_L2_GRID)
    best = max(val.values())
    assert val[result["l2"]] == best
    assert result["l2"] == max(l2 for l2, acc in val.items() if acc == best)


def test_linear_probe_is_deterministic():
    x, y, _ = _clusters(20, seed=5, spread=2.0)
    a = linear_probe(x, y, x, y, l2_grid=(1e-3, 1e-1), seed=7)
    b = linear_probe(x, y, x, y, l2_grid=(1e-3, 1e-1), seed=7)
    assert a["l2"] == b["l2"] and a["accuracy"] == b["accuracy"]
    assert torch.equal(a["weight"], b["weight"])


def test_linear_probe_bad_inputs():
    x, y, _ = _clusters(5)
    with pytest.raises(ValueError, match="disagree on N"):
        linear_probe(x, y[:-1], x, y)
    with pytest.raises(ValueError, match=r"\[N, E\]"):
        linear_probe(x[0], y, x, y)
    with pytest.raises(ValueError, match="1-D"):
        linear_probe(x, y[:, None], x, y)
    with pytest.raises(TypeError, match="integer"):
        linear_probe(x, y.float(), x, y)
    with pytest.raises(ValueError, match="feature width"):
        linear_probe(x, y, x[:, :3], y)
    with pytest.raises(ValueError, match="l2_grid"):
        linear_probe(x, y, x, y, l2_grid=())
    with pytest.raises(ValueError, match="val_fraction"):
        linear_probe(x, y, x, y, val_fraction=1.5)
    one_each = torch.arange(4)
    with pytest.raises(ValueError, match="validation"):
        linear_probe(x[:4], one_each, x, y)


def test_sample_k_per_class_exact_and_seeded():
    labels = torch.tensor([0] * 10 + [1] * 7 + [2] * 5)
    idx = sample_k_per_class(labels, 3, seed=0)
    assert torch.bincount(labels[idx]).tolist() == [3, 3, 3]
    assert idx.unique().numel() == idx.numel()
    assert torch.equal(idx, sample_k_per_class(labels, 3, seed=0))
    draws = {tuple(sample_k_per_class(labels, 3, seed=s).tolist()) for s in range(5)}
    assert len(draws) > 1  # the seed changes the draw
    with pytest.raises(ValueError, match="class 2 has only 5"):
        sample_k_per_class(labels, 6)
    with pytest.raises(ValueError, match="positive"):
        sample_k_per_class(labels, 0)


def test_few_shot_probe():
    x, y, _ = _clusters(30, seed=2)
    result = few_shot_probe(x, y, 5, seed=4, l2_grid=(1e-3, 1e-1))
    chosen = result["indices"]
    assert torch.bincount(y[chosen]).tolist() == [5, 5, 5, 5]
    assert result["k"] == 5
    assert result["accuracy"] >= 0.9  # well-separated clusters are learnable from 5 shots
    again = few_shot_probe(x, y, 5, seed=4, l2_grid=(1e-3, 1e-1))
    assert torch.equal(again["indices"], chosen) and again["accuracy"] == result["accuracy"]
    one = few_shot_probe(x, y, 1, seed=0, l2_grid=(1e-2,))
    assert torch.bincount(y[one["indices"]]).tolist() == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="1-shot"):
        few_shot_probe(x, y, 1)
    with pytest.raises(ValueError, match="together"):
        few_shot_probe(x, y, 2, test_features=x)


# ----------------------------------------------------------------------------- feature extraction


class _Tower(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 2, bias=False)
        self.drop = nn.Dropout(0.9)  # would scramble the features if eval() were not set
        self.calls = 0

    def encode_image(self, images):
        self.calls += 1
        return self.drop(self.proj(images.mean(dim=(2, 3))))


def test_extract_features_batches_eval_and_restores_mode():
    tower = _Tower()
    tower.train()
    images = torch.randn(10, 3, 4, 4)
    features = extract_features(tower, images, batch_size=4)
    assert features.shape == (10, 2)
    assert tower.calls == 3
    assert tower.training  # restored
    assert not features.requires_grad
    expected = tower.proj(images.mean(dim=(2, 3))).detach()
    torch.testing.assert_close(features, expected)
    normalized = extract_features(tower, images, normalize=True)
    torch.testing.assert_close(normalized.norm(dim=1), torch.ones(10))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, torch.zeros(10)), batch_size=3)
    torch.testing.assert_close(extract_features(tower, loader), expected)


def test_extract_features_bad_inputs():
    tower = _Tower()
    with pytest.raises(ValueError, match=r"\[N, 3, R, R\]"):
        extract_features(tower, torch.randn(3, 4, 4))
    with pytest.raises(ValueError, match="batch_size"):
        extract_features(tower, torch.randn(2, 3, 4, 4), batch_size=0)


def test_extract_features_of_a_real_tower():
    from clipmini.model import create_model

    torch.manual_seed(0)
    model = create_model("tiny-vit")
    images = torch.randn(5, 3, 32, 32)
    features = extract_features(model, images, batch_size=2)
    assert features.shape == (5, model.embed_dim)
    with torch.no_grad():
        torch.testing.assert_close(features, model.encode_image(images), rtol=1e-5, atol=1e-5)
    assert not math.isnan(features.sum().item())
