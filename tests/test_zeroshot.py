"""Zero-shot classifiers built from hand-chosen text embeddings, with known predictions and accuracies."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import clipmini.prompts as prompts
from clipmini.zeroshot import (
    BARE_TEMPLATE,
    CIFAR_TEMPLATES,
    IMAGENET_TEMPLATES,
    IMAGENET_TEMPLATES_7,
    PrototypeCache,
    accuracy,
    build_classifier,
    candidate_logits,
    classifier_from_prompts,
    evaluate,
    evaluate_zeroshot,
    per_class_accuracy,
    predict,
)


class FakeTokenizer:
    """Maps each distinct text to one id (ids in order of first appearance); records every call."""

    def __init__(self):
        self.ids: dict[str, int] = {}
        self.calls: list[list[str]] = []

    def __call__(self, texts):
        self.calls.append(list(texts))
        ids = [self.ids.setdefault(t, len(self.ids)) for t in texts]
        return torch.tensor(ids)[:, None]  # [B, 1]


class FakeModel(nn.Module):
    """encode_text looks each text's embedding up by its token; encode_image flattens [B, E, 1, 1] images."""

    def __init__(self, tokenizer: FakeTokenizer, embeddings: dict[str, list[float]]):
        super().__init__()
        for text in embeddings:
            tokenizer([text])
        table = torch.tensor([embeddings[t] for t in sorted(embeddings, key=tokenizer.ids.get)])
        self.table = nn.Parameter(table)  # [V, E]
        self.text_calls = 0
        self.image_calls = 0

    def encode_text(self, tokens):
        self.text_calls += 1
        return self.table[tokens[:, 0]]  # [B, E]

    def encode_image(self, images):
        self.image_calls += 1
        return images.flatten(1)  # [B, E]


def _two_class_model():
    tok = FakeTokenizer()
    model = FakeModel(
        tok,
        {
            "a cat.": [3.0, 4.0, 0.0],  # norm 5  -> [0.6, 0.8, 0]
            "the cat!": [0.0, 0.0, 2.0],  # norm 2 -> [0, 0, 1]
            "a dog.": [0.0, -1.0, 0.0],
            "the dog!": [0.0, -10.0, 0.0],
        },
    )
    tok.calls.clear()
    return model, tok


def test_classifier_columns_are_normalized_means_of_normalized_embeddings():
    model, tok = _two_class_model()
    W = build_classifier(model, tok, ["cat", "dog"], ["a {}.", "the {}!"])
    assert W.shape == (3, 2)
    # cat: mean([0.6, 0.8, 0], [0, 0, 1]) = [0.3, 0.4, 0.5], norm sqrt(0.5).
    s = math.sqrt(0.5)
    torch.testing.assert_close(W[:, 0], torch.tensor([0.3 / s, 0.4 / s, 0.5 / s]))
    # Averaging raw embeddings would give [1.5, 2, 1] / norm, a different direction.
    assert not torch.allclose(W[:, 0], torch.tensor([1.5, 2.0, 1.0]) / math.sqrt(7.25), atol=1e-3)
    torch.testing.assert_close(W[:, 1], torch.tensor([0.0, -1.0, 0.0]))
    assert sorted(sum(tok.calls, [])) == sorted(["a cat.", "the cat!", "a dog.", "the dog!"])


def test_build_classifier_batches_and_restores_training_mode():
    model, tok = _two_class_model()
    model.train()
    W1 = build_classifier(model, tok, ["cat", "dog"], ["a {}.", "the {}!"], batch_size=3)
    assert model.text_calls == 2  # 4 texts in batches of 3
    assert model.training
    assert not W1.requires_grad
    W2 = build_classifier(model, tok, ["cat", "dog"], ["a {}.", "the {}!"])
    torch.testing.assert_close(W1, W2)


def test_bare_template_encodes_the_class_names_alone():
    tok = FakeTokenizer()
    model = FakeModel(tok, {"cat": [1.0, 0.0], "dog": [0.0, 2.0]})
    tok.calls.clear()
    W = build_classifier(model, tok, ["cat", "dog"], BARE_TEMPLATE)
    assert tok.calls == [["cat", "dog"]]
    torch.testing.assert_close(W, torch.eye(2))


def test_callable_templates():
    tok = FakeTokenizer()
    model = FakeModel(tok, {"CAT": [1.0, 0.0], "DOG": [0.0, 2.0]})
    W = build_classifier(model, tok, ["cat", "dog"], [str.upper])
    torch.testing.assert_close(W, torch.eye(2))


