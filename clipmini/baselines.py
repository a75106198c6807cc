"""The two objectives CLIP beat in the paper's Figure 2, on the SAME image tower as the contrastive model.

* :class:`CaptionLM` predicts the caption word by word (a small causal transformer conditioned on the
  image), the "transformer language model" baseline.
* :class:`BagOfWords` predicts which words occur in the caption, ignoring their order.

Both take any image tower mapping images [B, 3, R, R] to features [B, D] (``clip_model.visual`` for
instance), so "pairs seen until zero-shot accuracy X" compares objectives, not encoders. Both read captions
as our tokenizer writes them: SOT, the words, EOT (always the largest id), then zero padding. Word
positions are found from EOT's position (``argmax``), so a 0 inside a caption is a real token, never a pad.
Both also classify zero-shot: each class prompt is scored by how likely the model finds its words.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def _image_dim(image_encoder: nn.Module, image_dim: Optional[int]) -> int:
    if not isinstance(image_encoder, nn.Module):
        raise TypeError(
            f"image_encoder must be an nn.Module mapping images to [B, D] features, got {type(image_encoder).__name__}"
        )
    if image_dim is None:
        image_dim = getattr(image_encoder, "output_dim", None)
    if not isinstance(image_dim, int) or image_dim < 1:
        raise ValueError(
            "cannot tell the image tower's feature size: pass image_dim=D (the D of its [B, D] output); "
            "clipmini towers expose it as .output_dim"
        )
    return image_dim


def _check_tokens(tokens: torch.Tensor, vocab_size: int, name: str = "tokens") -> torch.Tensor:
    """Validate a [B, L] batch of captions and return each row's EOT position [B]."""
    if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.long:
        got = getattr(tokens, "dtype", type(tokens).__name__)
        raise TypeError(f"{name} must be a LongTensor [B, L] from the tokenizer, got {got}")
    if tokens.dim() != 2 or tokens.shape[1] < 2:
        raise ValueError(f"{name} must be [B, L] with L >= 2 (SOT ... EOT); got shape {list(tokens.shape)}")
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= vocab_size):
        low, high = int(tokens.min()), int(tokens.max())
        raise ValueError(f"{name} ids must lie in [0, {vocab_size}); got ids from {low} to {high}")
    eot = tokens.argmax(dim=1)  # [B]; EOT is the largest id, argmax returns its first position
    if (eot == 0).any():
        row = int((eot == 0).nonzero()[0])
        raise ValueError(f"{name} row {row} has no EOT after its first position; is it a tokenized caption?")
    return eot


