"""Negative ELBO for the VAEs: reconstruction + beta * KL, one Adam step per batch.

The reconstruction term is the decoder's likelihood (`--likelihood`). A Bernoulli on each pixel's
intensity is the classic VAE, and its mean image is blurred wherever the code leaves the pixel in
doubt. A Gaussian with one variance shared by all pixels, set to the batch's mean squared error (its
maximum-likelihood value: the sigma-VAE of Rybkin et al. 2021, the learned variance of Dai & Wipf
2019), weighs reconstruction as much as the data allow: on Fashion-MNIST its reconstructions are
sharp, with classifier FID 16 against 40 (benchmarks/RESULTS.md, VAE likelihood).

A cvae's `--class-loss` adds a classifier, trained beside it and kept with the training state: it
learns the real images' classes and a last class for images the decoder makes from N(0, I) codes,
and the decoder learns to make images it reads as the asked class (the class-conditional VAE-GAN of
Bao et al. 2017, its discriminator and classifier in one network as in Salimans et al. 2016). With
`--best-of K` the model file carries a copy of it, which picks each sample among K candidates.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from genai_cli import images as imgs
from genai_cli.distributed import global_slice, mean_over_ranks, wrap
from genai_cli.models import GenerativeModel, VariationalModel
from genai_cli.models.vae import EM_CODES, classifier
from genai_cli.objectives.base import Health, Losses, ObjectiveSpec, SampleGrid, adam, noise_grid
from genai_cli.runtime import autocast

if TYPE_CHECKING:
    from genai_cli.config import TrainConfig
    from genai_cli.data import Batch, ImageSource
    from genai_cli.distributed import World

# What one image of `finish`'s passes (an encoder and a decoder forward, in eval mode) costs against one
# image of a training step (forward and backward): measured 0.34 (width 64) to 0.55 (width 32) on one CPU thread.
FINISH_PASS_COST = 0.5
# EM's full 100 passes over 20,000 codes took 55 s on one thread here, 1.5% of an hour; a shorter budget cuts them short.
EM_SHARE = 0.02
# The passes read at most FINISH_SHARE of a budget's worth of images: the cvae's 60,000 took a quarter of
# a one-minute budget. Never fewer than FINISH_MIN_CODES per table, so EM has codes for every component.
FINISH_SHARE, FINISH_MIN_CODES = 0.1, 1_000
CLASSIFIER_BETAS = (0.5, 0.999)  # a cvae's classifier is the decoder's adversary: a GAN discriminator's Adam (Radford et al.)


class ELBOTerms(nn.Module):
    """Per-batch reconstruction error (`reconstruction_error`) and mean KL to N(0, I), and for a cvae's
    class loss the decoder's images of drawn codes.

    A module, so that DDP can wrap every encoder and decoder pass of a step in one forward call.
    """

    def __init__(self, model: VariationalModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, real: torch.Tensor, labels: torch.Tensor | None, eps: torch.Tensor,
                drawn: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(reconstruction error, KL, and with `drawn` codes their decoded mean images under `labels`)."""
        mu, logvar = self.model.encoder(real, labels)
        z = mu + eps * torch.exp(0.5 * logvar)
        logits = self.model.decode_logits(z, labels).float()
        recon = reconstruction_error(self.model.config.likelihood, logits, (real.float() + 1) / 2)
        n = real.shape[0]
        kl = -0.5 * torch.sum(1 + logvar.float() - mu.float().pow(2) - logvar.float().exp()) / n
        return recon, kl, None if drawn is None else self.model.decoder.mean_image(drawn, labels)


