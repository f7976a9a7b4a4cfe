"""Sample-quality metrics on feature vectors, as the papers define them.

All functions take float64 feature matrices (rows are images) and return plain floats, so
they are easy to check against a direct numpy/scipy computation.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy import linalg

PR_K, DC_K, IS_SPLITS = 3, 5, 10  # the papers' defaults, stated in every eval result
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000  # Binkowski et al.'s; subsets shrink to the smaller set when it has fewer
CHUNK = 2048  # rows of a distance matrix held at once: k-NN metrics use memory linear in the set sizes


def mean_cov(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    x = features.double().numpy()
    return x.mean(axis=0), np.cov(x, rowvar=False)


@dataclass(frozen=True)
class Statistics:
    """A reference set known only by its feature mean and covariance (pytorch-fid's .npz): all that
    FID needs. Sized like the feature matrix it summarises, so size checks treat both alike."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int  # images behind the statistics; 0 when the file does not say (taken as enough for a full covariance)

    def __len__(self) -> int:
        return self.n or len(self.mu) + 1

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, len(self.mu))


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(C1 + C2 - 2 (C1 C2)^1/2) (Heusel et al. 2017), with scipy's sqrtm.

    A singular product gets a small diagonal offset, and an imaginary part beyond rounding
    is an error rather than silently dropped.
    """
    with warnings.catch_warnings():  # fewer samples than dimensions make C1 C2 singular: the caller says so once
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(cov1 @ cov2)
        if not np.isfinite(covmean).all():
            offset = np.eye(len(cov1)) * 1e-6
            covmean = linalg.sqrtm((cov1 + offset) @ (cov2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"matrix square root has imaginary part {np.max(np.abs(covmean.imag)):.3g}")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(covmean))


def fid(real: torch.Tensor | Statistics, fake: torch.Tensor) -> float:
    reference = (real.mu, real.sigma) if isinstance(real, Statistics) else mean_cov(real)
    return frechet_distance(*reference, *mean_cov(fake))


def kid(real: torch.Tensor, fake: torch.Tensor, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2 with the kernel
    k(x, y) = (x.y / d + 1)^3, averaged over random subsets. Returns (mean, std)."""
    rng = np.random.default_rng(seed)
    x, y = real.double().numpy(), fake.double().numpy()
    m = min(subset_size, len(x), len(y))
    d = x.shape[1]
    values = []
    for _ in range(subsets):
        a, b = x[rng.choice(len(x), m, replace=False)], y[rng.choice(len(y), m, replace=False)]
        kxx, kyy, kxy = (a @ a.T / d + 1) ** 3, (b @ b.T / d + 1) ** 3, (a @ b.T / d + 1) ** 3
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values.append(within - 2 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))


def inception_score(logits: torch.Tensor, splits: int = IS_SPLITS) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) over `splits` equal parts (Salimans et al. 2016): (mean, std)."""
    probs = torch.softmax(logits.double(), dim=1)
    scores = []
    for part in probs.chunk(splits):
        marginal = part.mean(dim=0, keepdim=True)
        kl = (part * (torch.log(part + 1e-12) - torch.log(marginal + 1e-12))).sum(dim=1).mean()
        scores.append(math.exp(float(kl)))
    return float(np.mean(scores)), float(np.std(scores))


def _kth_neighbour_radius(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest other point of the same set, CHUNK rows at a time."""
    # +1: the point itself is at distance 0
    return torch.cat([torch.cdist(x[i : i + CHUNK], x).kthvalue(k + 1, dim=1).values for i in range(0, len(x), CHUNK)])


def _real_balls(real: torch.Tensor, fake: torch.Tensor, r_real: torch.Tensor,
                r_fake: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One pass over real×fake distances, CHUNK real rows at a time: per fake point, how many real
    k-NN balls hold it; per real ball, whether it holds a fake point; per real point, whether some
    fake ball (radii r_fake) holds it."""
    counts = torch.zeros(len(fake), dtype=torch.long)
    covered, recalled = [], []
    for i in range(0, len(real), CHUNK):
        d = torch.cdist(real[i : i + CHUNK], fake)
        inside = d <= r_real[i : i + CHUNK, None]
        counts += inside.sum(dim=0)
        covered.append(inside.any(dim=1))
        if r_fake is not None:
            recalled.append((d <= r_fake[None, :]).any(dim=1))
    return counts, torch.cat(covered), torch.cat(recalled) if r_fake is not None else None


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = PR_K) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019).

    precision: share of generated points inside some real point's k-NN ball;
    recall: share of real points inside some generated point's k-NN ball.
    """
    real, fake = real.float(), fake.float()
    counts, _, recalled = _real_balls(real, fake, _kth_neighbour_radius(real, k), _kth_neighbour_radius(fake, k))
    assert recalled is not None
    return float((counts > 0).float().mean()), float(recalled.float().mean())


def density_coverage(real: torch.Tensor, fake: torch.Tensor, k: int = DC_K) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020), with k-NN balls around real points only.

    density: mean number of real balls containing each generated point, divided by k;
    coverage: share of real balls that contain at least one generated point.
    """
    real, fake = real.float(), fake.float()
    counts, covered, _ = _real_balls(real, fake, _kth_neighbour_radius(real, k))
    return float(counts.float().mean() / k), float(covered.float().mean())


# ---------------------------------------------------------------- paired images (translation models)

SSIM_WINDOW, SSIM_SIGMA = 11, 1.5  # Wang et al. (2004)
SSIM_C1, SSIM_C2 = 0.01**2, 0.03**2  # (K * L)^2 with L = 1: intensities in [0, 1]
PSNR_CAP = 100.0  # dB for an exact match, where 10 log10(1 / 0) is infinite


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of float N×C×H×W images in [0, 1]: a Gaussian window (11×11, σ 1.5) over the
    valid region, channels averaged, as Wang et al. (2004) and scikit-image's gaussian_weights=True."""
    coords = torch.arange(SSIM_WINDOW, dtype=torch.float64) - SSIM_WINDOW // 2
    g = torch.exp(-coords**2 / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    channels = x.shape[1]
    window = (g[:, None] * g[None, :]).expand(channels, 1, SSIM_WINDOW, SSIM_WINDOW)
    x, y = x.double(), y.double()
    blur = lambda t: torch.nn.functional.conv2d(t, window, groups=channels)  # noqa: E731
    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y, cov = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2, blur(x * y) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)) / ((mu_x**2 + mu_y**2 + SSIM_C1) * (var_x + var_y + SSIM_C2))
    return s.flatten(1).mean(1)


def paired(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """L1, PSNR (dB, per image then averaged) and SSIM of uint8 outputs against their targets, on [0, 1]."""
    x, y = outputs.double() / 255, targets.double() / 255
    mse = (x - y).pow(2).flatten(1).mean(1)
    psnr = torch.where(mse > 0, 10 * torch.log10(1 / mse.clamp_min(1e-300)), torch.tensor(PSNR_CAP, dtype=torch.float64))
    small = min(x.shape[-2:]) < SSIM_WINDOW  # smaller than the window: padding adds no information, so refuse it
    return {
        "l1": float((x - y).abs().mean()),
        "psnr": float(psnr.clamp(max=PSNR_CAP).mean()),
        "ssim": math.nan if small else float(ssim(x, y).mean()),
    }
