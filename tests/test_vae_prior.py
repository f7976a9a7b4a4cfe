"""The VAE's fitted prior (a mixture of Gaussians fitted to the training codes when training ends,
stored in the checkpoint, used by sampling, eval and export) and its decoder's likelihood; runs of
older configs keep what they sampled."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
from conftest import FakeClock, budget_plans
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_training import bars_root, flags  # noqa: F401  (bars_root is a fixture)
from typer.testing import CliRunner

from genai_cli import checkpoint as ckpt
from genai_cli import training
from genai_cli.cli import app
from genai_cli.config import Config
from genai_cli.data import load_dataset
from genai_cli.errors import UsageError
from genai_cli.evaluation import vae_metrics
from genai_cli.models import vae
from genai_cli.models.vae import FittedPrior, _pick_component
from genai_cli.objectives import elbo, make_objective
from genai_cli.objectives.elbo import discretized_gaussian_log_prob, reconstruct

OLD_PRIOR_FLAGS = {"model.prior_components": 1, "model.likelihood": "bernoulli"}  # what schema-7 VAEs were


def test_one_gaussian_matches_the_codes_moments() -> None:
    codes = torch.randn(4000, 3) @ torch.tensor([[2.0, 0, 0], [0.5, 1, 0], [0, 0, 0.1]]) + torch.tensor([1.0, -2, 3])
    prior = FittedPrior(3)
    assert torch.equal(prior(codes[:5]), codes[:5])  # unfitted: N(0, I) itself
    prior.fit(codes)
    samples = prior(torch.randn(200_000, 3, generator=torch.Generator().manual_seed(0)))
    assert torch.allclose(samples.mean(0), codes.mean(0), atol=0.02)
    assert torch.allclose(torch.cov(samples.T), torch.cov(codes.T), atol=0.03)
    variances = torch.rand(4000, 3)
    prior.fit(codes, variances)  # the aggregate posterior: the means' spread plus each posterior's own
    assert torch.allclose(prior.scale_tril[0, 0] @ prior.scale_tril[0, 0].T,
                          torch.cov(codes.T, correction=0) + torch.diag(variances.mean(0)), atol=1e-4)


def test_picking_a_component_keeps_the_noise_standard_normal() -> None:
    """The first two noise coordinates choose the component and are then re-drawn: each component must
    be chosen with its weight, and the noise it gets must still be N(0, I), independent of the choice."""
    weights = torch.tensor([[0.5, 0.0, 0.3, 0.2]]).expand(400_000, 4)
    eps = torch.randn(400_000, 3, generator=torch.Generator().manual_seed(0))
    component, noise = _pick_component(eps, weights)
    assert torch.equal(noise[:, 2], eps[:, 2])
    for k, weight in enumerate(weights[0]):
        chosen = noise[component == k]
        assert abs(len(chosen) / len(eps) - float(weight)) < 0.005
        if weight > 0:
            assert torch.allclose(chosen.mean(0), torch.zeros(3), atol=0.01)
            assert torch.allclose(torch.cov(chosen.T), torch.eye(3), atol=0.015)


def test_a_mixture_samples_each_cluster_of_the_codes_in_proportion() -> None:
    """Three separated clusters of codes, of shares 0.5, 0.3 and 0.2: one Gaussian would draw most of
    its samples between them; a three-part mixture draws each cluster with its share and spread."""
    centres = torch.tensor([[-6.0, 0, 0], [0, 6, 0], [6, 0, 0]])
    which = torch.multinomial(torch.tensor([0.5, 0.3, 0.2]), 6000, replacement=True, generator=torch.Generator().manual_seed(1))
    codes = centres[which] + 0.5 * torch.randn(6000, 3, generator=torch.Generator().manual_seed(2))
    prior = FittedPrior(3, components=3)
    prior.fit(codes)
    samples = prior(torch.randn(60_000, 3, generator=torch.Generator().manual_seed(0)))
    nearest = torch.cdist(samples, centres).min(1)
    shares = torch.bincount(nearest.indices, minlength=3) / len(samples)
    assert torch.allclose(shares, torch.tensor([0.5, 0.3, 0.2]), atol=0.02)
    assert 0.45 < nearest.values.pow(2).mean().div(3).sqrt() < 0.55  # each cluster's own spread
    log_density = prior.distribution().log_prob(centres)
    assert (log_density > prior.distribution().log_prob(torch.zeros(1, 3)) + 20).all()  # no mass between them
    single = FittedPrior(3)
    single.fit(codes)
    between = torch.cdist(single(torch.randn(60_000, 3, generator=torch.Generator().manual_seed(0))), centres).min(1).values
    assert between.pow(2).mean().div(3).sqrt() > 1.0


def test_a_conditional_prior_draws_each_class_from_its_own_codes() -> None:
    """The CVAE's codes still carry the class; a code from the pooled density with another class's
    label decodes as neither, so each label samples its own class's mixture."""
    labels = torch.arange(6000) % 3
    centres = torch.tensor([[-5.0, 0], [0, 5], [5, 0]])
    codes = centres[labels] + 0.5 * torch.randn(6000, 2)
    prior = FittedPrior(2, classes=3, components=2)
    prior.fit(codes, None, labels)
    asked = torch.tensor([2] * 1000 + [0] * 1000)
    samples = prior(torch.randn(2000, 2, generator=torch.Generator().manual_seed(0)), asked)
    assert torch.allclose(samples[:1000].mean(0), centres[2], atol=0.1) and torch.allclose(samples[1000:].mean(0), centres[0], atol=0.1)
    assert torch.allclose(samples[:1000].std(0), torch.tensor([0.5, 0.5]), atol=0.05)  # the class's spread, not the pooled one
    own = prior.distribution(torch.tensor([2, 0])).log_prob(centres[[2, 0]])  # each label's own density
    other = prior.distribution(torch.tensor([1, 1])).log_prob(centres[[2, 0]])
    assert torch.allclose(own, own[0].expand(2), atol=0.1) and (own > other + 50).all()
    lonely = FittedPrior(2, classes=3)
    lonely.fit(codes[:4], None, torch.tensor([0, 0, 1, 2]))  # one code of classes 1 and 2: the pooled fit
    assert torch.equal(lonely.mean[1], lonely.mean[2]) and not torch.equal(lonely.mean[0], lonely.mean[1])