def bag_of_words(tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[B, L] captions -> [B, V] the normalized set of word ids (SOT, EOT and padding excluded)."""
    eot = _check_tokens(tokens, vocab_size)
    pos = torch.arange(tokens.shape[1], device=tokens.device)  # [L]
    is_word = (pos[None, :] >= 1) & (pos[None, :] < eot[:, None])  # [B, L]
    bag = torch.zeros(tokens.shape[0], vocab_size, device=tokens.device)  # [B, V]
    bag.scatter_reduce_(1, tokens, is_word.float(), reduce="amax")  # multi-hot: a word counts once
    return bag / bag.sum(dim=1, keepdim=True).clamp_min(1.0)  # [B, V]; an empty caption stays all zero


def _flatten_prompts(class_tokens: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """[C, L] or [C, T, L] (T templates per class) -> ([C·T, L], C, T)."""
    if not isinstance(class_tokens, torch.Tensor):
        raise TypeError(f"class_tokens must be a LongTensor [C, L] or [C, T, L], got {type(class_tokens).__name__}")
    if class_tokens.dim() == 2:
        return class_tokens, class_tokens.shape[0], 1
    if class_tokens.dim() == 3:
        C, T, L = class_tokens.shape
        return class_tokens.reshape(C * T, L), C, T
    raise ValueError(
        f"class_tokens must be [C, L] or [C, T, L] (T templates per class); got shape {list(class_tokens.shape)}"
    )


class CaptionLM(nn.Module):
    """Image-conditioned caption language model: the image feature becomes a prefix token of a causal decoder.

    Sequence fed to the decoder: [image, tok_0 = SOT, tok_1, ..., tok_{L-2}]; the output at position p
    predicts tok_p, and the causal mask keeps every prediction blind to later (and padding) tokens.
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        vocab_size: int,
        context_length: int = 77,  # the tokenizer's context length
        width: int = 256,  # decoder width; small, the point is the objective, not the decoder
        layers: int = 4,
        heads: int = 4,
        *,
        image_dim: Optional[int] = None,  # D of the tower's [B, D] output; default: image_encoder.output_dim
        dropout: float = 0.0,
    ):
        super().__init__()
        if width % heads:
            raise ValueError(f"width ({width}) must be divisible by heads ({heads})")
        self.visual = image_encoder
        self.vocab_size, self.context_length = vocab_size, context_length
        self.image_prefix = nn.Linear(_image_dim(image_encoder, image_dim), width)  # [B, D] -> [B, W]
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.randn(context_length, width) * 0.01)
        block = nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout=dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.ln_final = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab_size, bias=False)
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """[B, L, V] next-token logits: ``logits[:, p]`` scores tok_{p+1} given the image and tok_0..tok_p.

        ``tokens`` [B, L] are the tokens fed so far (L ≤ context_length − 1: the last token of a full
        caption is only ever a target, never an input).
        """
        return self._decode(self.image_prefix(self.visual(images)), tokens)

    def _decode(self, prefix: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.long or tokens.dim() != 2:
            got = f"{getattr(tokens, 'dtype', type(tokens).__name__)} {list(getattr(tokens, 'shape', []))}"
            raise TypeError(f"tokens must be a LongTensor [B, L], got {got}")
        L = tokens.shape[1] + 1  # the image prefix takes position 0
        if L > self.context_length:
            raise ValueError(f"the decoder reads at most context_length - 1 = {self.context_length - 1} tokens "
                             f"after the image; got {tokens.shape[1]}")
        x = torch.cat([prefix[:, None, :], self.token_embedding(tokens)], dim=1)  # [B, L, W]
        x = x + self.positional_embedding[:L]
        causal = torch.full((L, L), float("-inf"), device=x.device).triu(1)  # [L, L]
        x = self.transformer(x, mask=causal, is_causal=True)  # [B, L, W]
        return self.lm_head(self.ln_final(x[:, 1:]))  # [B, L-1, V]; the image position predicts nothing we score

    def _token_logprobs(self, prefix: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(tok_p | image, tok_<p) for p = 1..L'-1 [B, L'-1] and whether p is a real target (p ≤ EOT)."""
        eot = _check_tokens(tokens, self.vocab_size)
        if tokens.shape[1] > self.context_length:
            raise ValueError(f"tokens have length {tokens.shape[1]} > context_length {self.context_length}")
        tokens = tokens[:, : int(eot.max()) + 1]  # [B, L']; nothing after the last EOT is ever scored
        L = tokens.shape[1]
        logits = self._decode(prefix, tokens[:, :-1])  # [B, L-1, V] scoring tokens[:, 1:]
        logp = -F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")  # [B, L-1]
        target_pos = torch.arange(1, L, device=tokens.device)  # [L-1]
        valid = target_pos[None, :] <= eot[:, None]  # [B, L-1]; the words and EOT, not SOT or padding
        return logp, valid

    def loss(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced cross-entropy per caption token (mean over the batch's real tokens)."""
        logp, valid = self._token_logprobs(self.image_prefix(self.visual(images)), tokens)
        return -(logp * valid).sum() / valid.sum()

    def log_likelihood(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """[B] log p(caption | image), summed over the caption's tokens after SOT up to and including EOT."""
        logp, valid = self._token_logprobs(self.image_prefix(self.visual(images)), tokens)
        return (logp * valid).sum(dim=1)

    @torch.no_grad()
    def zeroshot_logits(
        self, images: torch.Tensor, class_tokens: torch.Tensor, *, batch_size: int = 512
    ) -> torch.Tensor:
        """[B, C]: each image's log-likelihood of each class prompt ([C, L]; [C, T, L] averages T templates).

        Every (image, prompt) pair is one decoder sequence; ``batch_size`` of them run at a time.
        """
        prompts, C, T = _flatten_prompts(class_tokens)  # [P = C·T, L]
        _check_tokens(prompts, self.vocab_size, "class_tokens")
        prefix = self.image_prefix(self.visual(images))  # [B, W]
        B, P = prefix.shape[0], prompts.shape[0]
        image_idx = torch.arange(B, device=prefix.device).repeat_interleave(P)  # [B·P] pairs, image-major
        prompt_idx = torch.arange(P, device=prefix.device).repeat(B)  # [B·P]
        scores = []
        for start in range(0, B * P, batch_size):
            i, p = image_idx[start : start + batch_size], prompt_idx[start : start + batch_size]
            logp, valid = self._token_logprobs(prefix[i], prompts[p])
            scores.append((logp * valid).sum(dim=1))
        return torch.cat(scores).view(B, C, T).mean(dim=2)  # [B, C]


class BagOfWords(nn.Module):
    """Predict the caption's set of words from the image: a linear head over the vocabulary.

    Target: the caption's distinct word ids, normalized to sum to 1; loss: cross-entropy between that
    target and a softmax over the vocabulary (one softmax, not V independent sigmoids, so that frequent
    and rare words compete for probability mass, as in the paper's bag-of-words prediction baseline).
    """

    def __init__(self, image_encoder: nn.Module, vocab_size: int, *, image_dim: Optional[int] = None):
        super().__init__()
        self.visual = image_encoder
        self.vocab_size = vocab_size
        self.head = nn.Linear(_image_dim(image_encoder, image_dim), vocab_size)  # [B, D] -> [B, V]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B, V] log-probabilities of each vocabulary word being in the image's caption."""
        return self.head(self.visual(images)).log_softmax(dim=-1)

    def loss(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        target = bag_of_words(tokens, self.vocab_size)  # [B, V]
        return -(target * self(images)).sum(dim=1).mean()

    @torch.no_grad()
    def zeroshot_logits(self, images: torch.Tensor, class_tokens: torch.Tensor) -> torch.Tensor:
        """[B, C]: mean log-probability of each class prompt's distinct words ([C, T, L]: mean over T)."""
        prompts, C, T = _flatten_prompts(class_tokens)  # [P, L]
        bags = bag_of_words(prompts, self.vocab_size)  # [P, V]
        if (bags.sum(dim=1) == 0).any():
            raise ValueError("a class prompt has no words between SOT and EOT; it cannot be scored")
        scores = self(images) @ bags.t()  # [B, P]
        return scores.view(-1, C, T).mean(dim=2)  # [B, C]
