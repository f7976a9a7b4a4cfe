"""--class-loss: the cGAN's projection discriminator read as a classifier, the cVAE's classifier trained
beside it, the loss terms each adds, and runs from before it."""

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
    for family, loss in (("dcgan", "bce"), ("vae", "bce"), ("cgan", "wgan-gp")):
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


def cvae_objective(bars_root: Path, class_loss: float):  # noqa: F811
    plan = training.plan_run(flags(bars_root, "cvae", **{"train.class_loss": class_loss}), None)
    torch.manual_seed(0)
    model = training.build_model(plan, torch.device("cpu"))
    return model, make_objective(model, plan.config.train, torch.device("cpu"))


def test_the_cvae_classifier_learns_real_classes_and_the_decoder_learns_its_draws_classes(bars_root: Path) -> None:  # noqa: F811
    model, objective = cvae_objective(bars_root, 3.0)
    real, labels = torch.rand(8, 1, 16, 16) * 2 - 1, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    before = copy.deepcopy(objective.classifier)
    losses = objective.step(real, labels)
    assert {"loss", "recon", "kl", "loss_c", "class_drawn"} <= set(losses)
    assert not torch.equal(before.head.weight, objective.classifier.head.weight)  # the step trained it
    # The classifier learns the real classes and a last one, "decoded", for what the decoder makes.
    decoded = model.decoder.mean_image(torch.randn(8, model.latent_dim), labels)
    loss_c, _ = objective.class_terms(real, decoded, labels)
    classes = model.config.num_classes
    expected = F.cross_entropy(objective.classifier(torch.cat([real, decoded])), torch.cat([labels, torch.full((8,), classes)]))
    assert objective.classifier.head.out_features == classes + 1
    assert torch.isclose(loss_c, expected)
    # The decoder's term reaches the decoded images, not the classifier's weights.
    model.zero_grad(set_to_none=True)
    objective.classifier.zero_grad(set_to_none=True)
    _, class_drawn = objective.class_terms(real, decoded, labels)
    class_drawn.backward()
    assert all(p.grad is None for p in objective.classifier.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.decoder.parameters())
    _, plain = cvae_objective(bars_root, 0.0)
    assert plain.classifier is None and plain.companions == {} and "class_drawn" not in plain.step(real, labels)


def test_the_cvae_classifier_is_trained_in_the_training_state_and_only_copied_to_the_model(
        bars_root: Path, tmp_path: Path) -> None:  # noqa: F811
    run = Path(training.train(flags(bars_root, "cvae", **{"train.steps": 2}), out=str(tmp_path / "r")).run_dir)
    assert ckpt.load_training_state(run).checkpoint.config.train.class_loss > 0  # on by default
    assert set(ckpt.load_training_state(run).companions) == {"classifier"}
    model_tensors = ckpt.load_file(run / ckpt.MODEL_FILE).tensors
    assert not any(name.startswith("classifier") for name in model_tensors)
    assert any(name.startswith("decoder.critic.") for name in model_tensors)  # --best-of's copy (test_best_of)
    assert all("loss_c" in row for row in metrics(run) if "loss" in row)


def test_a_cvae_from_before_its_class_loss_resumes_without_it(bars_root: Path, tmp_path: Path) -> None:  # noqa: F811
    older = {"train.steps": 2, "train.class_loss": 0.0}  # as a cVAE trained before schema 12
    run = Path(training.train(flags(bars_root, "cvae", **older), out=str(tmp_path / "r")).run_dir)
    as_older_schema(run, 11, "train", "class_loss")
    assert ckpt.load_training_state(run).companions == {}
    assert training.train({"train.steps": 4}, resume=str(run)).step == 4
    assert not any("loss_c" in row for row in metrics(run))