def test_em_stops_at_its_deadline_with_the_mixture_it_has() -> None:
    """A --max-time budget gives EM until a deadline: past it, each table's EM ends after its current
    pass, which is what a one-pass EM fits, and still a mixture; without one, EM runs on and gains."""
    labels = torch.arange(3000) % 2
    codes = torch.tensor([[-4.0, 0], [4.0, 0]])[labels] + torch.randn(3000, 2, generator=torch.Generator().manual_seed(0))
    late, one_pass, unlimited = (FittedPrior(2, classes=2, components=4) for _ in range(3))
    late.fit(codes, None, labels, deadline=time.monotonic())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vae, "EM_ITERATIONS", 1)
        one_pass.fit(codes, None, labels)
    unlimited.fit(codes, None, labels)
    assert all(torch.equal(getattr(late, b), getattr(one_pass, b)) for b in ("weights", "mean", "scale_tril"))
    assert torch.allclose(late.weights.sum(1), torch.ones(2), atol=1e-6)
    assert not torch.equal(late.mean, unlimited.mean)
    gain = unlimited.distribution(labels).log_prob(codes).mean() - late.distribution(labels).log_prob(codes).mean()
    assert gain > 0


@pytest.mark.parametrize("kind", ["vae", "cvae"])
def test_the_finish_reads_at_most_em_codes_images_of_each_table(bars_root: Path, tmp_path: Path, monkeypatch,  # noqa: F811
                                                                kind: str) -> None:
    """EM fits at most EM_CODES codes per table, so the passes that compute them read no more: 5 of
    the 64 images for a VAE, 5 of each class's 16 for a CVAE (its prior is per class)."""
    monkeypatch.setattr(elbo, "EM_CODES", 5)
    seen: list[torch.Tensor] = []
    moments = elbo.posterior_moments

    def recording(model, batches):
        batches = list(batches)
        seen.extend(labels for _, labels in batches)
        return moments(model, batches)
    monkeypatch.setattr(elbo, "posterior_moments", recording)
    training.train(flags(bars_root, kind, **{"train.steps": 2}), out=str(tmp_path / "r"))
    counts = torch.bincount(torch.cat(seen), minlength=4)
    if kind == "cvae":
        assert counts.tolist() == [5] * 4
    else:
        assert counts.sum() == 5


