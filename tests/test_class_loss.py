"""--class-loss: the cGAN's projection discriminator read as a classifier, the two loss terms it adds, and
runs from before it."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_training import as_older_schema, bars_root, flags, metrics  # noqa: F401  (bars_root is a fixture)

from genai_cli import checkpoint as ckpt
from genai_cli import training
from genai_cli.errors import UsageError
from genai_cli.objectives import make_objective


def cgan_objective(bars_root: Path, class_loss: float):  # noqa: F811
    plan = training.plan_run(flags(bars_root, "cgan", **{"train.class_loss": class_loss, "train.r1": 0.0}), None)
    torch.manual_seed(0)
    model = training.build_model(plan, torch.device("cpu"))
    return model, make_objective(model, plan.config.train, torch.device("cpu"))


def test_the_projection_terms_are_class_logits_whose_asked_entry_is_the_logits_conditional_part(
        bars_root: Path) -> None:  # noqa: F811
    model, _ = cgan_objective(bars_root, 0.0)
    d = model.discriminator.eval()
    x, labels = torch.rand(6, 1, 16, 16) * 2 - 1, torch.tensor([0, 1, 2, 0, 1, 2])
    logit, classes = d(x, labels, classes=True)
    assert classes.shape == (6, model.config.num_classes)
    assert torch.allclose(logit, d(x, labels))
    # The label's own logit minus another class's is D's real-vs-fake logit at that label minus at the other.
    other = (labels + 1) % model.config.num_classes
    assert torch.allclose(classes.gather(1, labels[:, None]) - classes.gather(1, other[:, None]),
                          (d(x, labels) - d(x, other))[:, None], atol=1e-5)


def test_d_learns_the_real_batchs_classes_and_g_its_samples_classes(bars_root: Path) -> None:  # noqa: F811
    model, objective = cgan_objective(bars_root, 2.0)
    real, labels = torch.rand(8, 1, 16, 16) * 2 - 1, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    before = copy.deepcopy(model.discriminator)
    torch.manual_seed(1)
    losses = objective.step(real, labels)
    assert torch.isclose(losses["class_d"], F.cross_entropy(before(real, labels, classes=True)[1], labels))
    # G's step: its adversarial loss plus the weighted cross-entropy of D's reading of its samples.
    z = torch.randn(8, model.latent_dim)
    fake = objective.generator(z, labels)
    d_fake, fake_classes = model.discriminator(fake, labels, classes=True)
    expected = objective.g_loss(d_fake) + 2.0 * F.cross_entropy(fake_classes, labels)
    assert torch.isclose(objective.generator_step(fake, labels), expected, atol=1e-5)
    _, plain = cgan_objective(bars_root, 0.0)
    torch.manual_seed(1)
    assert "class_d" not in plain.step(real, labels)


def test_class_loss_is_on_by_default_for_the_cgan_and_refused_where_d_does_not_classify(bars_root: Path) -> None:  # noqa: F811
    assert training.resolve(flags(bars_root, "cgan")).train.class_loss == 0.03
    assert training.resolve(flags(bars_root, "cgan", **{"train.gan_loss": "hinge"})).train.class_loss == 0.03
    assert training.resolve(flags(bars_root, "cgan", **{"train.class_loss": 0.5})).train.class_loss == 0.5
    assert training.resolve(flags(bars_root, "cgan", **{"train.gan_loss": "wgan-gp"})).train.class_loss == 0.0
    for family, loss in (("dcgan", "bce"), ("cvae", "bce"), ("cgan", "wgan-gp")):
        with pytest.raises(UsageError, match="drop --class-loss"):
            training.resolve(flags(bars_root, family, **{"train.class_loss": 1.0, "train.gan_loss": loss}))
    with pytest.raises(UsageError, match="--class-loss must be"):
        training.resolve(flags(bars_root, "cgan", **{"train.class_loss": -1.0}))


def test_a_cgan_from_before_schema_12_resumes_without_the_class_loss(bars_root: Path, tmp_path: Path) -> None:  # noqa: F811
    older = {"train.steps": 2, "train.class_loss": 0.0}  # as a cGAN trained before the term existed
    run = Path(training.train(flags(bars_root, "cgan", **older), out=str(tmp_path / "r")).run_dir)
    as_older_schema(run, 11, "train", "class_loss")
    assert ckpt.load_training_state(run).checkpoint.config.train.class_loss == 0.0
    assert training.train({"train.steps": 4}, resume=str(run)).step == 4
    assert ckpt.load_training_state(run).checkpoint.config.train.class_loss == 0.0
    assert not any("class_d" in row for row in metrics(run))  # it trained on as it began, not with today's default
