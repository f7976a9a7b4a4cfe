"""WGAN-GP (Gulrajani et al. 2017): a critic that estimates the Wasserstein-1 distance, kept
1-Lipschitz by a penalty on its gradient norm at random interpolates of real and generated images.

Each training step makes N_CRITIC critic updates, each with fresh noise and interpolates, on the
step's one real batch, then one generator update; the paper draws a new real batch per critic
update, but one batch per step keeps epochs, --resume and --max-time meaning what they mean for
every objective. Defaults are the paper's: lr 1e-4, Adam betas (0, 0.9), lambda 10, 5 critic steps.
The penalty is a per-image gradient norm, which BatchNorm's batch statistics make ill-defined (the
paper's critic has none), so a critic with BatchNorm is refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from genai_cli.distributed import global_slice, wrap
from genai_cli.errors import UsageError
from genai_cli.models import AdversarialModel
from genai_cli.objectives.adversarial import AdversarialObjective
from genai_cli.objectives.base import Health, Losses, ObjectiveSpec
from genai_cli.runtime import autocast

if TYPE_CHECKING:
    from genai_cli.config import TrainConfig
    from genai_cli.distributed import World

N_CRITIC = 5
GP_WEIGHT = 10.0


class CriticLoss(nn.Module):
    """(E[D(fake)] - E[D(real)], gradient penalty) from one critic pass over real, fake and
    interpolated images. A module, so DDP wraps the whole pass, double backward included."""

    def __init__(self, critic: nn.Module) -> None:
        super().__init__()
        self.critic = critic

    def forward(self, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor | None,
                alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        tripled = labels.repeat(3) if labels is not None else None
        scores = self.critic(torch.cat([real, fake, mixed]), tripled).float()
        d_real, d_fake, d_mixed = scores.split(real.shape[0])
        (grad,) = torch.autograd.grad(d_mixed.sum(), mixed, create_graph=True)
        penalty = (grad.float().flatten(1).norm(dim=1) - 1).pow(2).mean()
        return d_fake.mean() - d_real.mean(), penalty


class WGANGPObjective(AdversarialObjective):
    loss_keys = ("loss_d", "loss_g")
    health: Health | None = None  # a critic's loss has no floor that means collapse

    def __init__(self, model: AdversarialModel, train: TrainConfig, device: torch.device, world: World) -> None:
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.discriminator.modules()):
            raise UsageError("--gan-loss wgan-gp needs a critic without BatchNorm (its gradient penalty is per image); "
                             "add --norm group or --norm none")
        super().__init__(model, train, device, world)
        self.critic_loss = wrap(CriticLoss(model.discriminator), world, device)

    def step(self, real: torch.Tensor, labels: torch.Tensor | None) -> Losses:
        n, opt_d = real.shape[0], self.optimizers["discriminator"]
        for _ in range(N_CRITIC):
            z = self.noise(n, real.device)
            alpha = global_slice(torch.rand(n * self.world.size, 1, 1, 1, device=real.device), self.world)
            with torch.no_grad(), autocast(self.device, self.precision):  # the bare G: no gradients to average
                fake = self.model.generator(z, labels)
            with autocast(self.device, self.precision):
                distance, penalty = self.critic_loss(self.augment(real), self.augment(fake.to(real.dtype)), labels, alpha)
            loss_d = distance + GP_WEIGHT * penalty
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
        z = self.noise(n, real.device)
        with autocast(self.device, self.precision):
            fake = self.generator(z, labels)
        loss_g = self.generator_step(fake, labels)
        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(),
                "wasserstein": -distance.detach(), "gradient_penalty": penalty.detach()}

    def g_loss(self, d_fake: torch.Tensor) -> torch.Tensor:
        return -d_fake.mean()


SPEC = ObjectiveSpec("wgan-gp", AdversarialModel, "wgan-gp", "wgan-gp (Wasserstein with gradient penalty)",
                     WGANGPObjective, lr=1e-4, beta1=0.0, beta2=0.9, judged=True, augments=True)
