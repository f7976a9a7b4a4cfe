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


class FittedPrior(nn.Module):
    """N(mean, L L^T) fitted to the training set's codes once training ends (ex-post density estimation,
    Ghosh et al. 2020): a VAE's codes do not fill N(0, I), and decoding the regions between them gives
    the blurry, off-manifold samples. It maps N(0, I) noise, so seeds, sampling and export keep their
    interface; until it is fitted it is the identity (N(0, I) itself)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale_tril", torch.eye(dim))

    def forward(self, eps: torch.Tensor) -> torch.Tensor:
        return self.mean + eps @ self.scale_tril.T

    @torch.no_grad()
    def fit(self, means: torch.Tensor, variances: torch.Tensor | None = None) -> None:
        """Match the aggregate posterior's first two moments: the codes' mean, and the covariance of
        the posterior means plus the average posterior variance (without it the prior is narrower
        than the codes, which sharpens samples but costs likelihood). float64; a tiny ridge keeps
        the factor positive."""
        x = means.double()
        cov = torch.cov(x.T) + 1e-6 * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        if variances is not None:
            cov += torch.diag(variances.double().mean(0))
        self.mean.copy_(x.mean(0))
        self.scale_tril.copy_(torch.linalg.cholesky(cov))


class Decoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        assert config.latent_dim and config.channels and config.image_size
        self.labels = LabelEmbedding(config.num_classes, LABEL_EMBEDDING_DIM) if config.num_classes else None
        in_dim = config.latent_dim + (LABEL_EMBEDDING_DIM if self.labels else 0)
        self.body = ConvGenerator(in_dim, config.channels, config.image_size, config.width, config.norm)
        self.prior = FittedPrior(config.latent_dim) if config.prior == "fitted" else None

    def logits(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.labels is not None:
            z = self.labels.concat(z, labels)
        return self.body(z)

    def mean_image(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Mean image of the Bernoulli decoder at code z, mapped to [-1, 1] like the GANs' output."""
        return torch.sigmoid(self.logits(z, labels)) * 2 - 1

    def forward(self, eps: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """A sample: N(0, I) noise through the prior (fitted, or the standard one), decoded."""
        return self.mean_image(self.prior(eps) if self.prior is not None else eps, labels)


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
    prior="fitted",
    shape=VariationalModel,
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
    prior="fitted",
    shape=VariationalModel,
)
