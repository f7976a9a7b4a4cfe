"""Convolutional VAE (Kingma & Welling 2014) and its label-conditioned variant (CVAE).

The encoder is the DCGAN feature stack followed by linear heads for mu and log-variance;
the decoder is the DCGAN generator producing Bernoulli logits, so the reconstruction term
is `binary_cross_entropy_with_logits` on pixels in [0, 1] (stable, autocast-safe).
"""

from __future__ import annotations

import torch
from torch import nn

from genai_cli.config import ModelConfig
from genai_cli.models.base import ModelSpec, VariationalModel
from genai_cli.models.blocks import ConvEncoder, ConvGenerator, LabelEmbedding

LABEL_EMBEDDING_DIM = 16


class Encoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        assert config.latent_dim and config.channels and config.image_size
        self.features = ConvEncoder(config.channels, config.image_size, config.width, config.norm)
        flat = self.features.out_channels * self.features.out_size**2
        self.labels = LabelEmbedding(config.num_classes, LABEL_EMBEDDING_DIM) if config.num_classes else None
        self.head = nn.Linear(flat + (LABEL_EMBEDDING_DIM if self.labels else 0), 2 * config.latent_dim)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x).flatten(1)
        if self.labels is not None:
            h = self.labels.concat(h, labels)
        mu, logvar = self.head(h).chunk(2, dim=1)
        return mu, logvar


class Decoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        assert config.latent_dim and config.channels and config.image_size
        self.labels = LabelEmbedding(config.num_classes, LABEL_EMBEDDING_DIM) if config.num_classes else None
        in_dim = config.latent_dim + (LABEL_EMBEDDING_DIM if self.labels else 0)
        self.body = ConvGenerator(in_dim, config.channels, config.image_size, config.width, config.norm)

    def logits(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.labels is not None:
            z = self.labels.concat(z, labels)
        return self.body(z)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Mean image of the Bernoulli decoder, mapped to [-1, 1] like the GANs' output."""
        return torch.sigmoid(self.logits(z, labels)) * 2 - 1


def build(config: ModelConfig) -> VariationalModel:
    return VariationalModel(config, Encoder(config), Decoder(config))


SPEC = ModelSpec(
    name="vae",
    build=build,
    description="convolutional variational autoencoder (Kingma & Welling 2014)",
    latent_dim=32,
    lr=1e-3,
    beta1=0.9,
    ema=0.0,
)

CONDITIONAL_SPEC = ModelSpec(
    name="cvae",
    build=build,
    description="label-conditioned convolutional VAE",
    conditional=True,
    latent_dim=32,
    lr=1e-3,
    beta1=0.9,
    ema=0.0,
)
