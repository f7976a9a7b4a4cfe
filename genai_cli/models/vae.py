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
    the blurry, off-manifold samples. A CVAE gets one Gaussian per class, fitted to that class's codes:
    its encoder sees the image, so the codes still carry the class, and a code drawn from the pooled
    Gaussian with the label of another class decodes as neither. It maps N(0, I) noise, so seeds,
    sampling and export keep their interface; until it is fitted it is the identity (N(0, I) itself)."""

    def __init__(self, dim: int, classes: int = 0) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(max(classes, 1), dim))
        self.register_buffer("scale_tril", torch.eye(dim).repeat(max(classes, 1), 1, 1))

    def forward(self, eps: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is None or len(self.mean) == 1:
            return self.mean[0] + eps @ self.scale_tril[0].T
        return self.mean[labels] + (self.scale_tril[labels] @ eps.unsqueeze(-1)).squeeze(-1)

    def distribution(self, labels: torch.Tensor | None = None) -> torch.distributions.MultivariateNormal:
        """p(z), or p(z | label) per row, for the likelihood bounds."""
        if labels is None or len(self.mean) == 1:
            return torch.distributions.MultivariateNormal(self.mean[0], scale_tril=self.scale_tril[0])
        return torch.distributions.MultivariateNormal(self.mean[labels], scale_tril=self.scale_tril[labels])

    @torch.no_grad()
    def fit(self, means: torch.Tensor, variances: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> None:
        """Match the aggregate posterior's first two moments (per class with `labels`): the codes' mean,
        and the covariance of the posterior means plus the average posterior variance (without it the
        prior is narrower than the codes, which sharpens samples but costs likelihood). A class with
        fewer than two codes keeps the pooled fit. float64; a tiny ridge keeps the factor positive."""
        pooled = _moments(means, variances)
        for k in range(len(self.mean)):
            rows = labels == k if labels is not None and len(self.mean) > 1 else slice(None)
            fit = _moments(means[rows], None if variances is None else variances[rows]) if len(means[rows]) > 1 else pooled
            self.mean[k], self.scale_tril[k] = fit

    def upgrade_tensors(self, prefix: str, tensors: dict[str, torch.Tensor]) -> None:
        """Files written before per-class priors hold one (dim,) Gaussian: every class gets it, which
        samples exactly what those files sampled."""
        for name, buffer in (("mean", self.mean), ("scale_tril", self.scale_tril)):
            stored = tensors.get(prefix + name)
            if stored is not None and stored.dim() == buffer.dim() - 1:
                tensors[prefix + name] = stored.expand(buffer.shape).clone()


def _moments(means: torch.Tensor, variances: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    x = means.double()
    cov = torch.cov(x.T) + 1e-6 * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    if variances is not None:
        cov += torch.diag(variances.double().mean(0))
    return x.mean(0), torch.linalg.cholesky(cov)


class Decoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        assert config.latent_dim and config.channels and config.image_size
        self.labels = LabelEmbedding(config.num_classes, LABEL_EMBEDDING_DIM) if config.num_classes else None
        in_dim = config.latent_dim + (LABEL_EMBEDDING_DIM if self.labels else 0)
        self.body = ConvGenerator(in_dim, config.channels, config.image_size, config.width, config.norm)
        self.prior = FittedPrior(config.latent_dim, config.num_classes) if config.prior == "fitted" else None

    def logits(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.labels is not None:
            z = self.labels.concat(z, labels)
        return self.body(z)

    def mean_image(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Mean image of the Bernoulli decoder at code z, mapped to [-1, 1] like the GANs' output."""
        return torch.sigmoid(self.logits(z, labels)) * 2 - 1

    def forward(self, eps: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """A sample: N(0, I) noise through the prior (fitted, or the standard one), decoded."""
        return self.mean_image(self.prior(eps, labels) if self.prior is not None else eps, labels)


# --max-time up to 10 min: half the width runs 2.3x the images a second, batch 64 takes twice the
# steps for them, and a linear decay over the second half settles the weights: test ELBO -240.6 in
# 300 s of one thread against -245.3 for width 64 and batch 128, and ahead of pytorch/examples' VAE
# at 60 s, 5 and 10 min (benchmarks/RESULTS.md, VAE at equal wall time)
SHORT_BUDGET = (600.0, {"model.width": 32, "train.batch_size": 64, "train.lr_decay_start": 0.5})


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
    short_budget=SHORT_BUDGET,
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
    short_budget=SHORT_BUDGET,
)
