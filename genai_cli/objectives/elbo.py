"""Negative ELBO for the VAEs: reconstruction + beta * KL, one Adam step per batch."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from genai_cli import images as imgs
from genai_cli.distributed import global_slice, wrap
from genai_cli.models import GenerativeModel, VariationalModel
from genai_cli.objectives.base import Health, Losses, ObjectiveSpec, SampleGrid, adam, noise_grid
from genai_cli.runtime import autocast

if TYPE_CHECKING:
    from genai_cli.config import TrainConfig
    from genai_cli.data import ImageSource
    from genai_cli.distributed import World


class ELBOTerms(nn.Module):
    """Per-batch mean reconstruction (nats, Bernoulli on [0, 1] pixels) and KL to N(0, I).

    A module, so that DDP can wrap the whole encoder-decoder pass in one forward call.
    """

    def __init__(self, model: VariationalModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, real: torch.Tensor, labels: torch.Tensor | None, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.model.encoder(real, labels)
        z = mu + eps * torch.exp(0.5 * logvar)
        logits = self.model.decode_logits(z, labels).float()
        target = (real.float() + 1) / 2
        n = real.shape[0]
        recon = F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / n
        kl = -0.5 * torch.sum(1 + logvar.float() - mu.float().pow(2) - logvar.float().exp()) / n
        return recon, kl


class ELBOObjective:
    loss_keys = ("loss", "recon", "kl")
    health: Health | None = None  # a VAE has no adversary to win; NaNs are caught for every objective

    def __init__(self, model: VariationalModel, train: TrainConfig, device: torch.device, world: World) -> None:
        assert train.lr is not None and train.beta1 is not None
        self.model, self.device, self.world = model, device, world
        self.terms = wrap(ELBOTerms(model), world, device)
        self.base_lrs = {"model": train.lr}
        self.optimizers = {"model": adam(model.parameters(), train.lr, (train.beta1, train.beta2), device)}
        self.ema = None

    def sampling_model(self, source: ImageSource) -> GenerativeModel:
        return self.model

    @torch.no_grad()
    def finish(self, source: ImageSource, batch: int = 500) -> None:
        """Fit the decoder's prior (if it has one) to the posteriors of every training image (per class for a CVAE)."""
        prior = self.model.decoder.prior
        if prior is None:
            return
        means, variances = posterior_moments(self.model, source, self.device, batch)
        labels = source.all_labels() if self.model.conditional else None
        prior.fit(means, variances, None if labels is None else labels.to(means.device))

    def sample_grid(self, source: ImageSource) -> SampleGrid:
        return noise_grid(self.model)

    def extra_pictures(self, source: ImageSource, seed: int, rows: int = 4, per_row: int = 8) -> dict[str, bytes]:
        """reconstructions.png: the first images of the first batch on top, their reconstructions below,
        in whole rows each (the report shows the two halves apart)."""
        count = min(rows * per_row, len(source))
        count -= count % min(per_row, count)
        per_row = min(per_row, count)
        images, labels = next(source.epoch_batches(0, count, seed, torch.device("cpu")))
        recon = reconstruct(self.model, images, labels, self.device)
        return {"reconstructions.png": imgs.png_bytes(imgs.grid(torch.cat([images, recon]), per_row))}

    def step(self, real: torch.Tensor, labels: torch.Tensor | None) -> Losses:
        n, latent = real.shape[0], self.model.latent_dim
        eps = global_slice(torch.randn(n * self.world.size, latent, device=real.device), self.world)
        with autocast(self.device):
            recon, kl = self.terms(real, labels, eps)
        loss = recon + self.model.config.beta * kl
        opt = self.optimizers["model"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.detach(), "recon": recon.detach(), "kl": kl.detach()}


@torch.no_grad()
def reconstruct(model: VariationalModel, images: torch.Tensor, labels: torch.Tensor | None,
                device: torch.device) -> torch.Tensor:
    """uint8 reconstructions (decoder mean at the posterior mean) of uint8 images."""
    was_training = model.training
    model.eval()
    try:
        real = imgs.from_uint8(images.to(device))
        lb = labels.to(device) if labels is not None else None
        mu, _ = model.encoder(real, lb)
        return imgs.to_uint8(model.decoder.mean_image(mu, lb)).cpu()
    finally:
        model.train(was_training)


SPEC = ObjectiveSpec("elbo", VariationalModel, None, "negative ELBO", ELBOObjective)


@torch.no_grad()
def posterior_moments(model: VariationalModel, source: ImageSource, device: torch.device,
                      batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """(means, variances) of q(z|x) for every image of `source`, in eval mode."""
    was_training = model.training
    model.eval()
    means, variances = [], []
    for images, labels in source.in_order(batch, device):
        mu, logvar = model.encoder(imgs.from_uint8(images), labels if model.conditional else None)
        means.append(mu)
        variances.append(logvar.exp())
    model.train(was_training)
    return torch.cat(means), torch.cat(variances)
