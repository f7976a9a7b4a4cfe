"""One training step per objective: adversarial (GANs) and ELBO (VAEs).

A step takes a batch of real images in [-1, 1] (and labels), updates the model, and
returns its losses as detached device tensors; the training loop averages them and only
reads them back to the host at log time, so no step waits for the device.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from genai_cli.config import TrainConfig
from genai_cli.data import ImageSource
from genai_cli.distributed import SINGLE_PROCESS, World, global_slice, wrap
from genai_cli.models import AdversarialModel, GenerativeModel, VariationalModel
from genai_cli.runtime import autocast

Losses = dict[str, torch.Tensor]


def adam(params, lr: float, betas: tuple[float, float], device: torch.device) -> torch.optim.Adam:
    """Adam with the fused kernel where PyTorch has one (CPU and CUDA): one launch per step."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=fused)


def lr_factor(step: int, total: int, decay_start: float) -> float:
    """Constant, then linear to zero over the run's last (1 - decay_start): the averaging that
    a falling rate gives ends the run on its best weights. A function of the step alone, so a
    resumed run follows the same curve."""
    start = decay_start * total
    if step < start or total <= start:
        return 1.0
    return max(0.0, (total - step) / (total - start))


def set_learning_rates(optimizers: dict[str, torch.optim.Optimizer], base: dict[str, float], factor: float) -> None:
    for name, optimizer in optimizers.items():
        for group in optimizer.param_groups:
            group["lr"] = base[name] * factor


class EMA:
    """Exponential moving average of a module's weights (Yazici et al. 2019), buffers copied.

    The decay warms up as min(decay, (1 + t) / (10 + t)) over t updates, so a short run is
    not dominated by the initial weights. t equals the training step, so resume restores it.
    """

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.decay, self.updates = decay, 0
        self.shadow = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        self.updates += 1
        weight = 1 - min(self.decay, (1 + self.updates) / (10 + self.updates))
        for shadow, live in zip(self.shadow.parameters(), module.parameters()):
            shadow.lerp_(live, weight)
        for shadow, live in zip(self.shadow.buffers(), module.buffers()):
            shadow.copy_(live)


class AdversarialObjective:
    """Alternating D and G updates with logit losses (non-saturating BCE or hinge)."""

    def __init__(self, model: AdversarialModel, train: TrainConfig, device: torch.device, world: World) -> None:
        assert train.lr is not None and train.beta1 is not None
        betas = (train.beta1, train.beta2)
        self.model, self.device, self.loss, self.world = model, device, train.gan_loss, world
        self.ema = EMA(model.generator, train.ema) if train.ema else None
        # Under DDP, G and D's own update go through the wrappers that average gradients;
        # G's loss goes through the bare D, whose gradients nobody needs.
        self.generator = wrap(model.generator, world, device)
        self.discriminator = wrap(model.discriminator, world, device)
        self.base_lrs = {"generator": train.lr, "discriminator": train.lr_d or train.lr}
        self.optimizers = {name: adam(getattr(model, name).parameters(), lr, betas, device) for name, lr in self.base_lrs.items()}

    def step(self, real: torch.Tensor, labels: torch.Tensor | None) -> Losses:
        g, d = self.generator, self.model.discriminator
        opt_g, opt_d = self.optimizers["generator"], self.optimizers["discriminator"]
        z = global_slice(torch.randn(real.shape[0] * self.world.size, self.model.latent_dim, device=real.device), self.world)

        with autocast(self.device):
            fake = g(z, labels)
            d_real, d_fake = self.discriminator(real, labels), self.discriminator(fake.detach(), labels)
        loss_d = self._d_loss(d_real.float(), d_fake.float())
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()

        # D's weight gradients are not needed for G's update: skip computing them.
        d.requires_grad_(False)
        with autocast(self.device):
            d_fake_for_g = d(fake, labels).float()
        loss_g = -d_fake_for_g.mean() if self.loss == "hinge" else F.softplus(-d_fake_for_g).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        d.requires_grad_(True)
        if self.ema is not None:
            self.ema.update(self.model.generator)

        return {
            "loss_d": loss_d.detach(),
            "loss_g": loss_g.detach(),
            "d_real": torch.sigmoid(d_real.detach().float()).mean(),
            "d_fake": torch.sigmoid(d_fake.detach().float()).mean(),
        }

    def finish(self, source: ImageSource, device: torch.device) -> None:
        """Nothing to do once training ends: the generator is what users sample."""

    def sampling_model(self) -> GenerativeModel:
        """The model users get: the moving-average generator when there is one."""
        if self.ema is None:
            return self.model
        return AdversarialModel(self.model.config, self.ema.shadow, self.model.discriminator)

    def _d_loss(self, d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
        if self.loss == "hinge":
            return F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
        # softplus(-x) == BCE-with-logits(x, 1); softplus(x) == BCE-with-logits(x, 0)
        return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()


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
    """Negative ELBO = reconstruction + beta * KL, one Adam step per batch."""

    def __init__(self, model: VariationalModel, train: TrainConfig, device: torch.device, world: World) -> None:
        assert train.lr is not None and train.beta1 is not None
        self.model, self.device, self.world = model, device, world
        self.terms = wrap(ELBOTerms(model), world, device)
        self.base_lrs = {"model": train.lr}
        self.optimizers = {"model": adam(model.parameters(), train.lr, (train.beta1, train.beta2), device)}
        self.ema = None

    def sampling_model(self) -> GenerativeModel:
        return self.model

    @torch.no_grad()
    def finish(self, source: ImageSource, device: torch.device, batch: int = 500) -> None:
        """Fit the decoder's prior (if it has one) to the posterior means of every training image."""
        prior = self.model.decoder.prior
        if prior is None:
            return
        was_training = self.model.training
        self.model.eval()
        codes = [self.model.encoder(images.float() / 127.5 - 1, labels if self.model.conditional else None)[0]
                 for images, labels in source.in_order(batch, device)]
        self.model.train(was_training)
        prior.fit(torch.cat(codes))

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


Objective = AdversarialObjective | ELBOObjective


def make_objective(model: GenerativeModel, train: TrainConfig, device: torch.device, world: World = SINGLE_PROCESS) -> Objective:
    if isinstance(model, AdversarialModel):
        return AdversarialObjective(model, train, device, world)
    if isinstance(model, VariationalModel):
        return ELBOObjective(model, train, device, world)
    raise TypeError(f"no training objective for {type(model).__name__}")
