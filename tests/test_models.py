"""Every family builds at every supported size; the DCGAN matches the reference architecture."""

from __future__ import annotations

import pytest
import torch

from genai_cli.config import ModelConfig
from genai_cli.errors import UsageError
from genai_cli.models import MODELS
from genai_cli.models.blocks import resolution_plan


def build(kind: str, size: int, channels: int, latent_dim: int | None = None):
    spec = MODELS.get(kind)
    config = ModelConfig(kind=kind, latent_dim=latent_dim or spec.latent_dim, channels=channels,
                         image_size=size, num_classes=10 if spec.conditional else 0, width=8)
    return spec.build(config)


@pytest.mark.parametrize("kind", MODELS.names())
@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3), (64, 3)])
def test_generate_shape_and_range(kind: str, size: int, channels: int) -> None:
    model = build(kind, size, channels).eval()
    z = torch.rand(3, channels, size, size) * 2 - 1 if model.translates else torch.randn(3, model.latent_dim)
    labels = torch.tensor([0, 4, 9]) if model.conditional else None
    images = model.generate(z, labels)
    assert images.shape == (3, channels, size, size)
    assert images.min() >= -1 and images.max() <= 1


@pytest.mark.parametrize("size,plan", [(28, (7, 2)), (32, (4, 3)), (64, (4, 4)), (16, (4, 2)), (48, (6, 3))])
def test_resolution_plan(size: int, plan: tuple[int, int]) -> None:
    assert resolution_plan(size) == plan


@pytest.mark.parametrize("size", [30, 4, 7, 100])
def test_unbuildable_size_is_a_usage_error(size: int) -> None:
    with pytest.raises(UsageError, match="--image-size"):
        resolution_plan(size)


def test_dcgan_64_matches_pytorch_examples_parameter_counts() -> None:
    """Same layers as pytorch/examples dcgan (nz=100, ngf=ndf=64, nc=3): 3,576,704 and 2,765,568."""
    spec = MODELS.get("dcgan")
    model = spec.build(ModelConfig(kind="dcgan", latent_dim=100, channels=3, image_size=64, width=64))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model.generator) == 3_576_704
    assert count(model.discriminator) == 2_765_568


def test_dcgan_init_follows_the_paper() -> None:
    model = build("dcgan", 32, 3)
    conv = model.generator.body.net[0].weight
    assert abs(conv.std().item() - 0.02) < 0.005 and abs(conv.mean().item()) < 0.005


def test_conditional_generator_uses_the_label() -> None:
    model = build("cgan", 28, 1).eval()
    z = torch.randn(1, model.latent_dim).repeat(2, 1)
    a, b = model.generate(z, torch.tensor([0, 1]))
    assert not torch.equal(a, b)


def test_unknown_model_suggests_the_closest_name() -> None:
    with pytest.raises(UsageError, match="did you mean 'dcgan'"):
        MODELS.get("dcgna")
