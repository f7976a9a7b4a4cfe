"""The objective registry: adding one is a module here and one line below.

An objective is chosen by the model's shape (adversarial or variational) and, among an
adversarial shape's objectives, by --gan-loss.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from genai_cli.distributed import SINGLE_PROCESS
from genai_cli.errors import UsageError
from genai_cli.objectives import adversarial, elbo, pix2pix, wgan_gp
from genai_cli.objectives.base import EMA, Health, Objective, ObjectiveSpec, SampleGrid, lr_factor, set_learning_rates
from genai_cli.registry import Registry

if TYPE_CHECKING:
    import torch

    from genai_cli.config import TrainConfig
    from genai_cli.distributed import World
    from genai_cli.models import GenerativeModel

OBJECTIVES: Registry[ObjectiveSpec] = Registry("objective")
for _spec in (adversarial.BCE, adversarial.HINGE, elbo.SPEC, wgan_gp.SPEC, pix2pix.SPEC, pix2pix.L1_ONLY):
    OBJECTIVES.add(_spec.name, _spec)


def gan_losses() -> list[ObjectiveSpec]:
    """The objectives --gan-loss chooses between, by name."""
    return [spec for name in OBJECTIVES.names() if (spec := OBJECTIVES.get(name)).gan_loss is not None]


def check_gan_loss(value: str) -> None:
    choices = list(dict.fromkeys(spec.gan_loss for spec in gan_losses()))
    if value not in choices:
        raise UsageError(f"--gan-loss must be one of {', '.join(map(repr, choices))}, got {value!r}")


def choose(shape: type[GenerativeModel], gan_loss: str) -> ObjectiveSpec:
    """The objective that trains models of `shape` under --gan-loss `gan_loss`."""
    fits = [spec for name in OBJECTIVES.names() if issubclass(shape, (spec := OBJECTIVES.get(name)).trains)]
    chosen = [spec for spec in fits if spec.gan_loss is None or spec.gan_loss == gan_loss]
    if len(chosen) != 1:
        raise UsageError(f"no objective trains {shape.__name__} with --gan-loss {gan_loss!r}; choose one of: "
                         + ", ".join(spec.gan_loss or spec.name for spec in fits))
    return chosen[0]


def make_objective(model: GenerativeModel, train: TrainConfig, device: torch.device,
                   world: World = SINGLE_PROCESS) -> Objective:
    return choose(type(model), train.gan_loss).build(model, train, device, world)


__all__ = ["OBJECTIVES", "EMA", "Health", "Objective", "ObjectiveSpec", "SampleGrid", "check_gan_loss", "choose", "gan_losses",
           "lr_factor", "make_objective", "set_learning_rates"]
