"""--full-res-conv: the DCGAN's generator makes its image with a 3x3 conv at full resolution (SNGAN's last
layer), the cGAN's when asked, and runs from before it still load with the transposed conv they trained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_training import as_older_schema, bars_root, flags  # noqa: F401  (bars_root is a fixture)
from torch import nn
from typer.testing import CliRunner

from genai_cli import checkpoint as ckpt
from genai_cli import training
from genai_cli.cli import app
from genai_cli.errors import UsageError
from genai_cli.models import MODELS


def last_layers(generator: nn.Module) -> list[nn.Module]:
    return [m for m in generator.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))][-2:]


@pytest.mark.parametrize("kind", ["dcgan", "cgan"])
def test_with_full_res_conv_a_3x3_conv_at_full_resolution_makes_the_image(bars_root: Path, kind: str) -> None:  # noqa: F811
    config = training.resolve(flags(bars_root, kind, **{"model.full_res_conv": True})).model
    model = MODELS.get(kind).build(config)
    upsample, to_image = last_layers(model.generator)
    assert isinstance(upsample, nn.ConvTranspose2d) and upsample.out_channels == config.width // 2
    assert isinstance(to_image, nn.Conv2d) and to_image.kernel_size == (3, 3) and to_image.out_channels == config.channels
    labels = torch.tensor([0, 1]) if kind == "cgan" else None
    images = model.generate(torch.randn(2, model.latent_dim), labels)
    assert images.shape == (2, config.channels, config.image_size, config.image_size)
    assert images.abs().max() <= 1  # still through tanh


def test_the_dcgan_takes_it_by_default_the_cgan_when_asked_and_others_refuse_it(bars_root: Path) -> None:  # noqa: F811
    assert training.resolve(flags(bars_root, "dcgan")).model.full_res_conv is True
    assert training.resolve(flags(bars_root, "cgan")).model.full_res_conv is False
    assert isinstance(last_layers(MODELS.get("cgan").build(training.resolve(flags(bars_root, "cgan")).model).generator)[-1],
                      nn.ConvTranspose2d)  # off: the transposed conv makes the image, as before
    assert training.resolve(flags(bars_root, "gan")).model.full_res_conv is False
    for kind in ("gan", "vae"):
        with pytest.raises(UsageError, match="--full-res-conv .* drop --full-res-conv"):
            training.resolve(flags(bars_root, kind, **{"model.full_res_conv": True}))
    result = CliRunner().invoke(app, ["train", "--model", "dcgan", "--no-full-res-conv", "--dry-run", "-b", "16",
                                      "--data-dir", str(bars_root)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model"]["full_res_conv"] is False


def test_a_dcgan_from_before_schema_15_loads_samples_and_resumes_with_its_transposed_conv(bars_root: Path,  # noqa: F811
                                                                                          tmp_path: Path) -> None:
    run = Path(training.train(flags(bars_root, "dcgan", **{"train.steps": 2, "model.full_res_conv": False}),
                              out=str(tmp_path / "r")).run_dir)
    as_older_schema(run, 14, "model", "full_res_conv")
    model, _ = ckpt.load_model(str(run), torch.device("cpu"))
    assert model.config.full_res_conv is False
    assert isinstance(last_layers(model.generator)[-1], nn.ConvTranspose2d)
    assert model.generate(torch.randn(2, model.latent_dim), None).shape == (2, 1, 16, 16)
    assert training.train({"train.steps": 4}, resume=str(run)).step == 4