def test_a_short_budget_reads_fewer_images_per_class_for_its_finish(bars_root: Path, monkeypatch) -> None:  # noqa: F811
    """Under a plan the finish reads at most FINISH_SHARE of the budget's worth of images, spread over
    the classes (never under FINISH_MIN_CODES each), and keeps the seconds that takes plus EM's share."""
    monkeypatch.setattr(elbo, "FINISH_MIN_CODES", 2)
    plan = training.plan_run(flags(bars_root, "cvae"), None)
    objective = make_objective(training.build_model(plan, torch.device("cpu")), plan.config.train, torch.device("cpu"))
    source = plan.source
    assert len(objective.finish_rows(source)) == 64  # no plan: every image (16 a class, under EM_CODES)
    monkeypatch.setattr(elbo, "FINISH_PASS_COST", 5.0)
    speed, budget = 100.0, 10.0  # images/s and seconds: a tenth of the budget passes 100 / 5 = 20 images, 5 a class
    seconds = objective.plan_finish(source, speed, budget)
    labels = source.all_labels()[objective.finish_rows(source)]
    assert torch.bincount(labels).tolist() == [5] * 4
    assert seconds == pytest.approx(20 * 5.0 / speed + elbo.EM_SHARE * budget)
    objective.plan_finish(source, speed, 0.1)  # a budget too short for 2 a class still reads 2 a class
    assert torch.bincount(source.all_labels()[objective.finish_rows(source)]).tolist() == [2] * 4


