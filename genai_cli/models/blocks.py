"""Convolutional stacks shared by the DCGAN, conditional GAN and VAE families.

A square image of side s0 * 2**k (s0 in 4..7) is built from an s0 x s0 map by k
stride-2 transposed convolutions, and read back down by k stride-2 convolutions; the width
doubles at every halving of resolution, as in Radford et al. (2015). This covers 28
(7 * 4), 32 (4 * 8) and 64 (4 * 16) with one rule.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from genai_cli.config import MAX_IMAGE_SIZE
from genai_cli.errors import UsageError

MAX_WIDTH_MULTIPLIER = 8


def resolution_plan(image_size: int) -> tuple[int, int]:
    """(base side s0, number of stride-2 stages k) with image_size == s0 * 2**k."""
    if not 1 <= image_size <= MAX_IMAGE_SIZE:
        raise UsageError(f"--image-size {image_size} is out of range: conv models go up to {MAX_IMAGE_SIZE}")
    base, stages = image_size, 0
    while base > 7 and base % 2 == 0:
        base, stages = base // 2, stages + 1
    if stages == 0 or not 4 <= base <= 7:
        raise UsageError(
            f"--image-size {image_size} cannot be built by a conv model: use s * 2^k with s in 4..7 "
            "and k >= 1 (e.g. 16, 28, 32, 64, 128)"
        )
    return base, stages


def stage_widths(width: int, stages: int) -> list[int]:
    """Channel widths from the highest resolution (image/2) down to the base map."""
    return [width * min(2**i, MAX_WIDTH_MULTIPLIER) for i in range(stages)]


NORMS = ("batch", "group", "none")


def norm_layer(norm: str, channels: int, dims: int = 2, affine: bool = True) -> nn.Module:
    """BatchNorm (the DCGAN default), GroupNorm (independent of the batch, so of how DDP
    splits it; no SyncBatchNorm needed on CPU), or nothing."""
    if norm == "batch":
        return nn.BatchNorm2d(channels, affine=affine) if dims == 2 else nn.BatchNorm1d(channels, affine=affine)
    if norm == "group":
        return nn.GroupNorm(math.gcd(32, channels), channels, affine=affine)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown normalisation {norm!r}; choose one of {', '.join(NORMS)}")


class ClassNorm(nn.Module):
    """Conditional BatchNorm (de Vries et al. 2017; the generator of Miyato & Koyama 2018): the scale
    and shift after normalising are looked up per class, so the label steers every layer of G, not
    only its input. The scale is 1 + gain: gain and shift start at 0 (the plain normalisation), and
    dcgan_init's N(0, 0.02) starts the scale as BatchNorm's own N(1, 0.02)."""

    def __init__(self, norm: str, num_classes: int, channels: int) -> None:
        super().__init__()
        self.norm = norm_layer(norm, channels, affine=False)
        self.gain = nn.Embedding(num_classes, channels)
        self.shift = nn.Embedding(num_classes, channels)
        nn.init.zeros_(self.gain.weight)
        nn.init.zeros_(self.shift.weight)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.norm(x) * (1 + self.gain(labels))[:, :, None, None] + self.shift(labels)[:, :, None, None]


class ConvGenerator(nn.Module):
    """Latent vector -> image: one projection to s0 x s0, then stride-2 transposed convs. With
    num_classes, each normalisation is a ClassNorm that reads forward's labels; without, they are unused.
    With full_res_conv the last transposed conv gives width / 2 feature maps, normalised, and a 3x3 conv at
    full resolution makes the image from them (SNGAN's DCGAN generator), not the transposed conv itself."""

    def __init__(self, in_dim: int, channels: int, image_size: int, width: int, norm: str = "batch",
                 num_classes: int = 0, full_res_conv: bool = False) -> None:
        super().__init__()
        base, stages = resolution_plan(image_size)
        widths = stage_widths(width, stages)[::-1]  # base map first
        bias = norm == "none"  # a normalisation layer's shift makes a conv bias redundant

        def normalise(w: int) -> nn.Module:
            return ClassNorm(norm, num_classes, w) if num_classes else norm_layer(norm, w)

        layers: list[nn.Module] = [nn.ConvTranspose2d(in_dim, widths[0], base, 1, 0, bias=bias), normalise(widths[0]), nn.ReLU(True)]
        for w_in, w_out in zip(widths, widths[1:]):
            layers += [nn.ConvTranspose2d(w_in, w_out, 4, 2, 1, bias=bias), normalise(w_out), nn.ReLU(True)]
        if full_res_conv:
            top = max(1, width // 2)
            layers += [nn.ConvTranspose2d(widths[-1], top, 4, 2, 1, bias=bias), normalise(top), nn.ReLU(True),
                       nn.Conv2d(top, channels, 3, 1, 1)]
        else:
            layers.append(nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1, bias=False))
        self.net = nn.Sequential(*layers)

    def forward(self, h: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Pre-activation output (apply tanh or sigmoid outside)."""
        h = h.reshape(h.shape[0], -1, 1, 1)
        for layer in self.net:
            h = layer(h, labels) if isinstance(layer, ClassNorm) else layer(h)
        return h


class ConvEncoder(nn.Module):
    """Image -> feature map at s0 x s0: stride-2 convs with LeakyReLU, normalised after the first."""

    def __init__(self, channels: int, image_size: int, width: int, norm: str = "batch") -> None:
        super().__init__()
        base, stages = resolution_plan(image_size)
        widths = stage_widths(width, stages)
        layers: list[nn.Module] = [
            nn.Conv2d(channels, widths[0], 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        for w_in, w_out in zip(widths, widths[1:]):
            layers += [
                nn.Conv2d(w_in, w_out, 4, 2, 1, bias=norm == "none"),
                norm_layer(norm, w_out),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        self.net = nn.Sequential(*layers)
        self.out_channels, self.out_size = widths[-1], base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def dcgan_init(module: nn.Module) -> None:
    """N(0, 0.02) conv weights, N(1, 0.02) normalisation scales (Radford et al. 2015)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class LabelEmbedding(nn.Module):
    """Class index -> learned vector, concatenated to a latent by conditional models."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(num_classes, dim)

    def concat(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.cat([z, self.embed(labels)], dim=1)


class ConvClassifier(nn.Module):
    """Image -> class logits: the DCGAN feature stack, unnormalised (it also reads batches of generated
    images, whose statistics BatchNorm would fold in), and one linear layer."""

    def __init__(self, channels: int, image_size: int, width: int, num_classes: int) -> None:
        super().__init__()
        self.features = ConvEncoder(channels, image_size, width, "none")
        self.head = nn.Linear(self.features.out_channels * self.features.out_size**2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))
