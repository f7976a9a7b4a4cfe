"""Convolutional VAE (Kingma & Welling 2014) and its label-conditioned variant (CVAE).

The encoder is the DCGAN feature stack followed by linear heads for mu and log-variance;
the decoder is the DCGAN generator producing logits whose sigmoid is the image's mean in [0, 1].
Its likelihood (genai_cli.objectives.elbo) is a Gaussian around that mean with one shared
variance (the default: sharp images) or a Bernoulli on each pixel's intensity (the classic VAE).
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from genai_cli.config import ModelConfig
from genai_cli.models.base import ModelSpec, VariationalModel
from genai_cli.models.blocks import ConvClassifier, ConvEncoder, ConvGenerator, LabelEmbedding

LABEL_EMBEDDING_DIM = 16
LIKELIHOODS = ("gaussian", "bernoulli")  # p(x | z) of the decoder; the objective computes each


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
    """A mixture of Gaussians fitted to the training set's codes once training ends (ex-post density
    estimation, Ghosh et al. 2020): a VAE's codes do not fill N(0, I), and decoding the regions between
    them gives the blurry, off-manifold samples. One Gaussian matching the codes' moments halves that
    gap; 100 components close most of it (benchmarks/RESULTS.md, VAE prior). A CVAE gets one mixture
    per class, fitted to that class's codes: its encoder sees the image, so the codes still carry the
    class, and a code drawn from the pooled density with the label of another class decodes as neither.

    It maps N(0, I) noise, so seeds, sampling and export keep their interface: the angle of the first
    two noise coordinates picks a component (an angle is uniform and independent of the radius) and,
    stretched back over the full turn, stays uniform and independent of the choice, so the noise that
    the component's Gaussian then shapes is exactly N(0, I). Until fitted it is N(0, I) itself."""

    def __init__(self, dim: int, classes: int = 0, components: int = 1) -> None:
        super().__init__()
        assert components == 1 or dim >= 2, "picking a component takes two noise coordinates"
        tables = max(classes, 1)
        self.register_buffer("weights", torch.zeros(tables, components))
        self.register_buffer("mean", torch.zeros(tables, components, dim))
        self.register_buffer("scale_tril", torch.zeros(tables, components, dim, dim))
        self.reset()

    @torch.no_grad()
    def reset(self) -> None:
        """N(0, I) in every table: all weight on a first component of mean 0 and identity factor."""
        self.weights.zero_()
        self.weights[:, 0] = 1
        self.mean.zero_()
        self.scale_tril.copy_(torch.eye(self.mean.shape[-1]).expand_as(self.scale_tril))

    def forward(self, eps: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        tables, components = self.weights.shape
        table = labels if labels is not None and tables > 1 else torch.zeros_like(eps[:, 0], dtype=torch.long)
        if components > 1:
            component, eps = _pick_component(eps, self.weights[table])
            table = table * components + component
        mean = self.mean.flatten(0, 1)[table]
        scale_tril = self.scale_tril.flatten(0, 1)[table]
        return mean + (scale_tril @ eps.unsqueeze(-1)).squeeze(-1)

    def distribution(self, labels: torch.Tensor | None = None) -> torch.distributions.MixtureSameFamily:
        """p(z), or p(z | label) per row, for the likelihood bounds."""
        rows = labels if labels is not None and len(self.weights) > 1 else 0
        return torch.distributions.MixtureSameFamily(
            torch.distributions.Categorical(probs=self.weights[rows]),
            torch.distributions.MultivariateNormal(self.mean[rows], scale_tril=self.scale_tril[rows]))

    @torch.no_grad()
    def fit(self, means: torch.Tensor, variances: torch.Tensor | None = None, labels: torch.Tensor | None = None,
            components: int | None = None, seed: int = 0, deadline: float | None = None) -> None:
        """Fit each table (per class with `labels`) to the aggregate posterior, the mixture of the codes'
        Gaussians N(means, diag(variances)), with up to `components` of its mixture (all by default; the
        rest get weight 0). A class with fewer than two codes takes the pooled fit. By `deadline`
        (time.monotonic()), each table's EM sharing the time left equally, EM stops early."""
        k = self.weights.shape[1] if components is None else components
        tables = len(self.weights)
        for table in range(tables):
            rows = labels == table if labels is not None and tables > 1 else slice(None)
            if len(means[rows]) < 2:  # too few codes of its own
                rows = slice(None)
            share = None if deadline is None else time.monotonic() + (deadline - time.monotonic()) / (tables - table)
            fit = fit_mixture(means[rows], None if variances is None else variances[rows], k, seed, share)
            self.weights[table] = 0
            for buffer, value in zip((self.weights, self.mean, self.scale_tril), fit):
                buffer[table, :k] = value

    def upgrade_tensors(self, prefix: str, tensors: dict[str, torch.Tensor]) -> None:
        """Files written before mixtures hold one Gaussian per class, (classes, dim), and those before
        per-class priors one (dim,) Gaussian for every class: both sample exactly what they sampled."""
        stored = tensors.get(prefix + "mean")
        if stored is None or stored.dim() == self.mean.dim():
            return
        for name, buffer in (("mean", self.mean), ("scale_tril", self.scale_tril)):
            old = tensors[prefix + name]
            old = old.unsqueeze(-2 if name == "mean" else -3) if old.dim() == buffer.dim() - 1 else old
            tensors[prefix + name] = old.expand(buffer.shape).clone()
        tensors[prefix + "weights"] = torch.ones(self.weights.shape)


def _pick_component(eps: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(component per row drawn with `weights` (rows x components), eps with its first two coordinates
    re-drawn): the angle u of (eps0, eps1), a uniform fraction of a turn, falls in one component's share
    of [0, 1); where in that share it fell is uniform again and becomes the new angle. Only elementwise
    ops and gathers, so the exported graph (ONNX, pt2) keeps the mixture."""
    turn = torch.atan2(eps[:, 1], eps[:, 0]) / (2 * math.pi) % 1.0
    ends = weights.cumsum(1)
    component = (turn.unsqueeze(1) >= ends[:, :-1]).sum(1)
    start = (ends - weights).gather(1, component.unsqueeze(1)).squeeze(1)
    share = weights.gather(1, component.unsqueeze(1)).squeeze(1).clamp_min(1e-12)
    angle = 2 * math.pi * (turn - start) / share
    radius = eps[:, :2].norm(dim=1)
    return component, torch.cat([torch.stack([radius * angle.cos(), radius * angle.sin()], 1), eps[:, 2:]], 1)


EM_ITERATIONS, EM_TOLERANCE = 100, 1e-4  # EM stops when a pass gains less than this (nats per code)
EM_CODES = 20_000  # codes a mixture is fitted to, drawn at random past that: EM's cost is codes x components x dim^2


def fit_mixture(means: torch.Tensor, variances: torch.Tensor | None, k: int, seed: int = 0,
                deadline: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weights, means, Cholesky factors) of k Gaussians fitted by EM to the codes, each code a Gaussian
    N(mean, diag(variance)): responsibilities from the means, and each component's covariance adds its
    codes' average variance (without it the prior is narrower than the codes, which sharpens samples
    but costs likelihood). k = 1 is moment matching. float64 on the CPU, seeded; a tiny ridge keeps
    every factor positive. Past `deadline` (time.monotonic()) EM stops after its current pass: every
    pass leaves a valid mixture, each better than the last."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randperm(len(means), generator=generator)[:EM_CODES] if len(means) > EM_CODES else slice(None)
    x = means.detach()[rows].double().cpu()
    v = None if variances is None else variances.detach()[rows].double().cpu()
    n, dim = x.shape
    ridge = 1e-6 * torch.eye(dim, dtype=x.dtype)
    centres = _spread_centres(x, k, generator)
    covs = (torch.cov(x.T).reshape(dim, dim) + ridge).expand(k, dim, dim).clone()
    weights = torch.full((k,), 1.0 / k, dtype=x.dtype)
    previous = -math.inf
    for _ in range(EM_ITERATIONS if k > 1 else 1):
        resp, loglik = _responsibilities(x, weights, centres, covs) if k > 1 else (torch.ones(n, 1, dtype=x.dtype), 0.0)
        mass = resp.sum(0)
        safe = mass.clamp_min(torch.finfo(x.dtype).tiny)
        weights, centres = mass / n, (resp.T @ x) / safe[:, None]
        covs = torch.stack([_scatter(x, centre, r) / m for centre, r, m in zip(centres, resp.T, safe)]) + ridge
        if v is not None:
            covs += torch.diag_embed((resp.T @ v) / safe[:, None])
        if loglik - previous < EM_TOLERANCE or (deadline is not None and time.monotonic() >= deadline):
            break
        previous = loglik
    return weights, centres, torch.linalg.cholesky(covs)


# The N x dim^2 products below run in float32 on codes centred first, so nothing large cancels:
# twice as fast as float64, and the sums and factorisations around them stay float64.
def _mahalanobis(x: torch.Tensor, centre: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    diff = (x - centre).float()
    return ((diff @ precision.float()) * diff).sum(1).double()


def _scatter(x: torch.Tensor, centre: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_n weights_n (x_n - centre)(x_n - centre)^T."""
    diff = (x - centre).float()
    return ((diff.T * weights.float()) @ diff).double()


def _spread_centres(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k codes to start EM from, each drawn with odds the squared distance to the nearest one drawn
    before (k-means++, Arthur & Vassilvitskii 2007): random codes often start two components in one
    cluster and leave one component straddling two, a state EM does not leave."""
    chosen = [int(torch.randint(len(x), (1,), generator=generator))]
    nearest = (x - x[chosen[0]]).pow(2).sum(1)
    for _ in range(k - 1):
        odds = nearest if nearest.sum() > 0 else torch.ones_like(nearest)  # every code drawn: repeats share theirs
        chosen.append(int(torch.multinomial(odds, 1, generator=generator)))
        nearest = torch.minimum(nearest, (x - x[chosen[-1]]).pow(2).sum(1))
    return x[chosen]


def _responsibilities(x: torch.Tensor, weights: torch.Tensor, centres: torch.Tensor,
                      covs: torch.Tensor) -> tuple[torch.Tensor, float]:
    """E-step: each code's posterior over the components, and the codes' mean log-likelihood. One
    component at a time through its precision matrix: several times faster here than a batched
    MultivariateNormal, and N x dim of memory instead of N x K x dim."""
    factors = torch.linalg.cholesky(covs)
    precisions = torch.cholesky_inverse(factors)
    log_norm = weights.clamp_min(torch.finfo(x.dtype).tiny).log() - factors.diagonal(dim1=-2, dim2=-1).log().sum(-1) \
        - 0.5 * x.shape[1] * math.log(2 * math.pi)
    joint = torch.stack([-0.5 * _mahalanobis(x, centre, precision) for centre, precision in zip(centres, precisions)], 1)
    joint = joint + log_norm
    total = torch.logsumexp(joint, 1, keepdim=True)
    return (joint - total).exp(), float(total.mean())


class Decoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        assert config.latent_dim and config.channels and config.image_size
        self.labels = LabelEmbedding(config.num_classes, LABEL_EMBEDDING_DIM) if config.num_classes else None
        in_dim = config.latent_dim + (LABEL_EMBEDDING_DIM if self.labels else 0)
        self.body = ConvGenerator(in_dim, config.channels, config.image_size, config.width, config.norm,
                                  num_classes=config.num_classes if config.class_norm else 0)
        self.prior = FittedPrior(config.latent_dim, config.num_classes, config.prior_components or 1) \
            if config.prior == "fitted" else None
        if config.likelihood == "gaussian":  # its pixels' variance, fitted when training ends; the bounds read it
            self.register_buffer("variance", torch.ones(()))
        self.critic = None
        if (config.best_of or 1) > 1:  # a copy of the classifier training keeps beside it (objectives.elbo)
            self.critic = classifier(config).requires_grad_(False)
            self.register_buffer("turns", noise_turns(config.best_of, config.latent_dim))

    def logits(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.labels is not None:
            z = self.labels.concat(z, labels)
        return self.body(z, labels)

    def mean_image(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Mean image of the decoder at code z, mapped to [-1, 1] like the GANs' output."""
        return torch.sigmoid(self.logits(z, labels)) * 2 - 1

    def draw(self, eps: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """N(0, I) noise through the prior (fitted, or the standard one), decoded."""
        return self.mean_image(self.prior(eps, labels) if self.prior is not None else eps, labels)

    def forward(self, eps: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """A sample; with a critic, the one of `best_of` candidates it reads as most surely the asked class
        (and least as decoded). The candidates' noise is eps turned by fixed rotations, each again exactly
        N(0, I), so a seed still names one sample and export keeps the one input."""
        if self.critic is None or len(self.turns) == 1:
            return self.draw(eps, labels)
        assert labels is not None, "a critic picks by the asked class"
        k, n = self.turns.shape[0], eps.shape[0]
        every = self.draw(torch.einsum("kij,nj->kni", self.turns, eps).flatten(0, 1), labels.repeat(k))
        sure = self.critic(every).float().log_softmax(1).view(k, n, -1)
        sure = sure.gather(2, labels.view(1, n, 1).expand(k, n, 1))  # k x n x 1: log p(asked class | candidate)
        flat = every.view(k, n, -1)
        return flat.gather(0, sure.argmax(0, keepdim=True).expand(1, n, flat.shape[2])).view(n, *every.shape[1:])

    def pick_best_of(self, k: int) -> None:
        """Pick among k candidates from now on, not the count trained with (`sample/eval/export --best-of`).
        The turns come in a fixed order, so a seed's candidates at k are the first k of its candidates at
        more. The decoder is then what a config with `best_of=k` builds: at 1, the plain one, with no
        classifier left for an export to ship."""
        assert self.critic is not None, "only a decoder with a critic picks"
        if k == 1:
            self.critic = None
            del self.turns
        else:
            self.turns = noise_turns(k, self.turns.shape[1]).to(self.turns.device)


def classifier(config: ModelConfig) -> ConvClassifier:
    """The classifier a cvae's class loss trains beside it, as wide as its encoder: the classes and "decoded"."""
    assert config.channels and config.image_size and config.num_classes
    return ConvClassifier(config.channels, config.image_size, config.width, config.num_classes + 1)


def noise_turns(k: int, dim: int) -> torch.Tensor:
    """k fixed orthogonal dim x dim matrices, the first the identity (best-of-1 is the plain sample): a
    rotation keeps N(0, I) as it is, so each turned copy of a noise vector is a full draw of its own.
    Drawn on the CPU from a fixed seed, also where the model is being built on the meta device."""
    generator = torch.Generator().manual_seed(0)
    turns = [torch.eye(dim, device="cpu")]
    turns += [torch.linalg.qr(torch.randn(dim, dim, generator=generator, device="cpu"))[0] for _ in range(k - 1)]
    return torch.stack(turns)


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
    prior_components=100,
    likelihood="gaussian",
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
    prior_components=10,
    likelihood="gaussian",
    # Labels in every BatchNorm of the decoder: the short recipe's worst class 0.73 against 0.64, but over
    # the hour 0.79 against 0.83 (FID 9.21 against 9.35), so off by default (benchmarks/RESULTS.md).
    class_norm=False,
    # A classifier beside it, which also learns to tell decoded images, sharpens them (objectives.elbo). At a
    # third of the images a second, in 5 minutes: classifier FID 10.8 against 14.6, worst class judged right
    # 0.85 as often as real images against 0.72 (weight 30: 12.7 and 0.82; 3: 10.2 and 0.83); over the hour
    # 8.36 against 9.35 and 0.90 against 0.83, at the same NLL (benchmarks/RESULTS.md).
    class_loss=10.0,
    # Each sample the better of two draws by that classifier's reading (a copy in the model file). Over the
    # bf16 hour the worst class went from 0.95 to 1.00 times as recognisable as real images, for classifier FID
    # 7.45 against 6.91 and recall 0.618 against 0.623; four draws cost more (11.4) (benchmarks/RESULTS.md).
    best_of=2,
    shape=VariationalModel,
    short_budget=SHORT_BUDGET,
)
