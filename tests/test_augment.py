"""--augment: DiffAugment's transforms of what D sees, and how a run takes, stores and resumes them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_training import bars_root, flags, resumes_bit_for_bit_with  # noqa: F401  (bars_root is a fixture)

from genai_cli import training
from genai_cli.augment import augment, cutout, translate
from genai_cli.config import Config
from genai_cli.errors import UsageError


def test_translation_moves_each_image_by_its_own_offset_of_up_to_an_eighth_of_the_side() -> None:
    torch.manual_seed(0)
    dots = torch.zeros(400, 1, 28, 28)
    dots[:, :, 14, 10] = 1.0
    moved = translate(dots)
    assert torch.equal(moved.flatten(1).sum(1), torch.ones(400))  # one pixel, unchanged, still inside
    where = moved[:, 0].flatten(1).argmax(1)
    dy, dx = 14 - where // 28, 10 - where % 28
    assert set(dy.tolist()) == set(range(-4, 5)) and set(dx.tolist()) == set(range(-4, 5))  # int(28 / 8 + 0.5) = 4


def test_translation_fills_what_it_uncovers_with_zeros() -> None:
    torch.manual_seed(1)
    moved = translate(torch.ones(200, 1, 28, 28))[:, 0]
    empty_rows, empty_cols = (moved.sum(2) == 0).sum(1), (moved.sum(1) == 0).sum(1)
    assert torch.equal(moved.sum((1, 2)), ((28 - empty_rows) * (28 - empty_cols)).float())
    assert empty_rows.max() == 4 and empty_cols.max() == 4 and (empty_rows == 0).any()


def test_cutout_zeroes_one_square_of_half_the_side_clipped_at_the_border() -> None:
    torch.manual_seed(2)
    cut = cutout(torch.ones(300, 1, 28, 28))[:, 0] == 0
    rows, cols = cut.any(2).sum(1), cut.any(1).sum(1)
    assert torch.equal(cut.sum((1, 2)), rows * cols)  # a rectangle: the square, or what of it is on the image
    assert rows.max() == 14 and cols.max() == 14 and rows.min() < 14 and (rows * cols).min() > 0


def test_augmentation_passes_gradients_to_the_images_it_keeps() -> None:
    """Differentiable: G learns through it. Each input pixel shows at most once, so its gradient is 0 or 1."""
    torch.manual_seed(3)
    images = torch.ones(64, 3, 16, 16, requires_grad=True)
    seen = augment(images, "translation,cutout")
    seen.sum().backward()
    assert set(images.grad.unique().tolist()) == {0.0, 1.0}
    assert images.grad.sum() == seen.sum()
    assert torch.equal(seen[:, 0], seen[:, 2])  # one transform per image, across its channels


def test_none_leaves_the_images_alone_and_an_unknown_transform_is_refused() -> None:
    images = torch.randn(4, 1, 8, 8)
    assert augment(images, "none") is images
    with pytest.raises(ValueError, match="'flip'"):
        augment(images, "flip")


def test_a_run_with_augment_trains_otherwise_stores_it_and_resumes_bit_for_bit(bars_root: Path, tmp_path: Path) -> None:  # noqa: F811
    """Unlike a run without it: D saw other images."""
    stored, plain = resumes_bit_for_bit_with(bars_root, tmp_path, "cgan", {"train.augment": "translation,cutout"}, steps=6, split=3)
    assert stored["augment"] == "translation,cutout" and plain["augment"] == "none"


@pytest.mark.parametrize("kind", ["gan", "dcgan"])
def test_wgan_gp_and_hinge_take_augment_too(bars_root: Path, kind: str) -> None:  # noqa: F811
    for loss, norm in (("wgan-gp", "group"), ("hinge", "batch")):
        config = training.resolve(flags(bars_root, kind, **{"train.augment": "cutout", "train.gan_loss": loss,
                                                             "model.norm": norm}))
        assert config.train.augment == "cutout"


@pytest.mark.parametrize("kind", ["vae", "cvae", "pix2pix"])
def test_augment_is_refused_where_no_discriminator_judges_images_from_noise(bars_root: Path, kind: str) -> None:  # noqa: F811
    with pytest.raises(UsageError, match="drop --augment"):
        training.resolve(flags(bars_root, kind, **{"train.augment": "translation"}))
    assert training.resolve(flags(bars_root, kind)).train.augment == "none"


def test_configs_from_before_schema_9_load_without_augmentation() -> None:
    raw = Config().to_dict()
    del raw["train"]["augment"]
    assert Config.from_dict({**raw, "schema": 8}).train.augment == "none"
