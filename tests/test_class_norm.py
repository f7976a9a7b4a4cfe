"""--class-norm: the cGAN's generator and the cVAE's decoder take their labels in every normalisation, and runs
from before it still load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_training import as_older_schema, bars_root, flags  # noqa: F401  (bars_root is a fixture)
from typer.testing import CliRunner

from genai_cli import checkpoint as ckpt
from genai_cli import training
from genai_cli.cli import app
from genai_cli.config import Config
from genai_cli.errors import UsageError
from genai_cli.models import MODELS
from genai_cli.models.blocks import ClassNorm


def test_class_norm_normalises_then_applies_the_asked_class_scale_and_shift() -> None:
    torch.manual_seed(0)
    norm = ClassNorm("batch", 3, 4).eval()  # eval: running statistics 0 and 1, so the norm is the identity
    with torch.no_grad():
        norm.gain.weight.copy_(torch.arange(12.0).reshape(3, 4))
        norm.shift.weight.copy_(-torch.arange(12.0).reshape(3, 4))
    x, labels = torch.randn(3, 4, 2, 2), torch.tensor([2, 0, 1])
    scale, shift = 1 + norm.gain.weight[labels], norm.shift.weight[labels]
    expected = x / (1 + norm.norm.eps) ** 0.5 * scale[:, :, None, None] + shift[:, :, None, None]
    assert torch.allclose(norm(x, labels), expected)
    assert not any(p.requires_grad for p in norm.norm.parameters())  # the class's scale and shift are the only affine


def test_with_class_norm_the_label_reaches_g_past_its_input(bars_root: Path) -> None:  # noqa: F811
    """The input embedding zeroed, a label still changes the image only where the norms take it."""
    outputs = {}
    for class_norm in (True, False):
        model = MODELS.get("cgan").build(training.resolve(flags(bars_root, "cgan", **{"model.class_norm": class_norm})).model)
        g = model.generator.eval()
        with torch.no_grad():
            g.labels.embed.weight.zero_()
            z = torch.randn(2, model.latent_dim)
            outputs[class_norm] = g(z, torch.tensor([0, 0])), g(z, torch.tensor([1, 1]))
    assert not torch.allclose(*outputs[True])
    assert torch.equal(*outputs[False])


def test_the_cgan_takes_class_norm_by_default_the_cvae_when_asked_and_others_refuse_it(bars_root: Path) -> None:  # noqa: F811
    assert training.resolve(flags(bars_root, "cgan")).model.class_norm is True
    assert training.resolve(flags(bars_root, "cvae")).model.class_norm is False
    assert training.resolve(flags(bars_root, "cvae", **{"model.class_norm": True})).model.class_norm is True
    assert training.resolve(flags(bars_root, "dcgan")).model.class_norm is False
    with pytest.raises(UsageError, match="--class-norm .* drop --class-norm"):
        training.resolve(flags(bars_root, "dcgan", **{"model.class_norm": True}))
    result = CliRunner().invoke(app, ["train", "--model", "cgan", "--no-class-norm", "--dry-run", "-b", "16",
                                      "--data-dir", str(bars_root)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model"]["class_norm"] is False


def test_a_config_with_a_non_boolean_class_norm_is_refused() -> None:
    raw = Config().to_dict()
    for value in (1, "yes"):
        with pytest.raises(ValueError, match=r"ModelConfig.class_norm must be bool \| None, got"):
            Config.from_dict({**raw, "model": {**raw["model"], "class_norm": value}})


def test_a_cgan_from_before_schema_11_loads_samples_and_resumes_with_its_plain_norms(bars_root: Path,  # noqa: F811
                                                                                     tmp_path: Path) -> None:
    run = Path(training.train(flags(bars_root, "cgan", **{"train.steps": 2, "model.class_norm": False}),
                              out=str(tmp_path / "r")).run_dir)
    as_older_schema(run, 10, "model", "class_norm")
    model, _ = ckpt.load_model(str(run), torch.device("cpu"))
    assert model.config.class_norm is False
    assert not any(isinstance(m, ClassNorm) for m in model.modules())
    assert model.generate(torch.randn(2, model.latent_dim), torch.tensor([0, 1])).shape == (2, 1, 16, 16)
    assert training.train({"train.steps": 4}, resume=str(run)).step == 4
