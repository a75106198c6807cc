"""The learned temperature: its initial value, the clamp after each step, the fixed-τ ablation, SigLIP's scalars."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clipmini.losses import clip_loss, siglip_loss
from clipmini.temperature import (
    SigLIPHead,
    clamp_logit_scale_,
    fix_temperature,
    init_logit_scale,
    temperature,
)


class TinyCLIP(nn.Module):
    def __init__(self):
        super().__init__()
        self.image_proj = nn.Linear(6, 4)
        self.text_proj = nn.Linear(5, 4)
        self.logit_scale = nn.Parameter(torch.tensor(init_logit_scale()))

    def loss(self, x_image, x_text):
        image_features = F.normalize(self.image_proj(x_image), dim=1)
        text_features = F.normalize(self.text_proj(x_text), dim=1)
        return clip_loss(image_features, text_features, self.logit_scale.exp())


class Wrapper(nn.Module):  # stands in for DistributedDataParallel, which keeps the model in .module
    def __init__(self, module):
        super().__init__()
        self.module = module


def test_init_value():
    assert init_logit_scale() == pytest.approx(2.659260036932778, abs=1e-12)  # ln(1/0.07)
    assert init_logit_scale(0.01) == pytest.approx(math.log(100.0))
    assert temperature(TinyCLIP()) == pytest.approx(0.07)
    for bad in (0.0, -0.1, float("nan"), "0.07"):
        with pytest.raises(ValueError, match="tau must be a positive finite temperature"):
            init_logit_scale(bad)


def test_clamp_holds_after_a_step_past_ln_100():
    torch.manual_seed(0)
    model = TinyCLIP()
    optimizer = torch.optim.Adam([model.logit_scale], lr=5.0)  # Adam moves ~lr per step: 2.66 -> ~7.7
    features = F.normalize(torch.randn(8, 4), dim=1)  # perfectly matched pairs: a larger scale always helps
    for _ in range(3):
        optimizer.zero_grad()
        clip_loss(features, features, model.logit_scale.exp()).backward()
        assert model.logit_scale.grad.item() < 0  # the loss pulls the scale up
        optimizer.step()
        assert model.logit_scale.item() > math.log(100.0)  # the step overshot...
        clamp_logit_scale_(model)
        assert model.logit_scale.item() == pytest.approx(math.log(100.0), abs=1e-6)  # ...the clamp holds
        assert temperature(model) == pytest.approx(0.01, rel=1e-6)
    assert model.logit_scale.requires_grad  # clamping in place keeps it a trainable leaf


def test_clamp_lower_bound_wrappers_and_plain_parameters():
    model = TinyCLIP()
    with torch.no_grad():
        model.logit_scale.fill_(-3.0)
    clamp_logit_scale_(Wrapper(model))  # finds .module.logit_scale
    assert model.logit_scale.item() == 0.0  # τ ≤ 1, as in open_clip
    param = nn.Parameter(torch.tensor(9.0))
    clamp_logit_scale_(param, max_scale=50.0)
    assert param.item() == pytest.approx(math.log(50.0))
    with pytest.raises(ValueError, match="no tensor attribute 'logit_scale'"):
        clamp_logit_scale_(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="max_scale"):
        clamp_logit_scale_(model, max_scale=0.5)


def test_fixed_temperature_stays_fixed_over_training():
    torch.manual_seed(0)
    model = fix_temperature(TinyCLIP(), 0.05)
    assert not model.logit_scale.requires_grad
    assert temperature(model) == pytest.approx(0.05, rel=1e-6)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.2)
    x_image, x_text = torch.randn(8, 6), torch.randn(8, 5)
    before = model.image_proj.weight.detach().clone()
    for _ in range(5):
        optimizer.zero_grad()
        model.loss(x_image, x_text).backward()
        optimizer.step()
        clamp_logit_scale_(model)
    assert model.logit_scale.grad is None
    assert temperature(model) == pytest.approx(0.05, rel=1e-6)
    assert not torch.equal(model.image_proj.weight, before)  # the rest of the model did train


def test_siglip_head():
    head = SigLIPHead()
    assert head.logit_scale.item() == pytest.approx(math.log(10.0), rel=1e-6)
    assert head.logit_bias.item() == -10.0
    scale, bias = head()
    assert scale.item() == pytest.approx(10.0, rel=1e-6)
    torch.manual_seed(0)
    image, text = F.normalize(torch.randn(5, 8), dim=1), F.normalize(torch.randn(5, 8), dim=1)
    loss = head.loss(image, text)
    assert loss.item() == pytest.approx(siglip_loss(image, text, 10.0, -10.0).item(), rel=1e-6)
    loss.backward()
    assert head.logit_scale.grad is not None and head.logit_bias.grad is not None
    with pytest.raises(ValueError, match="init_scale"):
        SigLIPHead(init_scale=0.0)
