"""The shapes a model takes, and the spec that registers a family.

Every family is adversarial (a generator and a discriminator), variational (an encoder and a
decoder) or translating (pix2pix: a generator from an input image); each exposes `generate` on
its `input_names` (latents and labels, or an input image) -> images in [-1, 1], which is all that
sampling and export need.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from genai_cli.config import ModelConfig


class GenerativeModel(nn.Module):
    """Base of every family: a config and a way to turn its inputs (latents and labels, or an image) into images."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config

    @property
    def conditional(self) -> bool:
        return self.config.num_classes > 0

    @property
    def latent_dim(self) -> int:
        assert self.config.latent_dim is not None
        return self.config.latent_dim

    metrics: tuple[str, ...] = ()  # eval metric groups only this shape of model supports
    translates: bool = False  # maps an input image, not a latent: sample, eval and export feed it images

    @property
    def input_names(self) -> tuple[str, ...]:
        """What `generate` takes, in order: the exported graph's signature."""
        return ("z", "label") if self.conditional else ("z",)

    def generating_half(self) -> nn.Module:
        """The part that maps latent (+ label) to an image: what `export` ships."""
        raise NotImplementedError

    def generate(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.generating_half()(z, labels)


class AdversarialModel(GenerativeModel):
    def __init__(self, config: ModelConfig, generator: nn.Module, discriminator: nn.Module) -> None:
        super().__init__(config)
        self.generator = generator
        self.discriminator = discriminator

    def generating_half(self) -> nn.Module:
        return self.generator


class VariationalModel(GenerativeModel):
    metrics = ("nll",)  # an encoder gives a bound on the likelihood
    def __init__(self, config: ModelConfig, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__(config)
        self.encoder = encoder  # (x, labels) -> (mu, logvar)
        self.decoder = decoder  # (z, labels) -> images in [-1, 1]

    def generating_half(self) -> nn.Module:
        return self.decoder

    def decode_logits(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return self.decoder.logits(z, labels)


@dataclass(frozen=True)
class ModelSpec:
    """A registered family: how to build it and the defaults its paper trains it with."""

    name: str
    build: Callable[[ModelConfig], GenerativeModel]
    description: str
    shape: type[GenerativeModel] = AdversarialModel  # what build returns: it picks the objective before any model exists
    conditional: bool = False
    latent_dim: int = 100
    batch_size: int = 128
    lr: float = 2e-4
    lr_decay_start: float = 1.0  # fraction of the run after which the rate falls linearly to 0
    beta1: float = 0.5
    ema: float = 0.999  # moving average of the generating half's weights; 0 for none
    r1: float = 0.0  # R1's gamma where the objective takes it (bce, hinge); 0 for none
    prior: str = "standard"  # what latents are drawn from: N(0, I), or a mixture fitted to the codes (VAEs)
    prior_components: int | None = None  # Gaussians in the fitted prior (per class for a conditional family)
    likelihood: str | None = None  # the decoder's p(x | z) (VAEs: genai_cli.models.vae.LIKELIHOODS)
    class_norm: bool | None = None  # labels set G's normalisations (models.blocks.ClassNorm); None: not available
    class_loss: float | None = None  # weight of the auxiliary class loss (its D must classify: `classes=True`); None: not available
    best_of: int | None = None  # candidates per sample its class loss's classifier picks among (cvae); None: not available
    full_res_conv: bool | None = None  # G's image made by a 3x3 conv at full resolution (models.blocks.ConvGenerator); None: not available
    minibatch_std: int | None = None  # group size of D's minibatch standard deviation (models.gan.MinibatchStd); None: not available
    # (longest --max-time budget, flag defaults for it): a run of a few minutes sees too few images for
    # the paper's recipe to get going, and learns faster with more, smaller steps (benchmarks/RESULTS.md)
    short_budget: tuple[float, dict[str, Any]] | None = None
