"""Differentiable augmentation of what the discriminator sees (DiffAugment, Zhao et al. 2020).

Every image D judges, real or generated, in D's update and in G's, is translated and has a square
cut out, each image its own draw. The same transforms on both sides leave the real distribution's
target unchanged, and being differentiable they pass G's gradient through; D cannot memorise
the training images as easily. The paper's policy and ratios: translation by up to 1/8 of the
side (zero-filled), a cutout of half the side (zeroed).

It pays where D would otherwise memorise a small training set. With all 60k Fashion-MNIST images it
hid more from D than it saved: every GAN family scored worse after an hour (benchmarks/RESULTS.md),
so no family turns it on by default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5
POLICIES = ("none", "translation", "cutout", "translation,cutout")


def translate(x: torch.Tensor, ratio: float = TRANSLATION_RATIO) -> torch.Tensor:
    """Each image shifted by its own whole-pixel offset in [-s, s] per axis, the border zero-filled."""
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sh, sh + 1, (n, 1, 1), device=x.device)
    dx = torch.randint(-sw, sw + 1, (n, 1, 1), device=x.device)
    rows = (torch.arange(h, device=x.device).view(1, h, 1) + dy + sh).expand(n, h, w)
    cols = (torch.arange(w, device=x.device).view(1, 1, w) + dx + sw).expand(n, h, w)
    padded = F.pad(x, [sw, sw, sh, sh])
    index = (rows * (w + 2 * sw) + cols).reshape(n, 1, h * w).expand(-1, x.shape[1], -1)
    return padded.flatten(2).gather(2, index).reshape_as(x)


def cutout(x: torch.Tensor, ratio: float = CUTOUT_RATIO) -> torch.Tensor:
    """Each image with one square of side ratio * size zeroed, centred anywhere on it (clipped at the border)."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = torch.randint(0, h + 1 - ch % 2, (n, 1, 1), device=x.device) - ch // 2
    left = torch.randint(0, w + 1 - cw % 2, (n, 1, 1), device=x.device) - cw // 2
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (rows >= top) & (rows < top + ch) & (cols >= left) & (cols < left + cw)
    return x * (~inside).unsqueeze(1).to(x.dtype)


def augment(x: torch.Tensor, policy: str) -> torch.Tensor:
    """`x` through each transform the comma-separated policy names, in order; "none" returns it."""
    for name in policy.split(","):
        if name == "translation":
            x = translate(x)
        elif name == "cutout":
            x = cutout(x)
        elif name != "none":
            raise ValueError(f"unknown augmentation {name!r}; choose from {', '.join(POLICIES)}")
    return x
