"""--r1: the penalty on D's gradient at real images, its lazy cadence, and how a run stores and resumes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_training import bars_root, flags, resumes_bit_for_bit_with  # noqa: F401  (bars_root is a fixture)
from torch import nn
from typer.testing import CliRunner

from genai_cli import training
from genai_cli.cli import app
from genai_cli.config import Config
from genai_cli.errors import UsageError
from genai_cli.models import MODELS
from genai_cli.objectives import make_objective
from genai_cli.objectives.adversarial import R1_INTERVAL, DiscriminatorPass


class QuadraticD(nn.Module):
    """logit = w . x + (x . x) / 2: its gradient at x is w + x, so R1 is known in closed form."""

    def __init__(self, pixels: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(pixels))

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        x = images.flatten(1)
        return x @ self.w + 0.5 * x.pow(2).sum(1)


def test_r1_is_the_mean_squared_gradient_norm_of_d_at_the_real_images_only() -> None:
    torch.manual_seed(0)
    d = QuadraticD(16)
    real, fake = torch.randn(5, 1, 4, 4), torch.randn(5, 1, 4, 4)
    d_real, d_fake, r1, _ = DiscriminatorPass(d)(real, fake, None, penalise=True)
    expected = (d.w + real.flatten(1)).pow(2).sum(1).mean()
    assert torch.allclose(r1, expected)
    assert torch.allclose(d_real, d(real, None)) and torch.allclose(d_fake, d(fake, None))
    (grad,) = torch.autograd.grad(r1, d.w)  # D's weights learn from it: d/dw mean |w + x|^2 = 2 mean (w + x)
    assert torch.allclose(grad, 2 * (d.w + real.flatten(1)).mean(0))
    assert DiscriminatorPass(d)(real, fake, None, penalise=False)[2] is None


def objective_losses(bars_root: Path, r1: float, step: int) -> dict[str, float]:  # noqa: F811
    """loss_d of one step of a fresh dcgan objective with --r1 `r1`, taken as the run's step `step`."""
    plan = training.plan_run(flags(bars_root, "dcgan", **{"train.r1": r1}), None)
    torch.manual_seed(0)
    model = training.build_model(plan, torch.device("cpu"))
    objective = make_objective(model, plan.config.train, torch.device("cpu"))
    objective.step_index = step
    real = torch.rand(8, 1, 28, 28) * 2 - 1
    return {k: v.item() for k, v in objective.step(real, None).items()}


def test_the_penalty_applies_every_16th_step_only(bars_root: Path) -> None:  # noqa: F811
    off = objective_losses(bars_root, 0.0, 0)
    on = objective_losses(bars_root, 10.0, 0)
    between = objective_losses(bars_root, 10.0, R1_INTERVAL - 1)
    assert on["loss_d"] == off["loss_d"] and on["d_real"] == off["d_real"]  # the same D pass; loss_d stays the logit loss
    assert on["r1"] > 0 and "r1" not in off  # the penalty is logged on its own
    assert between == off  # between R1 steps the step is exactly the plain one