def test_context_length_is_passed_when_the_tokenizer_takes_it():
    seen = []

    def tokenizer(texts, context_length=77):
        seen.append(context_length)
        return torch.zeros(len(texts), 1, dtype=torch.long)

    model = FakeModel(FakeTokenizer(), {"x": [1.0, 0.0]})
    model.config = SimpleNamespace(text=SimpleNamespace(context_length=9))
    build_classifier(model, tokenizer, ["a"], ["{}"])
    assert seen == [9]
    build_classifier(model, tokenizer, ["a"], ["{}"], context_length=5)
    assert seen == [9, 5]


# ----------------------------------------------------------------------------- predictions and accuracy

# Six classes whose prototypes are the standard basis of R^6, and images whose scores rank the classes in
# a known order: image i scores class (i + j) % 6 with 6 - j.
W6 = torch.eye(6)


def _ranked_images(true_rank: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [N, 6] and labels [N] where image i's label is ranked `true_rank[i]` (0 = top)."""
    images, labels = [], []
    for i, rank in enumerate(true_rank):
        top = i % 6
        scores = torch.zeros(6)
        for j in range(6):
            scores[(top + j) % 6] = 6.0 - j
        images.append(scores)
        labels.append((top + rank) % 6)
    return torch.stack(images), torch.tensor(labels)


def test_predict_scales_normalized_cosines_by_100():
    features = torch.tensor([[3.0, 4.0, 0, 0, 0, 0]])
    logits = predict(features, W6)
    torch.testing.assert_close(logits, torch.tensor([[60.0, 80.0, 0, 0, 0, 0]]))


def test_known_top1_top5():
    features, labels = _ranked_images([0, 0, 1, 4, 5, 2, 0, 5])
    logits = predict(features, W6)
    acc = accuracy(logits, labels, topk=(1, 2, 5))
    assert acc["top1"] == pytest.approx(3 / 8)
    assert acc["top2"] == pytest.approx(4 / 8)
    assert acc["top5"] == pytest.approx(6 / 8)
    # k above the number of classes is clamped: every label is in the top 6 of 6.
    assert accuracy(logits, labels, topk=(10,))["top10"] == 1.0


def test_per_class_accuracy():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0], [0.0, 2.0, 1.0], [2.0, 0.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 0])
    per_class = per_class_accuracy(logits, labels)
    # class 0: rows 0, 1, 3 -> right, wrong, right; class 1: row 2 right; class 2: no examples.
    assert per_class[0].item() == pytest.approx(2 / 3)
    assert per_class[1].item() == 1.0
    assert math.isnan(per_class[2].item())


def test_evaluate_tensor_and_loader_agree():
    features, labels = _ranked_images([0, 1, 0, 3, 0, 6 - 1, 2, 0, 0, 1])
    images = features[:, :, None, None]  # [N, 6, 1, 1]: the fake image tower flattens them back
    model, _ = _two_class_model()
    model.train()
    result = evaluate(model, images, labels, W6, batch_size=4)
    assert model.image_calls == 3 and model.training
    assert result["top1"] == pytest.approx(5 / 10)
    assert result["top5"] == pytest.approx(9 / 10)
    assert result["n"] == 10
    expected = per_class_accuracy(predict(features, W6), labels)
    torch.testing.assert_close(result["per_class"], expected, equal_nan=True)
    finite = expected[~torch.isnan(expected)]
    assert result["mean_per_class"] == pytest.approx(finite.mean().item())
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=3)
    from_loader = evaluate(model, loader, None, W6)
    assert from_loader["top1"] == result["top1"] and from_loader["top5"] == result["top5"]


def test_bad_inputs_raise_clear_errors():
    model, tok = _two_class_model()
    with pytest.raises(ValueError, match="no '\\{\\}' slot"):
        build_classifier(model, tok, ["cat"], ["a photo"])
    with pytest.raises(TypeError, match="wrap a single template"):
        build_classifier(model, tok, ["cat"], "a {}.")
    with pytest.raises(ValueError, match="classnames is empty"):
        build_classifier(model, tok, [], ["{}"])
    with pytest.raises(ValueError, match="transpose"):
        predict(torch.randn(2, 6), torch.randn(3, 6))
    with pytest.raises(ValueError, match=r"\[B, E\]"):
        predict(torch.randn(6), W6)
    with pytest.raises(ValueError, match=r"labels must be \[N=2\]"):
        accuracy(torch.randn(2, 6), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"\[0, C=6\)"):
        accuracy(torch.randn(2, 6), torch.tensor([0, 6]))
    with pytest.raises(ValueError, match="disagree on N"):
        evaluate(model, torch.randn(3, 6, 1, 1), torch.tensor([0, 1]), W6)
    with pytest.raises(ValueError, match="needs labels"):
        evaluate(model, [torch.randn(3, 6, 1, 1)], None, W6)


