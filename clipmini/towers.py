"""The building blocks of CLIP's towers: a pre-LN transformer, a ViT and OpenAI's ModifiedResNet.

Every module keeps the parameter names and shapes of OpenAI's checkpoints, so that a released
`state_dict` loads into it unchanged. Attention runs through PyTorch's fused
`scaled_dot_product_attention`. Activations are batch-first: `[B, L, W]`.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import VisionConfig

__all__ = [
    "LayerNorm",
    "QuickGELU",
    "MultiheadSelfAttention",
    "ResidualAttentionBlock",
    "Transformer",
    "VisionTransformer",
    "Bottleneck",
    "AttentionPool2d",
    "ModifiedResNet",
    "build_vision_tower",
]


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 and cast back, so fp16/bf16 activations normalize stably."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if x.dtype == torch.float32 and (weight is None or weight.dtype == torch.float32):
            return F.layer_norm(x, self.normalized_shape, weight, bias, self.eps)  # nothing to cast
        weight = weight.float() if weight is not None else None
        bias = bias.float() if bias is not None else None
        y = F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)
        return y.to(x.dtype)


class QuickGELU(nn.Module):
    """OpenAI's sigmoid approximation of GELU: x * sigmoid(1.702 x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class MultiheadSelfAttention(nn.Module):
    """Self-attention with `nn.MultiheadAttention`'s parameter names, computed with fused SDPA."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width={width} must be divisible by heads={heads}")
        self.width, self.heads = width, heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))  # [3W, W]: q, k, v stacked
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))  # [3W]
        self.out_proj = nn.Linear(width, width)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The same start as nn.MultiheadAttention: Xavier-uniform in_proj, zero biases.
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        B, L, W = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # [B, L, 3W]
        qkv = qkv.view(B, L, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)  # [3, B, H, L, D]
        q, k, v = qkv.unbind(0)  # each [B, H, L, D]
        x = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # [B, H, L, D]
        x = x.transpose(1, 2).reshape(B, L, W)  # [B, L, W]
        return self.out_proj(x)


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int, quick_gelu: bool = True, mlp_ratio: int = 4):
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = MultiheadSelfAttention(width, heads)
        self.ln_2 = LayerNorm(width)
        hidden = width * mlp_ratio
        self.mlp = nn.Sequential(
            OrderedDict(
                c_fc=nn.Linear(width, hidden),  # [W] -> [4W]
                gelu=QuickGELU() if quick_gelu else nn.GELU(),
                c_proj=nn.Linear(hidden, width),  # [4W] -> [W]
            )
        )

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal=causal)  # [B, L, W]
        x = x + self.mlp(self.ln_2(x))  # [B, L, W]
        return x


class Transformer(nn.Module):
    """A stack of residual attention blocks (`resblocks`), optionally checkpointed per block."""

    def __init__(self, width: int, layers: int, heads: int, quick_gelu: bool = True):
        super().__init__()
        self.width, self.layers = width, layers
        self.resblocks = nn.ModuleList(
            [ResidualAttentionBlock(width, heads, quick_gelu) for _ in range(layers)]
        )
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward instead of storing them."""
        self.grad_checkpointing = enable

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        for block in self.resblocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, causal, use_reentrant=False)
            else:
                x = block(x, causal)
        return x  # [B, L, W]


class VisionTransformer(nn.Module):
    """ViT image tower: patchify, prepend a class token, transformer, project the class token."""

    def __init__(self, config: VisionConfig, output_dim: int, quick_gelu: bool = True):
        super().__init__()
        if not config.is_vit:
            raise ValueError("VisionTransformer needs a VisionConfig with patch_size set")
        self.image_size, self.patch_size = config.image_size, config.patch_size
        self.output_dim = output_dim
        width, P = config.width, config.patch_size
        self.grid_size = config.image_size // P
        self.conv1 = nn.Conv2d(3, width, kernel_size=P, stride=P, bias=False)  # [W, 3, P, P]
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))  # [W]
        self.positional_embedding = nn.Parameter(
            scale * torch.randn(self.grid_size**2 + 1, width)  # [G*G+1, W]
        )
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, config.layers, config.heads, quick_gelu)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))  # [W, E]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.set_grad_checkpointing(enable)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.conv1(images.to(self.conv1.weight.dtype))  # [B, W, G, G]
        x = x.flatten(2).transpose(1, 2)  # [B, G*G, W]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # [B, 1, W]
        x = torch.cat([cls, x], dim=1)  # [B, G*G+1, W]
        x = x + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        x = self.transformer(x)  # [B, G*G+1, W]
        x = self.ln_post(x[:, 0])  # [B, W]: the class token
        return x @ self.proj  # [B, E]


