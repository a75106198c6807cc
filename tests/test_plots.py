"""Every figure function returns a Figure with the expected axes and artists (Agg backend, no display)."""

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.image import AxesImage  # noqa: E402

from clipmini.plots import (  # noqa: E402
    pca_2d,
    plot_accuracy_vs_samples,
    plot_embedding_map,
    plot_similarity_matrix,
    plot_training_curves,
)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _trainer_history():
    """Records shaped like clipmini.train's history: step logs, plus evaluation records without samples."""
    history = []
    for step in range(1, 11):
        history.append({"step": step, "loss": 4.0 - 0.3 * step, "tau": 0.07 - 0.004 * step, "samples_seen": 32 * step})
        if step % 5 == 0:
            history.append({"step": step, "eval": {"shapes": {"top1": 0.1 * step}, "colors": {"top1": 0.05 * step}}})
    return history


def test_training_curves_from_trainer_records():
    fig = plot_training_curves(_trainer_history())
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3
    ax_loss, ax_tau, ax_zs = fig.axes
    (loss_line,) = ax_loss.get_lines()
    assert list(loss_line.get_xdata()) == [32.0 * s for s in range(1, 11)]
    tau_lines = ax_tau.get_lines()
    assert len(tau_lines) == 2  # tau and the clamp line
    assert tau_lines[0].get_ydata()[0] == pytest.approx(0.066)
    zs_lines = ax_zs.get_lines()
    assert sorted(line.get_label() for line in zs_lines) == ["colors", "shapes"]
    shapes = next(line for line in zs_lines if line.get_label() == "shapes")
    # The evaluation records carry only the step; x is recovered as step * 32 samples per step.
    assert list(shapes.get_xdata()) == [160.0, 320.0]
    assert list(shapes.get_ydata()) == pytest.approx([0.5, 1.0])
    assert tuple(fig.get_size_inches()) == (12, 3.5)


def test_training_curves_from_a_dict_with_logit_scale():
    history = {"step": [1, 2, 3], "loss": [3.0, 2.0, 1.0], "logit_scale": [math.log(1 / 0.07)] * 3}
    fig = plot_training_curves(history)
    ax_loss, ax_tau, ax_zs = fig.axes
    assert ax_tau.get_lines()[0].get_ydata()[0] == pytest.approx(0.07)  # tau = exp(-logit_scale)
    assert not ax_zs.get_lines()  # no zero-shot record: an empty panel with a note
    assert any("not recorded" in t.get_text() for t in ax_zs.texts)


def test_training_curves_bad_inputs():
    with pytest.raises(ValueError, match="x axis"):
        plot_training_curves([{"loss": 1.0}])
    with pytest.raises(ValueError, match="entries"):
        plot_training_curves({"step": [1, 2], "loss": [1.0]})
    with pytest.raises(ValueError, match="non-empty"):
        plot_training_curves([])


def test_accuracy_vs_samples():
    curves = {"contrastive": ([1e3, 1e4, 1e5], [0.2, 0.4, 0.6]), "bag of words": ([1e3, 1e4, 1e5], [0.1, 0.2, 0.3])}
    fig = plot_accuracy_vs_samples(curves)
    (ax,) = fig.axes
    assert [line.get_label() for line in ax.get_lines()] == ["contrastive", "bag of words"]
    assert ax.get_xscale() == "log"
    with pytest.raises(ValueError, match="log axis"):
        plot_accuracy_vs_samples({"a": ([0, 1], [0.1, 0.2])})
    with pytest.raises(ValueError, match="2 sample counts but 3"):
        plot_accuracy_vs_samples({"a": ([1, 2], [0.1, 0.2, 0.3])}, logx=False)


def test_similarity_matrix_shows_the_cosines():
    image_features = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    text_features = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    fig = plot_similarity_matrix(image_features, text_features, captions=["a cat", "a dog"])
    assert len(fig.axes) == 2  # the matrix and its colorbar
    ax = fig.axes[0]
    (image,) = [a for a in ax.get_children() if isinstance(a, AxesImage)]
    data = image.get_array()
    assert data.shape == (2, 3)  # a row per caption, a column per image
    expected = torch.tensor([[1.0, 0.0, 1 / math.sqrt(2)], [0.0, 1.0, 1 / math.sqrt(2)]])
    torch.testing.assert_close(torch.tensor(data.data, dtype=torch.float32), expected)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a cat", "a dog"]
    assert len(ax.texts) == 6  # annotated cells
    with pytest.raises(ValueError, match="3 captions for 2"):
        plot_similarity_matrix(image_features, text_features, captions=["a", "b", "c"])


def test_pca_2d_recovers_the_main_axis():
    gen = torch.Generator().manual_seed(0)
    t = torch.randn(200, generator=gen)
    direction = torch.tensor([3.0, 4.0, 0.0]) / 5
    features = t[:, None] * 10 * direction + 0.1 * torch.randn(200, 3, generator=gen)
    coords, explained = pca_2d(features)
    assert coords.shape == (200, 2)
    assert explained[0] > 0.99
    # The first coordinate is the projection on the main axis (up to the fixed sign).
    centered = features - features.mean(0)
    torch.testing.assert_close(coords[:, 0].abs(), (centered @ direction).abs(), atol=0.05, rtol=0.02)


def test_embedding_map_one_scatter_per_class():
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(30, 8, generator=gen)
    labels = torch.arange(3).repeat(10)
    fig = plot_embedding_map(features, labels, classnames=["red", "green", "blue"])
    (ax,) = fig.axes
    scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(scatters) == 3
    assert sorted(len(s.get_offsets()) for s in scatters) == [10, 10, 10]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["red", "green", "blue"]
    with pytest.raises(ValueError, match="pca"):
        plot_embedding_map(features, labels, method="tsne")
    with pytest.raises(ValueError, match=r"labels must be \[N=30\]"):
        plot_embedding_map(features, labels[:5])