def test_a_budget_keeps_the_time_its_finish_needs(bars_root: Path, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    """On the fake clock: a VAE whose finish needs half of a 2 s budget plans about half the steps of
    one whose finish is free, and its EM is given a deadline inside the budget; a --steps run's has none."""
    deadlines: list[float | None] = []
    finish = elbo.ELBOObjective.finish
    monkeypatch.setattr(elbo.ELBOObjective, "finish", lambda self, source, deadline=None: (
        deadlines.append(deadline), finish(self, source, deadline))[1])
    training.train(flags(bars_root, "vae", **{"train.steps": 2}), out=str(tmp_path / "steps"))
    assert deadlines == [None]
    first_plans = []
    for seconds in (0.0, 1.0):
        clock = FakeClock(0.001)
        plans = budget_plans(monkeypatch, clock)
        monkeypatch.setattr(elbo.ELBOObjective, "plan_finish", lambda self, source, speed, budget, s=seconds: s)
        started = clock.now
        training.train(flags(bars_root, "vae"), out=str(tmp_path / f"r{seconds}"), max_time=2.0)
        first_plans.append(plans[0])
        assert deadlines[-1] == pytest.approx(started + 2.0 * (1 - training.SAVE_SHARE), abs=0.01)
    assert 0.3 * first_plans[0] < first_plans[1] < 0.6 * first_plans[0]


@pytest.mark.parametrize("kind", ["vae", "cvae"])
def test_training_fits_the_prior_and_the_decoder_variance(bars_root: Path, tmp_path: Path, kind: str) -> None:  # noqa: F811
    plain = {"model.best_of": 1} if kind == "cvae" else {}  # one draw per sample: --best-of picks among several (test_best_of)
    run = Path(training.train(flags(bars_root, kind, **{"train.steps": 6, **plain}), out=str(tmp_path / "r")).run_dir)
    weights = load_file(run / ckpt.MODEL_FILE)
    model, loaded = ckpt.load_model(str(run), torch.device("cpu"))
    config = loaded.config.model
    assert (config.prior, config.likelihood) == ("fitted", "gaussian")
    assert config.prior_components == (10 if model.conditional else 100)
    tables = model.config.num_classes if model.conditional else 1
    mixture = weights["decoder.prior.weights"]
    assert mixture.shape == (tables, config.prior_components) and torch.allclose(mixture.sum(1), torch.ones(tables))
    assert weights["decoder.prior.mean"].abs().sum() > 0  # fitted, not N(0, I)
    eps = torch.randn(4, model.latent_dim)
    labels = torch.arange(4) % 10 if model.conditional else None
    with torch.no_grad():
        assert torch.allclose(model.generate(eps, labels), model.decoder.mean_image(model.decoder.prior(eps, labels), labels))
        assert not torch.allclose(model.generate(eps, labels), model.decoder.mean_image(eps, labels))
    # the decoder's variance is its mean squared error on the training images (at their posterior means)
    data = load_dataset("fashion-mnist", data_dir=str(bars_root), split="train", channels=1, image_size=config.image_size)
    images = data.all_images()
    recon = reconstruct(model, images, data.all_labels() if model.conditional else None, torch.device("cpu"))
    mse = ((recon.float() - images.float()) / 255).pow(2).mean()
    assert 0 < float(weights["decoder.variance"]) < 0.5
    assert math.isclose(float(weights["decoder.variance"]), float(mse), rel_tol=0.05)


def test_the_discretized_gaussian_gives_each_8_bit_value_a_probability() -> None:
    levels = torch.arange(256, dtype=torch.float64) / 255
    for mean, std in ((0.5, 0.1), (0.0, 1e-4), (1.3, 0.02), (0.2, 30.0), (0.37, 1e-3)):
        log_p = discretized_gaussian_log_prob(levels, torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64))
        assert torch.isfinite(log_p).all() and math.isclose(float(torch.logsumexp(log_p, 0)), 0.0, abs_tol=1e-9)
    # a bin much narrower than the spread: the density at the value times the bin's width
    x = torch.tensor([0.4, 0.6], dtype=torch.float64)
    density = torch.distributions.Normal(0.5, 0.2).log_prob(x) - math.log(255)
    assert torch.allclose(discretized_gaussian_log_prob(x, torch.tensor(0.5, dtype=torch.float64), torch.tensor(0.2, dtype=torch.float64)),
                          density.double(), atol=1e-4)


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_eval_reports_the_bounds_under_both_priors(bars_root: Path, tmp_path: Path, likelihood: str) -> None:  # noqa: F811
    run = Path(training.train(flags(bars_root, "vae", **{"train.steps": 4, "model.likelihood": likelihood}),
                              out=str(tmp_path / "r")).run_dir)
    model, _ = ckpt.load_model(str(run), torch.device("cpu"))
    images = torch.randint(0, 256, (8, 1, 16, 16), dtype=torch.uint8)
    result = vae_metrics(model, images, None, 4, torch.device("cpu"))
    assert result["likelihood"] == likelihood
    assert {"nll", "nll_standard_prior", "elbo"} <= set(result) and result["nll"] != result["nll_standard_prior"]
    assert result["nll"] <= -result["elbo"] + 1e-6  # the importance-weighted bound is the tighter one
    if likelihood == "gaussian":  # a probability of 8-bit values: at most 1 per pixel, so -log p(x) > 0
        assert result["nll"] > 0


def legacy_file(run: Path, pooled_class: int | None) -> None:
    """Rewrite a run's files as a schema-7 VAE's: no likelihood or components in the config, and a
    prior of one Gaussian per class or, older, one pooled Gaussian (that of `pooled_class`)."""
    for name, prefix in ((ckpt.MODEL_FILE, ""), (ckpt.STATE_FILE, "model.")):
        tensors = load_file(run / name)
        with safe_open(str(run / name), framework="pt") as handle:
            meta = handle.metadata()
        del tensors[prefix + "decoder.prior.weights"]
        for key in ("decoder.prior.mean", "decoder.prior.scale_tril"):
            old = tensors[prefix + key][:, 0]
            tensors[prefix + key] = (old if pooled_class is None else old[pooled_class]).contiguous()
        config = json.loads(meta["genai.config"])
        config["schema"] = 7
        for field in ("prior_components", "likelihood"):
            del config["model"][field]
        meta["genai.config"] = json.dumps(config)
        save_file(tensors, str(run / name), metadata=meta)
    (run / "config.json").write_text(json.dumps(json.loads(meta["genai.config"])))


