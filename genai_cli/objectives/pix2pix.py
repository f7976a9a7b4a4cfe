"""pix2pix's objective (Isola et al. 2017): a conditional GAN plus λ·L1 to the target, λ = 100.

D sees (input, target) pairs as real and (input, G(input)) as fake, with BCE on every patch
logit, its loss halved as in the paper (D learns at half G's pace); G minimises the
non-saturating loss through D plus λ times the mean absolute error to the target. G's only
noise is its dropout. The paper's Adam: lr 2e-4, betas (0.5, 0.999).

The run starts with a warm-up on L1 alone (`--warmup`, the first 78% of its steps by default,
about half its CPU time): G learns the mapping in steps a third the price of adversarial ones,
then D sharpens it, as super-resolution GANs pre-train on a pixel loss (Ledig et al. 2017). At
equal CPU it beats both the paper's schedule and L1 alone on edges -> image (benchmarks/RESULTS.md).

`--gan-loss l1` is the paper's "L1 alone" ablation: the same U-Net regressing its target with no
discriminator. It is the baseline that shows what the adversarial term buys (sharper outputs:
lower FID at about the same PSNR); its checkpoint keeps the family's shape, D untrained.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genai_cli import images as imgs
from genai_cli import sampling
from genai_cli.data import ImageSource
from genai_cli.models.pix2pix import TranslationModel
from genai_cli.objectives.adversarial import AdversarialObjective
from genai_cli.objectives.base import Losses, ObjectiveSpec, SampleGrid
from genai_cli.pairs import PairedSource
from genai_cli.runtime import autocast

L1_WEIGHT = 100.0
SAMPLE_PAIRS = 8  # rows of input | output | target in the run's sample grids
WARMUP = 0.78  # of the run's steps on L1 alone: 19,000 of 24,500 spend half the CPU of a run before D joins
WARMUP_COST = 0.29  # an L1 step's time over a full step's (0.027 s against 0.092 s at batch 16, one CPU thread)


class Pix2PixObjective(AdversarialObjective):
    """`step(target, input)`: the paired source hands each target's input image where labels go."""

    loss_keys = ("loss_d", "loss_g", "l1")

    def step(self, real: torch.Tensor, labels: torch.Tensor | None) -> Losses:
        assert labels is not None and labels.is_floating_point(), "pix2pix trains on pairs: the input images"
        inputs, opt_d = labels, self.optimizers["discriminator"]
        with autocast(self.device, self.precision):
            fake = self.generator(inputs)
            d_real, d_fake, _, _ = self.d_pass(real, fake.detach(), inputs, False)
        loss_d = 0.5 * self.d_loss(d_real.float(), d_fake.float())
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        l1 = (fake.float() - real.float()).abs().mean()
        loss_g = self.generator_step(fake, inputs, L1_WEIGHT * l1)
        return {
            "loss_d": loss_d.detach(),
            "loss_g": loss_g.detach(),
            "l1": l1.detach(),
            "d_real": torch.sigmoid(d_real.detach().float()).mean(),
            "d_fake": torch.sigmoid(d_fake.detach().float()).mean(),
        }

    def warmup_step(self, real: torch.Tensor, labels: torch.Tensor | None) -> Losses:
        """G alone, on L1 to the target: D neither learns nor judges."""
        assert labels is not None and labels.is_floating_point(), "pix2pix trains on pairs: the input images"
        opt_g = self.optimizers["generator"]
        with autocast(self.device, self.precision):
            fake = self.generator(labels)
        l1 = (fake.float() - real.float()).abs().mean()
        opt_g.zero_grad(set_to_none=True)
        l1.backward()
        opt_g.step()
        if self.ema is not None:
            self.ema.update(self.model.generator)
        return {"l1": l1.detach()}

    def sample_grid(self, source: ImageSource) -> SampleGrid:
        """The first pairs' inputs, translated, between the inputs and their targets."""
        assert isinstance(source, PairedSource)
        n = min(SAMPLE_PAIRS, len(source))
        inputs, targets = source.inputs[:n], source.images[:n]
        return lambda model, device: sampling.translation_grid(inputs, sampling.translate(model, inputs, device), targets)

    def sampling_inputs(self, source: ImageSource, draws: torch.Generator, n: int) -> tuple:
        """Training inputs, as [-1, 1] floats: what G translates."""
        assert isinstance(source, PairedSource)
        return (imgs.from_uint8(source.inputs[torch.randint(len(source), (n,), generator=draws)]),)

    def d_loss(self, d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
        return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()  # BCE-with-logits: real 1, fake 0

    def g_loss(self, d_fake: torch.Tensor) -> torch.Tensor:
        return F.softplus(-d_fake).mean()


class L1Objective(Pix2PixObjective):
    """G alone, trained on L1 to the target: only the generator's optimiser exists."""

    loss_keys = ("l1",)
    health = None  # no discriminator to collapse

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        del self.optimizers["discriminator"], self.base_lrs["discriminator"]

    step = Pix2PixObjective.warmup_step  # all of its run is the warm-up


SPEC = ObjectiveSpec("pix2pix", TranslationModel, "bce", "pix2pix (cGAN + 100 L1)", Pix2PixObjective,
                     lr=2e-4, beta1=0.5, warmup=WARMUP, warmup_cost=WARMUP_COST)
L1_ONLY = ObjectiveSpec("pix2pix-l1", TranslationModel, "l1", "l1 (pix2pix's U-Net alone, no discriminator)",
                        L1Objective, lr=2e-4, beta1=0.5)