def test_the_run_penalises_its_steps_0_16_32_through_a_resume(bars_root: Path, tmp_path: Path,  # noqa: F811
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop tells the objective its step: R1 falls on the run's own steps 0, 16, 32, resumed or not (cgan: labels too)."""
    penalised: list[bool] = []
    forward = DiscriminatorPass.forward

    def recording(self, real, fake, labels, penalise, classify=False):
        penalised.append(penalise)
        return forward(self, real, fake, labels, penalise, classify)

    monkeypatch.setattr(DiscriminatorPass, "forward", recording)
    given = flags(bars_root, "cgan", **{"train.r1": 1.0})
    first = training.train({**given, "train.steps": 20}, out=str(tmp_path / "run"))
    training.train({"train.steps": 34}, resume=first.run_dir)
    assert [i for i, flag in enumerate(penalised) if flag] == [0, 16, 32]
    logged = [json.loads(line) for line in (Path(first.run_dir) / "metrics.jsonl").read_text().splitlines()]
    windows = [(row["step"], "r1" in row) for row in logged if "loss_d" in row]  # a line every 5 steps (TINY)
    assert windows == [(5, True), (10, False), (15, False), (20, True), (25, False), (30, False), (34, True)]
    assert all(row["r1"] > 0 for row in logged if "r1" in row)  # the mean of what was measured, not diluted by steps without


def test_a_run_with_r1_trains_otherwise_stores_it_and_resumes_bit_for_bit(bars_root: Path, tmp_path: Path) -> None:  # noqa: F811
    """18 steps hold two R1 steps (0 and 16); the resumed half holds the second, so the cadence survives resume."""
    stored, plain = resumes_bit_for_bit_with(bars_root, tmp_path, "dcgan", {"train.r1": 1.0}, steps=18, split=10)
    assert stored["r1"] == 1.0 and plain["r1"] == MODELS.get("dcgan").r1


@pytest.mark.parametrize(("kind", "extra", "gamma"), [
    ("dcgan", {}, 0.1),  # the family's default: measured over an hour
    ("dcgan", {"train.gan_loss": "wgan-gp", "model.norm": "group"}, 0.0),  # its own penalty: no R1, and no refusal
    ("cgan", {}, 0.1), ("gan", {}, 1.0), ("vae", {}, 0.0)])
def test_the_default_gamma_is_the_familys_where_the_objective_takes_r1(bars_root: Path, kind: str, extra: dict,  # noqa: F811
                                                                        gamma: float) -> None:
    assert training.resolve(flags(bars_root, kind, **extra)).train.r1 == gamma


@pytest.mark.parametrize(("kind", "gamma"), [("dcgan", 0.1), ("cgan", 0.1), ("gan", 1.0)])
def test_a_short_budget_trains_without_r1(bars_root: Path, kind: str, gamma: float) -> None:  # noqa: F811
    """R1 was measured over long runs; a few minutes' run stays as measured."""
    assert training.resolve(flags(bars_root, kind), max_time=60.0).train.r1 == 0.0
    assert training.resolve(flags(bars_root, kind), max_time=3600.0).train.r1 == gamma
    assert training.resolve(flags(bars_root, kind, **{"train.r1": 1.0}), max_time=60.0).train.r1 == 1.0


def test_hinge_takes_r1_too(bars_root: Path, tmp_path: Path) -> None:  # noqa: F811
    run = training.train(flags(bars_root, "gan", **{"train.r1": 0.5, "train.gan_loss": "hinge", "train.steps": 2}),
                         out=str(tmp_path / "hinge"))
    assert run.losses["r1"] > 0


def test_the_flag_reaches_the_config(bars_root: Path) -> None:  # noqa: F811
    result = CliRunner().invoke(app, ["train", "--model", "dcgan", "--data-dir", str(bars_root), "--r1", "2.5", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["train"]["r1"] == 2.5


@pytest.mark.parametrize(("kind", "extra"), [("vae", {}), ("cvae", {}), ("pix2pix", {}),
                                              ("dcgan", {"train.gan_loss": "wgan-gp", "model.norm": "group"})])
def test_r1_is_refused_where_no_logit_discriminator_judges_images_from_noise(bars_root: Path, kind: str, extra: dict) -> None:  # noqa: F811
    with pytest.raises(UsageError, match="drop --r1"):
        training.resolve(flags(bars_root, kind, **{"train.r1": 1.0, **extra}))


def test_a_negative_gamma_is_refused_with_its_range(bars_root: Path) -> None:  # noqa: F811
    with pytest.raises(UsageError, match="--r1"):
        training.resolve(flags(bars_root, "dcgan", **{"train.r1": -1.0}))


def test_configs_from_before_schema_10_load_without_r1() -> None:
    raw = Config().to_dict()
    del raw["train"]["r1"]
    assert Config.from_dict({**raw, "schema": 9}).train.r1 == 0.0