class ELBOObjective:
    loss_keys = ("loss", "recon", "kl")
    health: Health | None = None  # a VAE has no adversary to win; NaNs are caught for every objective
    step_index = 0  # the run's step, set by the loop (no step of the ELBO's varies with it)

    def __init__(self, model: VariationalModel, train: TrainConfig, device: torch.device, world: World) -> None:
        assert train.lr is not None and train.beta1 is not None
        self.model, self.device, self.world, self.seed = model, device, world, train.seed
        self.precision = train.precision  # resolved by training.plan_run (None: float32)
        self.terms = wrap(ELBOTerms(model), world, device)
        self.base_lrs = {"model": train.lr}
        trained = [p for p in model.parameters() if p.requires_grad]  # a decoder's critic is a copy, not trained
        self.optimizers = {"model": adam(trained, train.lr, (train.beta1, train.beta2), device)}
        self.ema = None
        self.class_loss = train.class_loss or 0.0
        self.classifier = classifier(model.config).to(device) if self.class_loss else None
        self.companions: dict[str, nn.Module] = {}
        if self.classifier is not None:
            self.companions["classifier"] = self.classifier
            self.classify = wrap(self.classifier, world, device)
            self.base_lrs["classifier"] = train.lr
            self.optimizers["classifier"] = adam(self.classifier.parameters(), train.lr, CLASSIFIER_BETAS, device)
        self.finish_images: int | None = None  # a --max-time plan's cap on the images `finish` reads

    def sampling_model(self, source: ImageSource) -> GenerativeModel:
        """The model, its decoder's critic (`--best-of`) first brought up to the classifier as trained so far."""
        critic = self.model.decoder.critic
        if critic is not None and self.classifier is not None:
            critic.load_state_dict(self.classifier.state_dict())
        return self.model

    @torch.no_grad()
    def finish(self, source: ImageSource, deadline: float | None = None, batch: int = 500) -> None:
        """Fit what the decoder reads but training does not learn: a Gaussian decoder's variance, and
        the prior, to the posteriors of the training images (`finish_rows`; per class for a CVAE).
        The prior's EM stops early at `deadline`, which a --max-time budget sets."""
        if not self.fits_anything:
            return
        decoder, rows = self.model.decoder, self.finish_rows(source)
        means, variances = posterior_moments(self.model, source.batches_at(rows, batch, self.device))
        if self.model.config.likelihood == "gaussian":
            decoder.variance.copy_(reconstruction_mse(self.model, source.batches_at(rows, batch, self.device), means))
        if decoder.prior is not None:
            labels = source.all_labels() if self.model.conditional else None
            decoder.prior.fit(means, variances, None if labels is None else labels[rows].to(means.device),
                              seed=self.seed, deadline=deadline)

    @property
    def fits_anything(self) -> bool:
        """Whether training's end has anything to fit: a prior, or a Gaussian decoder's variance."""
        return self.model.decoder.prior is not None or self.model.config.likelihood == "gaussian"

    def finish_rows(self, source: ImageSource) -> torch.Tensor:
        """The training images `finish` reads, in dataset order: up to EM_CODES drawn at random (seeded)
        from each of the prior's tables (each class for a CVAE), the codes its EM can use (a variance
        fitted to 20,000 images is as good as one fitted to all), fewer under a short budget's plan."""
        order = torch.randperm(len(source), generator=torch.Generator().manual_seed(self.seed))
        labels = source.all_labels() if self.model.conditional else None
        classes = [] if labels is None else labels.unique()
        per_table = EM_CODES if self.finish_images is None else \
            min(EM_CODES, max(self.finish_images // max(len(classes), 1), FINISH_MIN_CODES))
        if labels is None:
            return order[:per_table].sort().values
        return torch.cat([order[labels[order] == c][:per_table] for c in classes]).sort().values

    def plan_finish(self, source: ImageSource, images_per_second: float, budget: float) -> float:
        """Fit `finish` into a --max-time budget: its passes read at most what FINISH_SHARE of the
        budget passes at training's speed, and EM gets EM_SHARE of it (stopping at its deadline).
        The seconds to keep for both."""
        if not self.fits_anything:
            return 0.0
        self.finish_images = int(FINISH_SHARE * budget * images_per_second / FINISH_PASS_COST)
        em = EM_SHARE * budget if self.model.decoder.prior is not None else 0.0
        return len(self.finish_rows(source)) * FINISH_PASS_COST / images_per_second + em

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
        eps = self.noise(real)
        drawn = self.noise(real) if self.classifier is not None else None
        with autocast(self.device, self.precision):
            recon, kl, decoded = self.terms(real, labels, eps, drawn)
        if self.model.config.likelihood == "gaussian":
            recon = gaussian_reconstruction(recon, real[0].numel(), self.world)
        loss = recon + self.model.config.beta * kl  # the negative ELBO, what "loss" reports
        losses = {"loss": loss.detach(), "recon": recon.detach(), "kl": kl.detach()}
        total = loss
        if decoded is not None:
            assert labels is not None
            loss_c, class_drawn = self.class_terms(real, decoded, labels)
            total = total + loss_c + self.class_loss * class_drawn
            losses |= {"loss_c": loss_c.detach(), "class_drawn": class_drawn.detach()}
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        total.backward()
        for opt in self.optimizers.values():
            opt.step()
        return losses

    def noise(self, real: torch.Tensor) -> torch.Tensor:
        """N(0, I) codes for this rank's batch: its slice of one global draw, so every rank's stream stays alike."""
        n = real.shape[0] * self.world.size
        return global_slice(torch.randn(n, self.model.latent_dim, device=real.device), self.world)

    def class_terms(self, real: torch.Tensor, decoded: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The classifier's loss, its cross-entropy on the real batch's classes and on the decoded images as
        its last class, "decoded"; and the decoder's term, the cross-entropy of the asked classes on the
        decoded images, read by the bare classifier (whose weights it does not train, as a GAN's G
        learns through D). A semi-supervised GAN's discriminator (Salimans et al. 2016): the decoder is
        pushed toward images of the asked class and away from what gives decoded ones away, the blur."""
        assert self.classifier is not None
        decoded_class = torch.full_like(labels, self.model.config.num_classes)
        with autocast(self.device, self.precision):
            logits = self.classify(torch.cat([real, decoded.detach()]))  # one pass: DDP syncs it once
            self.classifier.requires_grad_(False)
            drawn_logits = self.classifier(decoded)
            self.classifier.requires_grad_(True)
        loss_c = F.cross_entropy(logits.float(), torch.cat([labels, decoded_class]))
        return loss_c, F.cross_entropy(drawn_logits.float(), labels)


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


def reconstruction_error(likelihood: str | None, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A Bernoulli decoder's -log p(x | z), nats per image averaged over the batch, on [0, 1] pixels;
    for a Gaussian decoder, the batch's mean squared error per pixel (`gaussian_reconstruction`)."""
    if likelihood == "gaussian":
        return (torch.sigmoid(logits) - target).pow(2).mean()
    return F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / target.shape[0]


def gaussian_reconstruction(mse: torch.Tensor, pixels: int, world: World) -> torch.Tensor:
    """The Gaussian decoder's -log p(x | z), nats per image, at the variance where its density peaks:
    the mean squared error of the whole batch (all processes'). Its value is half the pixels times
    log(2 pi e mse); its gradient, this process's share of that, so N processes step as one does."""
    batch_mse = mean_over_ranks(mse, world)
    return 0.5 * pixels * (torch.log(2 * math.pi * batch_mse) + 1 + (mse - batch_mse) / batch_mse)


def log_likelihood(model: VariationalModel, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log p(x | z) per image, nats, for the bounds `genai eval` reports. A Gaussian decoder gives the
    probability of each pixel's 8-bit value (its density integrated over the value's 1/255 bin, the
    end bins open), so the bound is a true likelihood of the data; a Bernoulli, the classic VAE's
    number on [0, 1] intensities."""
    if model.config.likelihood == "gaussian":
        exact = torch.float32 if logits.device.type == "mps" else torch.float64  # MPS has no float64
        std = model.decoder.variance.to(exact).sqrt()
        log_p = discretized_gaussian_log_prob(target.to(exact), torch.sigmoid(logits.to(exact)), std)
        return log_p.flatten(1).sum(1)
    return -F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).sum(1)


def discretized_gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log P(pixel = x) for x in {0, 1/255, ..., 1} under N(mean, std^2) binned at the 8-bit levels.
    Both ends of a bin are taken on the side of the mean's tail they lie in (upper tails mirrored), so
    a bin far from the mean keeps its precision; log(1 - exp(d)) through expm1 keeps a narrow bin's."""
    half = 0.5 / 255
    upper = torch.where(x >= 1, math.inf, (x + half - mean) / std)
    lower = torch.where(x <= 0, -math.inf, (x - half - mean) / std)
    mirrored = lower > 0
    low, high = torch.where(mirrored, -upper, lower), torch.where(mirrored, -lower, upper)
    log_high, log_low = torch.special.log_ndtr(high), torch.special.log_ndtr(low)
    return log_high + torch.log(-torch.expm1(log_low - log_high))


SPEC = ObjectiveSpec("elbo", VariationalModel, None, "negative ELBO", ELBOObjective, takes_class_loss=True)


@torch.no_grad()
def posterior_moments(model: VariationalModel, batches: Iterable[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
    """(means, variances) of q(z|x) for every image of `batches`, in eval mode."""
    was_training = model.training
    model.eval()
    means, variances = [], []
    for images, labels in batches:
        mu, logvar = model.encoder(imgs.from_uint8(images), labels if model.conditional else None)
        means.append(mu)
        variances.append(logvar.exp())
    model.train(was_training)
    return torch.cat(means), torch.cat(variances)


@torch.no_grad()
def reconstruction_mse(model: VariationalModel, batches: Iterable[Batch], means: torch.Tensor) -> torch.Tensor:
    """Mean squared error per pixel of the decoder's mean at each image's posterior mean (`means`, in
    the order of `batches`): the Gaussian decoder's maximum-likelihood variance (at the means rather
    than sampled codes, so it is seeded by nothing; any variance gives a valid bound)."""
    was_training = model.training
    model.eval()
    total, count, start = 0.0, 0, 0
    for images, labels in batches:
        z = means[start : start + len(images)]
        mean = torch.sigmoid(model.decode_logits(z, labels if model.conditional else None).float())
        total += float((mean - images.float() / 255).pow(2).sum())
        count, start = count + images.numel(), start + len(images)
    model.train(was_training)
    return torch.tensor(total / count)
