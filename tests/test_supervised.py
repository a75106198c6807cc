"""The supervised baseline learns fixed labels, deterministically, and predicts them back."""

import pytest
import torch
from torch import nn

from clipmini.config import CLIPConfig, TextConfig, VisionConfig
from clipmini.supervised import SupervisedConfig, SupervisedClassifier, supervised_baseline, train_supervised

PALETTE = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])  # [C, 3]


def _flat_color_images(n: int, seed: int, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat images of one of four colours (plus a little noise); the label is the colour."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(PALETTE), (n,), generator=gen)
    images = PALETTE[labels][:, :, None, None].expand(n, 3, size, size)  # [N, 3, S, S]
    images = images + 0.1 * torch.randn(n, 3, size, size, generator=gen)
    return (images - 0.5) / 0.5, labels


class TinyConv(nn.Module):
    """A two-layer conv encoder: images [B, 3, S, S] -> features [B, 16]."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )

    def forward(self, images):
        return self.net(images)


def _encoder(seed: int = 0) -> TinyConv:
    torch.manual_seed(seed)
    return TinyConv()


def test_learns_flat_colors():
    images, labels = _flat_color_images(256, seed=0)
    test_images, test_labels = _flat_color_images(128, seed=1)
    config = SupervisedConfig(steps=60, batch_size=32, lr=1e-2, warmup_steps=5, seed=0)
    untrained = SupervisedClassifier(_encoder(), 16, 4)
    assert untrained.accuracy(test_images, test_labels) < 0.6  # the task is not solved before training
    classifier, history = train_supervised(_encoder(), images, labels, config=config)
    assert isinstance(classifier, SupervisedClassifier)
    assert classifier.accuracy(test_images, test_labels) >= 0.95
    assert len(history["loss"]) == 60
    assert sum(history["loss"][-5:]) / 5 < 0.5 * sum(history["loss"][:5]) / 5
    assert history["lr"][4] == pytest.approx(1e-2)  # end of warmup = peak
    assert history["lr"][-1] < 1e-3  # cosine decays toward zero
    predictions = classifier.predict(test_images)
    assert predictions.shape == (128,) and predictions.dtype == torch.long
    assert not classifier.training


def test_deterministic_by_seed():
    images, labels = _flat_color_images(64, seed=0)
    config = SupervisedConfig(steps=8, batch_size=16, seed=3)
    a, hist_a = train_supervised(_encoder(0), images, labels, config=config)
    b, hist_b = train_supervised(_encoder(0), images, labels, config=config)
    assert hist_a["loss"] == hist_b["loss"]
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    _, hist_c = train_supervised(_encoder(0), images, labels, config=SupervisedConfig(steps=8, batch_size=16, seed=4))
    assert hist_c["loss"] != hist_a["loss"]


def test_training_leaves_the_callers_rng_alone():
    images, labels = _flat_color_images(32, seed=0)
    encoder = _encoder(0)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_supervised(encoder, images, labels, config=SupervisedConfig(steps=2, batch_size=8))
    assert torch.equal(torch.rand(3), expected)


def test_frozen_encoder_trains_the_head_only():
    images, labels = _flat_color_images(64, seed=0)
    encoder = _encoder()
    frozen = {k: v.clone() for k, v in encoder.state_dict().items()}
    classifier, _ = train_supervised(
        encoder, images, labels, config=SupervisedConfig(steps=5, train_encoder=False, seed=0)
    )
    for k, v in classifier.encoder.state_dict().items():
        assert torch.equal(v, frozen[k]), k
    torch.manual_seed(0)  # the head is initialized from the config's seed
    initial_head = nn.Linear(16, 4)
    assert not torch.equal(classifier.head.weight, initial_head.weight)


def test_clip_tower_baseline():
    config = CLIPConfig(
        embed_dim=16,
        vision=VisionConfig(image_size=8, layers=1, width=32, patch_size=4, head_width=16),
        text=TextConfig(context_length=8, vocab_size=64, width=32, layers=1, head_width=16),
    )
    images, labels = _flat_color_images(128, seed=0, size=8)
    classifier, history = supervised_baseline(
        config, images, labels, config=SupervisedConfig(steps=40, batch_size=32, lr=3e-3, seed=0)
    )
    assert classifier.head.in_features == 16
    assert classifier.accuracy(images, labels) >= 0.9
    with pytest.raises(ValueError, match=r"\[N, 3, 8, 8\]"):
        supervised_baseline(config, torch.randn(4, 3, 16, 16), torch.zeros(4, dtype=torch.long))


def test_bad_inputs():
    images, labels = _flat_color_images(8, seed=0)
    with pytest.raises(ValueError, match=r"\[N=8\]"):
        train_supervised(_encoder(), images, labels[:4])
    with pytest.raises(TypeError, match="integer"):
        train_supervised(_encoder(), images, labels.float())
    with pytest.raises(ValueError, match="num_classes"):
        train_supervised(_encoder(), images, labels, num_classes=2)
    with pytest.raises(ValueError, match=r"\[N, 3, R, R\]"):
        train_supervised(_encoder(), images[0], labels)
    with pytest.raises(ValueError, match="steps"):
        SupervisedConfig(steps=0)
