"""--minibatch-std: the MLP GAN's discriminator sees how much its features vary within groups of images
(ProGAN's minibatch standard deviation), on by default for it, off for short budgets, refused by other
families, and runs from before it still load without it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_training import as_older_schema, bars_root, flags  # noqa: F401  (bars_root is a fixture)

from genai_cli import checkpoint as ckpt
from genai_cli import training
from genai_cli.errors import UsageError
from genai_cli.models import MODELS
from genai_cli.models.gan import MinibatchStd


def test_each_image_gets_the_spread_of_its_own_group() -> None:
    features = torch.randn(8, 5)
    features[1::2] = features[1]  # the group of images 1, 3, 5, 7 (every second one, as ProGAN groups) is all alike
    out = MinibatchStd(4)(features)
    assert out.shape == (8, 6) and torch.equal(out[:, :5], features)
    spread = out[:, 5]
    assert torch.all(spread[1::2] < 1e-3)  # no variety
    assert torch.all(spread[0::2] > 0.3) and torch.all(spread[0::2] == spread[0])  # one value per group


@pytest.mark.parametrize("n,group", [(6, 3), (7, 1), (2, 2)])
def test_a_batch_that_a_group_does_not_divide_uses_the_largest_group_that_does(n: int, group: int) -> None:
    features = torch.randn(n, 3)
    expected = features.view(group, n // group, 3).var(0, unbiased=False).add(1e-8).sqrt().mean(1).repeat(group)
    torch.testing.assert_close(MinibatchStd(4)(features)[:, 3], expected)


def test_the_gan_discriminator_judges_an_image_by_its_group(bars_root: Path) -> None:  # noqa: F811
    model = MODELS.get("gan").build(training.resolve(flags(bars_root, "gan")).model)
    images = torch.rand(8, 1, 16, 16) * 2 - 1
    scores = model.discriminator(images)
    varied = images.clone()
    varied[4] = -varied[4]  # image 4 shares image 0's group (8 images, groups of 4: 0, 2, 4, 6)
    rescored = model.discriminator(varied)
    assert rescored[0] != scores[0]  # its score moved although image 0 did not
    assert rescored[1] == scores[1]  # another group's did not


def test_the_gan_takes_it_by_default_short_budgets_and_other_families_do_not(bars_root: Path) -> None:  # noqa: F811
    assert training.resolve(flags(bars_root, "gan")).model.minibatch_std == 4
    assert training.resolve(flags(bars_root, "gan", **{"model.minibatch_std": 0})).model.minibatch_std == 0
    assert training.resolve(flags(bars_root, "dcgan")).model.minibatch_std == 0
    with pytest.raises(UsageError, match="--minibatch-std .* drop --minibatch-std"):
        training.resolve(flags(bars_root, "dcgan", **{"model.minibatch_std": 4}))
    with pytest.raises(UsageError, match="--minibatch-std must be"):
        training.resolve(flags(bars_root, "gan", **{"model.minibatch_std": -1}))
    short = training.resolve(flags(bars_root, "gan"), max_time=60.0).model  # a budget's short recipe
    assert short.minibatch_std == 0
    assert training.resolve(flags(bars_root, "gan", **{"model.minibatch_std": 2}), max_time=60.0).model.minibatch_std == 2
    assert training.resolve(flags(bars_root, "gan"), max_time=3600.0).model.minibatch_std == 4


def test_a_gan_from_before_schema_16_loads_samples_and_resumes_without_it(bars_root: Path,  # noqa: F811
                                                                           tmp_path: Path) -> None:
    run = Path(training.train(flags(bars_root, "gan", **{"train.steps": 2, "model.minibatch_std": 0}),
                              out=str(tmp_path / "r")).run_dir)
    as_older_schema(run, 15, "model", "minibatch_std")
    model, _ = ckpt.load_model(str(run), torch.device("cpu"))
    assert model.config.minibatch_std == 0
    assert not any(isinstance(m, MinibatchStd) for m in model.discriminator.modules())
    assert model.generate(torch.randn(2, model.latent_dim), None).shape == (2, 1, 16, 16)
    assert training.train({"train.steps": 4}, resume=str(run)).step == 4
