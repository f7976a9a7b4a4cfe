"""The original GAN (Goodfellow et al. 2014) with multilayer perceptrons.

G: z -> 256 -> 512 -> 1024 -> pixels (tanh); D: pixels -> 1024 -> 512 -> 256 -> logit,
LeakyReLU(0.2). Widths scale with --width (64 gives the sizes above). D has no dropout: removing
the paper's (0.3, kept by files from before schema 6) cut the FID by a quarter at equal images
(benchmarks/RESULTS.md, "The MLP GAN"). D's last layer also sees the spread of its features over
groups of images (--minibatch-std; files from before schema 16 have none).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from genai_cli.config import ModelConfig
from genai_cli.models.base import AdversarialModel, ModelSpec
from genai_cli.models.blocks import norm_layer


class MLPGenerator(nn.Module):
    def __init__(self, latent_dim: int, shape: tuple[int, int, int], width: int, norm: str = "batch") -> None:
        super().__init__()
        hidden = [4 * width, 8 * width, 16 * width]
        layers: list[nn.Module] = []
        for w_in, w_out in zip([latent_dim, *hidden], hidden):
            layers += [nn.Linear(w_in, w_out), norm_layer(norm, w_out, dims=1), nn.LeakyReLU(0.2, inplace=True)]
        layers += [nn.Linear(hidden[-1], math.prod(shape)), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.shape = shape

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(z).view(z.shape[0], *self.shape)


class MinibatchStd(nn.Module):
    """ProGAN's minibatch standard deviation (Karras et al. 2018): appends to each image's features their
    mean standard deviation over its group of `group` images. D judges images one by one, so without it
    G can make every sample alike; with it, samples that vary less than real images do are told apart."""

    def __init__(self, group: int) -> None:
        super().__init__()
        self.group = group

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        n, features = h.shape
        group = next(g for g in range(min(self.group, n), 0, -1) if n % g == 0)  # a short last batch still splits evenly
        spread = h.float().view(group, n // group, features).var(0, unbiased=False).add(1e-8).sqrt().mean(1)
        return torch.cat([h, spread.repeat(group).unsqueeze(1).to(h.dtype)], dim=1)  # image i is in group i % (n // group)


class MLPDiscriminator(nn.Module):
    def __init__(self, shape: tuple[int, int, int], width: int, dropout: float = 0.0, minibatch_std: int = 0) -> None:
        super().__init__()
        hidden = [16 * width, 8 * width, 4 * width]
        layers: list[nn.Module] = []
        for w_in, w_out in zip([math.prod(shape), *hidden], hidden):
            layers += [nn.Linear(w_in, w_out), nn.LeakyReLU(0.2, inplace=True)]
            layers += [nn.Dropout(dropout)] if dropout else []  # files written with dropout keep its layer numbering
        if minibatch_std:
            layers.append(MinibatchStd(minibatch_std))
        layers.append(nn.Linear(hidden[-1] + bool(minibatch_std), 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x.flatten(1)).squeeze(1)


def build(config: ModelConfig) -> AdversarialModel:
    assert config.latent_dim and config.channels and config.image_size
    shape = (config.channels, config.image_size, config.image_size)
    return AdversarialModel(
        config,
        MLPGenerator(config.latent_dim, shape, config.width, config.norm),
        MLPDiscriminator(shape, config.width, config.dropout, config.minibatch_std or 0),
    )


SPEC = ModelSpec(
    name="gan",
    build=build,
    description="MLP generator and discriminator (Goodfellow et al. 2014)",
    # More, larger steps than the DCGAN's paper recipe: batch 32 with lr 1e-3 halves the classifier FID of
    # batch 128 with lr 2e-4 (82.4 at 240k images against 165 at 300k); batch 64 with lr 5e-4 matches it
    # at 1M images (49.4 against 46.9) with 30% more images a second (benchmarks/RESULTS.md)
    batch_size=64,
    lr=5e-4,
    # R1 keeps a long run improving past the 1M images where it peaked without: classifier FID 25.7 at
    # 2M images with gamma 1 and 11.4 at an hour's 8M, every class kept, against 59.6 at 2M without
    # (49.3 at 1M, then classes lost). Its D has no BatchNorm: a per-image penalty.
    r1=1.0,
    # As the DCGAN's: a moving average over about the last tenth of the run, however long. An hour's 125,000
    # steps: classifier FID 14.49 at 0.999, 12.43 at 0.9998, 11.79 at 0.9999 from the same training (its
    # raw G 35.4). Runs under 9,000 steps (about 4 minutes here) average alike at either decay.
    ema=0.9999,
    # Minibatch standard deviation in D, groups of 4, lets D see samples too alike. At 4M images Inception
    # recall 0.213 against 0.169 and FID 38.7 against 40.1 (2,000 samples), classifier recall 0.438 against
    # 0.342 for FID 16.66 against 15.68; at 2M Inception FID 46.6 against 49.4, recall level (benchmarks/RESULTS.md).
    minibatch_std=4,
    # At 240k images (a few minutes) R1 cost FID (66.8 against 62.9) and minibatch std more (72.9): a short
    # run trains without either.
    short_budget=(300.0, {"train.r1": 0.0, "model.minibatch_std": 0}),
)