# ----------------------------------------------------------------------------- the prototype cache


def test_cache_encodes_once_per_key():
    model, tok = _two_class_model()
    cache = PrototypeCache(model, tok)
    W1 = cache(["cat", "dog"], ["a {}.", "the {}!"])
    calls = model.text_calls
    assert cache.builds == 1
    W2 = cache(("cat", "dog"), ("a {}.", "the {}!"))  # the same key as tuples
    assert W2 is W1
    assert model.text_calls == calls and cache.builds == 1
    W3 = cache(["cat", "dog"], ["a {}."])
    assert cache.builds == 2 and len(cache) == 2
    assert not torch.equal(W3, W1)
    torch.testing.assert_close(W1, build_classifier(model, tok, ["cat", "dog"], ["a {}.", "the {}!"]))


def test_cache_rebuilds_after_the_weights_change():
    model, tok = _two_class_model()
    cache = PrototypeCache(model, tok)
    W1 = cache(["cat", "dog"], ["a {}."])
    with torch.no_grad():
        model.table[0] = torch.tensor([0.0, 0.0, 1.0])  # "a cat." now points along z
    W2 = cache(["cat", "dog"], ["a {}."])
    assert cache.builds == 2
    torch.testing.assert_close(W2[:, 0], torch.tensor([0.0, 0.0, 1.0]))
    assert not torch.equal(W1, W2)


def test_evaluate_zeroshot_on_a_task():
    model, tok = _two_class_model()
    # Images along the cat and dog prototypes, labelled correctly except the last.
    cat = torch.tensor([0.3, 0.4, 0.5])
    dog = torch.tensor([0.0, -1.0, 0.0])
    images = torch.stack([cat, dog, cat, cat])[:, :, None, None]
    task = SimpleNamespace(
        images=images, labels=torch.tensor([0, 1, 0, 1]), classnames=["cat", "dog"], templates=["a {}.", "the {}!"]
    )
    cache = PrototypeCache(model, tok)
    result = evaluate_zeroshot(model, tok, task, cache=cache)
    assert set(result) >= {"top1", "per_class", "n"} and "top5" not in result  # 2 classes: top-1 only
    assert result["top1"] == pytest.approx(3 / 4)
    evaluate_zeroshot(model, tok, task, cache=cache)
    assert cache.builds == 1
    with pytest.raises(TypeError, match="lacks"):
        evaluate_zeroshot(model, tok, SimpleNamespace(images=images))


def test_classifier_from_ragged_prompts():
    model, tok = _two_class_model()
    W = classifier_from_prompts(model, tok, [["a cat.", "the cat!"], ["the dog!"]])
    s = math.sqrt(0.5)
    torch.testing.assert_close(W[:, 0], torch.tensor([0.3 / s, 0.4 / s, 0.5 / s]))
    torch.testing.assert_close(W[:, 1], torch.tensor([0.0, -1.0, 0.0]))
    cache = PrototypeCache(model, tok)
    assert cache.from_prompts([["a cat.", "the cat!"], ["the dog!"]]) is cache.from_prompts((("a cat.", "the cat!"), ("the dog!",)))
    assert cache.builds == 1
    with pytest.raises(TypeError, match=r"prompts\[1\]"):
        classifier_from_prompts(model, tok, [["a cat."], "the dog!"])


def test_candidate_logits_score_each_image_against_its_own_captions():
    tok = FakeTokenizer()
    model = FakeModel(tok, {"one red": [1.0, 0.0], "two red": [0.0, 1.0], "one blue": [0.6, 0.8], "two blue": [0.8, -0.6]})
    tok.calls.clear()
    image_features = torch.tensor([[0.0, 2.0], [1.0, -1.0]])
    candidates = [["one red", "two red"], ["one blue", "two blue"]]
    logits = candidate_logits(model, tok, image_features, candidates)
    s = 1 / math.sqrt(2)
    expected = 100 * torch.tensor([[0.0, 1.0], [(0.6 - 0.8) * s, (0.8 + 0.6) * s]])
    torch.testing.assert_close(logits, expected)
    assert sorted(sum(tok.calls, [])) == sorted(["one red", "two red", "one blue", "two blue"])
    with pytest.raises(ValueError, match="2 candidate lists for 3 images"):
        candidate_logits(model, tok, torch.randn(3, 2), candidates)


