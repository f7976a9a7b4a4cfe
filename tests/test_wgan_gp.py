"""WGAN-GP plugs in as one objective module: it trains, resumes bit for bit, and refuses BatchNorm."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_idx_dataset
from safetensors.torch import load_file
from test_distributed import assert_same_weights, genai_train
from test_training import bars_root, flags, metrics  # noqa: F401  (bars_root is a fixture)

from genai_cli import checkpoint as ckpt
from genai_cli import training
from genai_cli.errors import UsageError
from genai_cli.models import AdversarialModel
from genai_cli.objectives import choose
from genai_cli.objectives.wgan_gp import CriticLoss


def wgan(root: Path, kind: str = "dcgan", **extra: object) -> dict:
    return flags(root, kind, **{"train.gan_loss": "wgan-gp", "model.norm": "group", **extra})


def test_wgan_gp_trains_with_the_papers_defaults(bars_root: Path, tmp_path: Path) -> None:  # noqa: F811
    run = training.train(wgan(bars_root, **{"train.steps": 10}), out=str(tmp_path / "r"))
    rows = metrics(run.run_dir)
    assert [r["step"] for r in rows] == [5, 10]
    for row in rows:
        assert all(torch.isfinite(torch.tensor(row[k])) for k in ("loss_d", "loss_g", "wasserstein", "gradient_penalty"))
    train = json.loads((Path(run.run_dir) / "config.json").read_text())["train"]
    assert (train["gan_loss"], train["lr"], train["beta1"], train["beta2"]) == ("wgan-gp", 1e-4, 0.0, 0.9)
    assert (Path(run.run_dir) / "loss.svg").is_file()


@pytest.mark.parametrize("kind,extra", [("gan", {}), ("cgan", {"model.norm": "none"})])
def test_wgan_gp_resume_is_bitwise_identical(bars_root: Path, tmp_path: Path, kind: str, extra: dict) -> None:  # noqa: F811
    straight = training.train(wgan(bars_root, kind, **{"train.steps": 5, **extra}), out=str(tmp_path / "straight"))
    first = training.train(wgan(bars_root, kind, **{"train.steps": 2, **extra}), out=str(tmp_path / "split"))
    resumed = training.train({"train.steps": 5}, resume=first.run_dir)
    for name in (ckpt.MODEL_FILE, ckpt.STATE_FILE):
        a, b = load_file(Path(straight.run_dir) / name), load_file(Path(resumed.run_dir) / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_wgan_gp_refuses_a_batchnorm_critic_before_writing_anything(bars_root: Path, tmp_path: Path) -> None:  # noqa: F811
    with pytest.raises(UsageError, match="--norm group or --norm none"):
        training.train(wgan(bars_root, **{"model.norm": "batch", "train.steps": 1}), out=str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()


def test_gan_loss_choices_come_from_the_registry(bars_root: Path, tmp_path: Path) -> None:  # noqa: F811
    assert choose(AdversarialModel, "wgan-gp").name == "wgan-gp"
    with pytest.raises(UsageError, match="'wgan-gp'"):
        training.train(flags(bars_root, "dcgan", **{"train.gan_loss": "wgan", "train.steps": 1}), out=str(tmp_path / "r"))


def test_the_penalty_is_zero_for_a_one_lipschitz_critic() -> None:
    """D(x) = sum(x) / sqrt(d) has gradient norm 1 everywhere: no penalty; the distance is exact."""
    class Unit(torch.nn.Module):
        def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
            return x.flatten(1).sum(1) / x[0].numel() ** 0.5

    real = torch.ones(4, 1, 2, 2).contiguous(memory_format=torch.channels_last)
    fake = torch.zeros(4, 1, 2, 2).contiguous(memory_format=torch.channels_last)
    distance, penalty = CriticLoss(Unit())(real, fake, None, torch.rand(4, 1, 1, 1))
    assert penalty.item() == pytest.approx(0.0, abs=1e-10) and distance.item() == pytest.approx(-2.0)


def test_two_processes_train_the_same_critic_as_one(tmp_path: Path) -> None:
    """The penalty's double backward runs inside DDP's wrapper, and gradients average to one process's."""
    make_idx_dataset(tmp_path / "data", n_train=64)
    args = ["--model", "dcgan", "--gan-loss", "wgan-gp", "--norm", "none", "--width", "8", "--latent-dim", "4",
            "--batch-size", "16", "--steps", "2", "--sample-every", "100", "--data", "fashion-mnist",
            "--data-dir", str(tmp_path / "data"), "--precision", "fp32"]  # exact: see TINY_VAE
    genai_train(*args, "--out", str(tmp_path / "one"))
    genai_train(*args, "--out", str(tmp_path / "two"), "--nproc-per-node", "2")
    assert_same_weights(tmp_path / "one", tmp_path / "two")
