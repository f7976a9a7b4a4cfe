"""Alternating D and G updates with logit losses: non-saturating BCE or hinge."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from genai_cli.augment import augment
from genai_cli.distributed import global_slice, wrap
from genai_cli.models import AdversarialModel, GenerativeModel
from genai_cli.objectives.base import (
    EMA,
    Health,
    Losses,
    ObjectiveSpec,
    SampleGrid,
    adam,
    noise_grid,
    standing_statistics,
)
from genai_cli.runtime import autocast

if TYPE_CHECKING:
    from genai_cli.config import TrainConfig
    from genai_cli.data import ImageSource
    from genai_cli.distributed import World

# A discriminator whose loss stays below 0.01 for 500 steps has won: G learns nothing.
COLLAPSE = Health("loss_d", 0.01, 500, "discriminator collapse",
                  "so the generator gets no useful gradient; try a lower --lr-d, --gan-loss hinge, --r1 1, "
                  "or resume an earlier checkpoint")
# R1 is lazy (Karras et al. 2020, StyleGAN2): every 16th D step, weighted 16 times, costs a sixteenth
# of the double backward and trains as well as every step.
R1_INTERVAL = 16


def judge(discriminator: nn.Module, images: torch.Tensor, labels: torch.Tensor | None,
          classify: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """D's logits for `images` and, when `classify`, its class logits (a cgan's projection D; else None)."""
    if classify:
        return discriminator(images, labels, classes=True)
    return discriminator(images, labels), None


class DiscriminatorPass(nn.Module):
    """D's logits for a real and a generated batch, each batch on its own (BatchNorm's statistics
    stay per batch) and, when asked, R1: the real images' mean squared gradient norm (Mescheder
    et al. 2018), taken at the images D sees (after --augment). A module, so DDP wraps the double
    backward too. With BatchNorm in D each image's gradient also holds its share of the batch's
    statistics: a batch-level penalty, not the paper's per-image one (its D has no BatchNorm)."""

    def __init__(self, discriminator: nn.Module) -> None:
        super().__init__()
        self.discriminator = discriminator

    def forward(self, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor | None, penalise: bool,
                classify: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(d_real, d_fake, R1 or None, with `classify` D's class logits of the real images or None)."""
        real = real.detach().requires_grad_(True) if penalise else real
        d_real, real_classes = judge(self.discriminator, real, labels, classify)
        d_fake = self.discriminator(fake, labels)
        if not penalise:
            return d_real, d_fake, None, real_classes
        (grad,) = torch.autograd.grad(d_real.float().sum(), real, create_graph=True)
        return d_real, d_fake, grad.float().pow(2).flatten(1).sum(1).mean(), real_classes


class AdversarialObjective:
    """One D update on a real and a generated batch, then one G update through D."""

    loss_keys = ("loss_d", "loss_g")
    health: Health | None = COLLAPSE
    step_index = 0  # the run's step, set by the loop before each update: R1's cadence

    def __init__(self, model: AdversarialModel, train: TrainConfig, device: torch.device, world: World) -> None:
        assert train.lr is not None and train.beta1 is not None and train.r1 is not None and train.class_loss is not None
        betas = (train.beta1, train.beta2)
        self.model, self.device, self.loss, self.world = model, device, train.gan_loss, world
        self.precision = train.precision  # resolved by training.plan_run (None: float32)
        self.policy, self.r1, self.class_loss = train.augment, train.r1, train.class_loss
        self.ema = EMA(model.generator, train.ema) if train.ema else None
        self.companions: dict[str, nn.Module] = {}  # its class loss reads D, which the model holds
        # Under DDP, G and D's own update go through the wrappers that average gradients;
        # G's loss goes through the bare D, whose gradients nobody needs.
        self.generator = wrap(model.generator, world, device)
        self.d_pass = wrap(DiscriminatorPass(model.discriminator), world, device)
        self.base_lrs = {"generator": train.lr, "discriminator": train.lr_d or train.lr}
        self.optimizers = {name: adam(getattr(model, name).parameters(), lr, betas, device) for name, lr in self.base_lrs.items()}

    def step(self, real: torch.Tensor, labels: torch.Tensor | None) -> Losses:
        opt_d = self.optimizers["discriminator"]
        z = self.noise(real.shape[0], real.device)
        penalise = self.r1 > 0 and self.step_index % R1_INTERVAL == 0
        with autocast(self.device, self.precision):
            fake = self.generator(z, labels)
            d_real, d_fake, r1, real_classes = self.d_pass(self.augment(real), self.augment(fake.detach()), labels,
                                                           penalise, self.class_loss > 0)
        loss_d = self.d_loss(d_real.float(), d_fake.float())
        # D learns the real images' classes, which G's class term is then judged by
        class_d = None if real_classes is None else F.cross_entropy(real_classes.float(), labels)
        opt_d.zero_grad(set_to_none=True)
        (loss_d + (0 if r1 is None else self.r1 / 2 * R1_INTERVAL * r1)
         + (0 if class_d is None else self.class_loss * class_d)).backward()
        opt_d.step()
        loss_g = self.generator_step(fake, labels)
        losses = {
            "loss_d": loss_d.detach(),
            "loss_g": loss_g.detach(),
            "d_real": torch.sigmoid(d_real.detach().float()).mean(),
            "d_fake": torch.sigmoid(d_fake.detach().float()).mean(),
        }
        if class_d is not None:
            losses["class_d"] = class_d.detach()  # D's cross-entropy on the real batch, unweighted
        return losses if r1 is None else {**losses, "r1": r1.detach()}  # measured on R1's steps only

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """What D sees of `images`: --augment's transforms, a fresh draw per call (none: the images themselves)."""
        return augment(images, self.policy)

    def noise(self, n: int, device: torch.device) -> torch.Tensor:
        """This rank's slice of one global draw, so every rank's stream stays alike."""
        return global_slice(torch.randn(n * self.world.size, self.model.latent_dim, device=device), self.world)

    def generator_step(self, fake: torch.Tensor, labels: torch.Tensor | None,
                       extra: torch.Tensor | None = None) -> torch.Tensor:
        """G's update through the bare D (whose weight gradients are not needed: not computed), then the EMA;
        `extra` is a loss term of G's own added to the adversarial one (pix2pix's L1)."""
        d, opt_g = self.model.discriminator, self.optimizers["generator"]
        d.requires_grad_(False)
        with autocast(self.device, self.precision):
            d_fake, fake_classes = judge(d, self.augment(fake), labels, self.class_loss > 0)
        loss_g = self.g_loss(d_fake.float()) + (0 if extra is None else extra)
        if fake_classes is not None:  # samples D's classifier reads as the asked class (AC-GAN's G term)
            loss_g = loss_g + self.class_loss * F.cross_entropy(fake_classes.float(), labels)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        d.requires_grad_(True)
        if self.ema is not None:
            self.ema.update(self.model.generator)
        return loss_g

    def d_loss(self, d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
        if self.loss == "hinge":
            return F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
        # softplus(-x) == BCE-with-logits(x, 1); softplus(x) == BCE-with-logits(x, 0)
        return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()

    def g_loss(self, d_fake: torch.Tensor) -> torch.Tensor:
        return -d_fake.mean() if self.loss == "hinge" else F.softplus(-d_fake).mean()

    def finish(self, source: ImageSource, deadline: float | None = None) -> None:
        """Nothing to do once training ends: the generator is what users sample."""

    def plan_finish(self, source: ImageSource, images_per_second: float, budget: float) -> float:
        return 0.0

    def sampling_model(self, source: ImageSource) -> GenerativeModel:
        """The moving-average generator when there is one, with BatchNorm statistics of its own."""
        generator = self.ema.shadow if self.ema is not None else self.model.generator
        measured = standing_statistics(generator, lambda draws, n: self.sampling_inputs(source, draws, n),
                                       self.model.config.image_size or 1)
        if measured is self.model.generator:
            return self.model
        return type(self.model)(self.model.config, measured, self.model.discriminator)

    def sampling_inputs(self, source: ImageSource, draws: torch.Generator, n: int) -> tuple:
        """G's arguments when users sample: latents, and classes for a conditional model."""
        z = torch.randn(n, self.model.latent_dim, generator=draws)
        classes = self.model.config.num_classes
        return z, torch.randint(classes, (n,), generator=draws) if self.model.conditional else None

    def sample_grid(self, source: ImageSource) -> SampleGrid:
        return noise_grid(self.model)

    def extra_pictures(self, source: ImageSource, seed: int) -> dict[str, bytes]:
        return {}


BCE = ObjectiveSpec("gan-bce", AdversarialModel, "bce", "bce (non-saturating)", AdversarialObjective, judged=True,
                    augments=True, takes_r1=True, takes_class_loss=True)
HINGE = ObjectiveSpec("gan-hinge", AdversarialModel, "hinge", "hinge", AdversarialObjective, judged=True, augments=True,
                      takes_r1=True, takes_class_loss=True)