def test_evaluate_zeroshot_prefers_candidates_then_task_prompts():
    tok = FakeTokenizer()
    model = FakeModel(
        tok, {"an apple.": [1.0, 0.0], "a pear.": [0.0, 1.0], "one apple": [1.0, 0.0], "two apples": [0.0, 1.0]}
    )

    class PromptTask(SimpleNamespace):
        def prompts(self):  # grammar-fixed prompts, as clipmini.data's Task makes them
            return [[fix(t.format(c)) for t in self.templates] for c in self.classnames]

    def fix(text):
        return text.replace("a apple", "an apple")

    images = torch.tensor([[1.0, 0.1], [0.1, 1.0], [1.0, 0.0]])[:, :, None, None]
    task = PromptTask(images=images, labels=torch.tensor([0, 1, 1]), classnames=("apple", "pear"), templates=("a {}.",))
    result = evaluate_zeroshot(model, tok, task)
    assert result["top1"] == pytest.approx(2 / 3)
    assert "an apple." in tok.ids and "a apple." not in tok.ids  # the task's own prompts were encoded
    counting = SimpleNamespace(
        images=images, labels=torch.tensor([0, 1, 0]), classnames=("one", "two"), templates=("{}",),
        candidates=[["one apple", "two apples"]] * 3,
    )
    assert evaluate_zeroshot(model, tok, counting)["top1"] == pytest.approx(1.0)


def test_evaluate_zeroshot_on_a_caption_world_task():
    from clipmini.data import CaptionWorld, WorldConfig
    from clipmini.model import create_model

    world = CaptionWorld(WorldConfig(image_size=32))
    torch.manual_seed(0)
    model = create_model("tiny-vit")

    def tok(texts, context_length=32):
        """Characters as ids inside tiny-vit's 1,024-id vocabulary: SOT 1022, EOT 1023, padding 0."""
        rows = []
        for text in texts:
            ids = [1022] + [ord(ch) % 1000 + 1 for ch in text[: context_length - 2]] + [1023]
            rows.append(ids + [0] * (context_length - len(ids)))
        return torch.tensor(rows)

    shape = world.task("shape", n=20, seed=0)
    result = evaluate_zeroshot(model, tok, shape)
    assert result["n"] == 20 and set(result) >= {"top1", "top5", "per_class"}
    with torch.no_grad():
        image_features = model.encode_image(shape.images)
    W = classifier_from_prompts(model, tok, shape.prompts())
    assert W.shape == (model.embed_dim, len(shape.classnames))
    assert result["top1"] == pytest.approx(accuracy(predict(image_features, W), shape.labels, (1,))["top1"])

    count = world.task("count", n=20, seed=0)
    result = evaluate_zeroshot(model, tok, count)
    with torch.no_grad():
        image_features = model.encode_image(count.images)
    logits = candidate_logits(model, tok, image_features, count.candidates)
    assert result["top1"] == pytest.approx(accuracy(logits, count.labels, (1,))["top1"])
    assert result["per_class"].shape == (len(count.classnames),)


# ----------------------------------------------------------------------------- templates and a real model


def test_templates_are_reexported_from_prompts():
    assert IMAGENET_TEMPLATES is prompts.IMAGENET_TEMPLATES
    assert IMAGENET_TEMPLATES_7 is prompts.IMAGENET_TEMPLATES_7
    assert CIFAR_TEMPLATES is prompts.CIFAR_TEMPLATES
    assert (len(IMAGENET_TEMPLATES), len(IMAGENET_TEMPLATES_7), len(CIFAR_TEMPLATES)) == (80, 7, 18)


def test_real_tiny_clip_with_the_openai_tokenizer():
    from clipmini.model import create_model
    from clipmini.tokenizer import tokenize

    torch.manual_seed(0)
    model = create_model("tiny-vit")
    classnames = list(prompts.CIFAR10_CLASSNAMES[:4])
    # tiny-vit has a 1,024-id vocabulary; map OpenAI ids into it so the real tokenizer can drive it.
    def small_vocab_tokenize(texts, context_length=77):
        tokens = tokenize(texts, context_length=context_length)
        return torch.where(tokens == 49407, 1023, tokens % 1023)

    W = build_classifier(model, small_vocab_tokenize, classnames, IMAGENET_TEMPLATES_7)
    assert W.shape == (model.embed_dim, 4)
    torch.testing.assert_close(W.norm(dim=0), torch.ones(4))
    images = torch.randn(6, 3, 32, 32)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    result = evaluate(model, images, labels, W, topk=(1,))
    with torch.no_grad():
        expected = accuracy(predict(model.encode_image(images), W), labels, topk=(1,))["top1"]
    assert result["top1"] == pytest.approx(expected)