class Bottleneck(nn.Module):
    """ResNet bottleneck with anti-aliased downsampling: the stride is an average pool before conv3."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu3 = nn.ReLU(inplace=True)
        self.downsample = None
        if stride > 1 or inplanes != out:
            # An average pool (no parameters) then `downsample.0` conv and `downsample.1` BN.
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("pool", nn.AvgPool2d(stride) if stride > 1 else nn.Identity()),
                        ("0", nn.Conv2d(inplanes, out, 1, bias=False)),
                        ("1", nn.BatchNorm2d(out)),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)  # [B, 4P, H/s, W/s]
        x = self.relu1(self.bn1(self.conv1(x)))  # [B, P, H, W]
        x = self.relu2(self.bn2(self.conv2(x)))  # [B, P, H, W]
        x = self.avgpool(x)  # [B, P, H/s, W/s]
        x = self.bn3(self.conv3(x))  # [B, 4P, H/s, W/s]
        return self.relu3(x + identity)


class AttentionPool2d(nn.Module):
    """Pool a feature map with one attention query: the spatial mean, prepended to the map."""

    def __init__(self, spatial_dim: int, width: int, heads: int, output_dim: int):
        super().__init__()
        self.heads = heads
        self.positional_embedding = nn.Parameter(
            torch.randn(spatial_dim**2 + 1, width) / width**0.5  # [S*S+1, C]
        )
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.c_proj = nn.Linear(width, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C = x.shape[:2]
        x = x.flatten(2).transpose(1, 2)  # [B, S*S, C]
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)  # [B, S*S+1, C]
        x = x + self.positional_embedding.to(x.dtype)
        L, H, D = x.shape[1], self.heads, C // self.heads
        q = self.q_proj(x[:, :1]).view(B, 1, H, D).transpose(1, 2)  # [B, H, 1, D]
        k = self.k_proj(x).view(B, L, H, D).transpose(1, 2)  # [B, H, L, D]
        v = self.v_proj(x).view(B, L, H, D).transpose(1, 2)  # [B, H, L, D]
        x = F.scaled_dot_product_attention(q, k, v)  # [B, H, 1, D]
        x = x.transpose(1, 2).reshape(B, C)  # [B, C]
        return self.c_proj(x)  # [B, E]


class ModifiedResNet(nn.Module):
    """OpenAI's ResNet: a 3-conv stem, anti-aliased bottlenecks and an attention-pool head."""

    def __init__(self, config: VisionConfig, output_dim: int):
        super().__init__()
        if config.is_vit:
            raise ValueError("ModifiedResNet needs a VisionConfig with patch_size=None")
        self.image_size = config.image_size
        self.output_dim = output_dim
        W = config.width
        # The stem: three 3x3 convs (the first strided) and a 2x2 average pool; 4x down.
        self.conv1 = nn.Conv2d(3, W // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(W // 2)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(W // 2, W // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(W // 2)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(W // 2, W, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(W)
        self.relu3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)
        # Four stages of widths W, 2W, 4W, 8W (times the expansion of 4); stages 2-4 halve the map.
        inplanes = W
        stages = []
        for i, blocks in enumerate(config.layers):
            planes, stride = W * 2**i, 1 if i == 0 else 2
            stage = [Bottleneck(inplanes, planes, stride)]
            inplanes = planes * Bottleneck.expansion
            stage += [Bottleneck(inplanes, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.attnpool = AttentionPool2d(config.image_size // 32, 32 * W, config.heads, output_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.attnpool.c_proj.in_features**-0.5
        for proj in (self.attnpool.q_proj, self.attnpool.k_proj, self.attnpool.v_proj, self.attnpool.c_proj):
            nn.init.normal_(proj.weight, std=std)
        # Each residual branch starts as zero, so every bottleneck starts as the identity path.
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                nn.init.zeros_(block.bn3.weight)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Not supported: recomputing a block in training mode would update BatchNorm's running
        statistics twice. Warns and leaves the tower as it is."""
        if enable:
            warnings.warn(
                "ModifiedResNet does not support gradient checkpointing (recomputing BatchNorm in "
                "training mode would update its running statistics twice); only transformer "
                "towers are checkpointed",
                stacklevel=2,
            )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.conv1.weight.dtype)
        x = self.relu1(self.bn1(self.conv1(x)))  # [B, W/2, R/2, R/2]
        x = self.relu2(self.bn2(self.conv2(x)))  # [B, W/2, R/2, R/2]
        x = self.relu3(self.bn3(self.conv3(x)))  # [B, W, R/2, R/2]
        x = self.avgpool(x)  # [B, W, R/4, R/4]
        x = self.layer1(x)  # [B, 4W, R/4, R/4]
        x = self.layer2(x)  # [B, 8W, R/8, R/8]
        x = self.layer3(x)  # [B, 16W, R/16, R/16]
        x = self.layer4(x)  # [B, 32W, R/32, R/32]
        return self.attnpool(x)  # [B, E]


def build_vision_tower(config: VisionConfig, output_dim: int, quick_gelu: bool = True) -> nn.Module:
    """The ViT or the ModifiedResNet that `config` describes, projecting to `output_dim`."""
    if config.is_vit:
        return VisionTransformer(config, output_dim, quick_gelu)
    return ModifiedResNet(config, output_dim)