@pytest.mark.parametrize("pooled", [True, False], ids=["pooled", "per-class"])
def test_a_cvae_written_before_mixtures_samples_what_it_sampled(bars_root: Path, tmp_path: Path, pooled: bool) -> None:  # noqa: F811
    """Files from before mixtures hold one Gaussian per class, and those before per-class priors one
    pooled (dim,) Gaussian: they load with one component and a Bernoulli decoder, sample what they
    sampled, and `sample` and `--resume` read them."""
    run = Path(training.train(flags(bars_root, "cvae", **{"train.steps": 4, "train.class_loss": 0.0, **OLD_PRIOR_FLAGS}), out=str(tmp_path / "r")).run_dir)
    legacy_file(run, 3 if pooled else None)
    legacy = load_file(run / ckpt.MODEL_FILE)
    model, loaded = ckpt.load_model(str(run), torch.device("cpu"))
    assert (loaded.config.model.prior_components, loaded.config.model.likelihood) == (1, "bernoulli")
    eps, labels = torch.randn(5, model.latent_dim), torch.tensor([0, 1, 3, 7, 9])
    mean, tril = legacy["decoder.prior.mean"], legacy["decoder.prior.scale_tril"]
    codes = mean + eps @ tril.T if pooled else mean[labels] + (tril[labels] @ eps.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        assert torch.allclose(model.generate(eps, labels), model.decoder.mean_image(codes, labels), atol=1e-6)
    result = CliRunner().invoke(app, ["sample", "-c", str(run), "--n", "4", "--out", str(tmp_path / "s.png")])
    assert result.exit_code == 0, result.stderr
    resumed = training.train({"train.steps": 6}, resume=str(run))
    assert load_file(Path(resumed.run_dir) / ckpt.MODEL_FILE)["decoder.prior.mean"].shape == (10, 1, model.latent_dim)


def test_old_configs_load_with_what_their_runs_did() -> None:
    for kind, prior, expected in (("vae", "fitted", (1, "bernoulli")), ("vae", "standard", (None, "bernoulli")),
                                  ("dcgan", "standard", (None, None))):
        config = Config.from_dict({"schema": 7, "model": {"kind": kind, "prior": prior}})
        assert (config.model.prior_components, config.model.likelihood) == expected


def test_standard_prior_on_request_and_refused_for_gans(bars_root: Path, tmp_path: Path) -> None:  # noqa: F811
    run = Path(training.train(flags(bars_root, "vae", **{"train.steps": 2, "model.prior": "standard"}), out=str(tmp_path / "r")).run_dir)
    assert not any(k.startswith("decoder.prior") for k in load_file(run / ckpt.MODEL_FILE))
    with pytest.raises(UsageError, match="--prior 'fitted' is not available for --model dcgan"):
        training.resolve(flags(bars_root, "dcgan", **{"model.prior": "fitted"}))


def test_a_vae_written_before_fitted_priors_still_samples(bars_root: Path, tmp_path: Path) -> None:  # noqa: F811
    """A schema-2 model file (no prior in its config, no prior buffers) loads as a standard-prior VAE."""
    run = Path(training.train(flags(bars_root, "vae", **{"train.steps": 2, "model.prior": "standard",
                                                         "model.likelihood": "bernoulli"}), out=str(tmp_path / "r")).run_dir)
    with safe_open(str(run / ckpt.MODEL_FILE), framework="pt") as handle:
        meta = handle.metadata()
    config = json.loads(meta["genai.config"])
    config["schema"] = 2
    for field in ("prior", "prior_components", "likelihood"):
        del config["model"][field]
    meta["genai.config"] = json.dumps(config)
    save_file(load_file(run / ckpt.MODEL_FILE), str(run / ckpt.MODEL_FILE), metadata=meta)
    result = CliRunner().invoke(app, ["sample", "-c", str(run), "--n", "4", "--out", str(tmp_path / "s.png")])
    assert result.exit_code == 0, result.stderr
