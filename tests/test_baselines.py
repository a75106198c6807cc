"""Figure 2's baselines on a tiny image tower: they train, they classify zero-shot, the LM's likelihood is right."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clipmini.baselines import BagOfWords, CaptionLM, bag_of_words

pytestmark = pytest.mark.usefixtures("one_thread")


VOCAB = 40
SOT, EOT = VOCAB - 2, VOCAB - 1  # our tokenizer's layout: the two special ids last, EOT the largest
CONTEXT = 10


def tiny_tower() -> nn.Module:
    return nn.Sequential(  # [B, 3, 16, 16] -> [B, 12]
        nn.Conv2d(3, 8, 3, stride=2, padding=1),  # [B, 8, 8, 8]
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),  # [B, 8, 1, 1]
        nn.Flatten(),  # [B, 8]
        nn.Linear(8, 12),  # [B, 12]
    )


def captions(*word_lists) -> torch.Tensor:
    """Token rows as the tokenizer writes them: SOT, words, EOT, zero padding."""
    rows = torch.zeros(len(word_lists), CONTEXT, dtype=torch.long)
    for i, words in enumerate(word_lists):
        ids = [SOT, *words, EOT]
        rows[i, : len(ids)] = torch.tensor(ids)
    return rows


@pytest.fixture
def batch():
    torch.manual_seed(0)
    images = torch.randn(4, 3, 16, 16)
    tokens = captions([3, 7, 9], [0, 12, 5, 5, 21], [30], [8, 8, 2, 17, 33, 4])
    return images, tokens


def make_lm():
    torch.manual_seed(1)
    return CaptionLM(tiny_tower(), VOCAB, CONTEXT, width=32, layers=2, heads=4, image_dim=12)


def make_bow():
    torch.manual_seed(1)
    return BagOfWords(tiny_tower(), VOCAB, image_dim=12)


@pytest.mark.parametrize("make", [make_lm, make_bow], ids=["caption_lm", "bag_of_words"])
def test_trains_on_a_fixed_batch(make, batch):
    images, tokens = batch
    model = make()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss = model.loss(images, tokens)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.7 * losses[0], losses


def test_bag_of_words_target():
    tokens = captions([5, 7, 5], [0, 3])  # a repeated word counts once; id 0 inside a caption is a word
    bag = bag_of_words(tokens, VOCAB)
    expected = torch.zeros(2, VOCAB)
    expected[0, [5, 7]] = 0.5
    expected[1, [0, 3]] = 0.5
    torch.testing.assert_close(bag, expected)


def test_lm_log_likelihood_is_the_sum_of_next_token_log_probs(batch):
    images, tokens = batch
    model = make_lm().eval()
    ll = model.log_likelihood(images, tokens)  # [B]
    assert ll.shape == (4,)
    for b in range(4):
        eot = int((tokens[b] == EOT).nonzero()[0])
        by_hand = 0.0
        for t in range(1, eot + 1):  # every token after SOT up to and including EOT
            logits = model(images[b : b + 1], tokens[b : b + 1, :t])[0, -1]  # [V]: the prefix tok_0..tok_{t-1} alone
            by_hand += torch.log_softmax(logits, dim=-1)[tokens[b, t]].item()
        assert ll[b].item() == pytest.approx(by_hand, abs=1e-4)


def test_padding_after_eot_does_not_change_the_likelihood(batch):
    images, tokens = batch
    model = make_lm().eval()
    ll = model.log_likelihood(images, tokens)
    scrambled = tokens.clone()
    after_eot = torch.arange(CONTEXT)[None, :] > (tokens == EOT).float().argmax(dim=1, keepdim=True)
    scrambled[after_eot] = torch.randint(1, SOT, (int(after_eot.sum()),))  # garbage instead of zeros
    torch.testing.assert_close(model.log_likelihood(images, scrambled), ll, rtol=1e-5, atol=1e-5)
    # a short caption scores the same alone as next to a long one
    alone = model.log_likelihood(images[2:3], tokens[2:3])
    torch.testing.assert_close(alone, ll[2:3], rtol=1e-5, atol=1e-5)
    # ...while changing a word does change it (so the checks above can fail)
    changed = tokens.clone()
    changed[0, 2] = 11
    assert abs(model.log_likelihood(images, changed)[0].item() - ll[0].item()) > 1e-3


def test_lm_zero_shot(batch):
    images, _ = batch
    model = make_lm().eval()
    classes = captions([3, 7], [12, 5, 5, 21], [30, 31, 32])  # [C=3, L]
    logits = model.zeroshot_logits(images, classes, batch_size=5)  # batches cut across images
    assert logits.shape == (4, 3) and torch.isfinite(logits).all()
    pred = logits.argmax(dim=1)
    assert ((0 <= pred) & (pred < 3)).all()
    for c in range(3):  # entry [b, c] is the log-likelihood of prompt c given image b
        torch.testing.assert_close(logits[:, c], model.log_likelihood(images, classes[c].expand(4, -1)), rtol=1e-5, atol=1e-5)
    templates = torch.stack([classes, captions([1, 3, 7], [1, 12, 5, 5, 21], [1, 30, 31, 32])], dim=1)  # [C, T=2, L]
    averaged = model.zeroshot_logits(images, templates)
    torch.testing.assert_close(averaged, (logits + model.zeroshot_logits(images, templates[:, 1])) / 2, rtol=1e-5, atol=1e-5)


def test_bag_of_words_zero_shot(batch):
    images, _ = batch
    model = make_bow().eval()
    classes = captions([3, 7], [12, 5, 5, 21], [30])
    logits = model.zeroshot_logits(images, classes)
    assert logits.shape == (4, 3) and torch.isfinite(logits).all()
    assert ((0 <= logits.argmax(1)) & (logits.argmax(1) < 3)).all()
    with torch.no_grad():
        logp = model(images)  # [B, V]
    by_hand = torch.stack([logp[:, [3, 7]].mean(1), logp[:, [12, 5, 21]].mean(1), logp[:, 30]], dim=1)
    torch.testing.assert_close(logits, by_hand)
    with pytest.raises(ValueError, match="no words"):
        model.zeroshot_logits(images, captions([]))


def test_bad_tokens_and_towers_raise():
    model = make_lm()
    images = torch.randn(1, 3, 16, 16)
    with pytest.raises(ValueError, match="no EOT"):
        model.log_likelihood(images, torch.zeros(1, CONTEXT, dtype=torch.long))
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 40\)"):
        model.loss(images, captions([3]) + 100)
    with pytest.raises(TypeError, match="LongTensor"):
        model.loss(images, captions([3]).float())
    with pytest.raises(ValueError, match="pass image_dim"):
        BagOfWords(tiny_tower(), VOCAB)
    with pytest.raises(ValueError, match=r"\[C, L\] or \[C, T, L\]"):
        make_bow().zeroshot_logits(images, captions([3])[0])
