"""The VAE's fitted prior: a Gaussian fitted to the training codes when training ends, stored in
the checkpoint, used by sampling, eval and export; runs of older configs keep N(0, I)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_training import bars_root, flags  # noqa: F401  (bars_root is a fixture)
from typer.testing import CliRunner

from genai_cli import checkpoint as ckpt
from genai_cli import training
from genai_cli.cli import app
from genai_cli.errors import UsageError
from genai_cli.models.vae import FittedPrior


def test_fitted_prior_matches_the_codes_it_was_fitted_to() -> None:
    codes = torch.randn(4000, 3) @ torch.tensor([[2.0, 0, 0], [0.5, 1, 0], [0, 0, 0.1]]) + torch.tensor([1.0, -2, 3])
    prior = FittedPrior(3)
    assert torch.equal(prior(codes[:5]), codes[:5])  # unfitted: N(0, I) itself
    prior.fit(codes)
    samples = prior(torch.randn(200_000, 3, generator=torch.Generator().manual_seed(0)))
    assert torch.allclose(samples.mean(0), codes.mean(0), atol=0.02)
    assert torch.allclose(torch.cov(samples.T), torch.cov(codes.T), atol=0.03)
    variances = torch.rand(4000, 3)
    prior.fit(codes, variances)  # the aggregate posterior: the means' spread plus each posterior's own
    assert torch.allclose(prior.scale_tril[0] @ prior.scale_tril[0].T,
                          torch.cov(codes.T) + torch.diag(variances.mean(0)), atol=1e-4)


def test_a_conditional_prior_draws_each_class_from_its_own_codes() -> None:
    """The CVAE's codes still carry the class; a code from the pooled Gaussian with another class's
    label decodes as neither, so each label samples its own class's Gaussian."""
    labels = torch.arange(6000) % 3
    centres = torch.tensor([[-5.0, 0], [0, 5], [5, 0]])
    codes = centres[labels] + 0.5 * torch.randn(6000, 2)
    prior = FittedPrior(2, classes=3)
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


@pytest.mark.parametrize("kind", ["vae", "cvae"])
def test_training_fits_the_prior_and_sampling_uses_it(bars_root: Path, tmp_path: Path, kind: str) -> None:  # noqa: F811
    run = Path(training.train(flags(bars_root, kind, **{"train.steps": 6}), out=str(tmp_path / "r")).run_dir)
    weights = load_file(run / ckpt.MODEL_FILE)
    mean, tril = weights["decoder.prior.mean"], weights["decoder.prior.scale_tril"]
    assert mean.abs().sum() > 0 and not torch.equal(tril[0], torch.eye(mean.shape[1]))  # fitted, not the identity
    model, loaded = ckpt.load_model(str(run), torch.device("cpu"))
    assert loaded.config.model.prior == "fitted"
    assert len(mean) == (model.config.num_classes if model.conditional else 1)  # one Gaussian per class for a CVAE
    eps = torch.randn(4, model.latent_dim)
    labels = torch.arange(4) % 10 if model.conditional else torch.zeros(4, dtype=torch.long)
    codes = mean[labels] + (tril[labels] @ eps.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        assert torch.allclose(model.generate(eps, labels if model.conditional else None),
                              model.decoder.mean_image(codes, labels if model.conditional else None), atol=1e-6)


def test_a_cvae_written_with_one_pooled_prior_samples_what_it_sampled(bars_root: Path, tmp_path: Path) -> None:  # noqa: F811
    """Files from before per-class priors hold one (dim,) Gaussian: every class gets it, so they sample
    what they sampled, and `sample` and `--resume` read them."""
    run = Path(training.train(flags(bars_root, "cvae", **{"train.steps": 4}), out=str(tmp_path / "r")).run_dir)
    from safetensors import safe_open
    from safetensors.torch import save_file

    for name, prefix in ((ckpt.MODEL_FILE, ""), (ckpt.STATE_FILE, "model.")):
        tensors = load_file(run / name)
        with safe_open(str(run / name), framework="pt") as handle:
            meta = handle.metadata()
        for key in ("decoder.prior.mean", "decoder.prior.scale_tril"):
            tensors[prefix + key] = tensors[prefix + key][3].contiguous()
        save_file(tensors, str(run / name), metadata=meta)
    legacy = load_file(run / ckpt.MODEL_FILE)
    model, _ = ckpt.load_model(str(run), torch.device("cpu"))
    eps, labels = torch.randn(5, model.latent_dim), torch.tensor([0, 1, 3, 7, 9])
    with torch.no_grad():
        expected = model.decoder.mean_image(legacy["decoder.prior.mean"] + eps @ legacy["decoder.prior.scale_tril"].T, labels)
        assert torch.allclose(model.generate(eps, labels), expected, atol=1e-6)
    result = CliRunner().invoke(app, ["sample", "-c", str(run), "--n", "4", "--out", str(tmp_path / "s.png")])
    assert result.exit_code == 0, result.stderr
    resumed = training.train({"train.steps": 6}, resume=str(run))
    assert load_file(Path(resumed.run_dir) / ckpt.MODEL_FILE)["decoder.prior.mean"].shape == (10, model.latent_dim)


def test_standard_prior_on_request_and_refused_for_gans(bars_root: Path, tmp_path: Path) -> None:  # noqa: F811
    run = Path(training.train(flags(bars_root, "vae", **{"train.steps": 2, "model.prior": "standard"}), out=str(tmp_path / "r")).run_dir)
    assert not any(k.startswith("decoder.prior") for k in load_file(run / ckpt.MODEL_FILE))
    with pytest.raises(UsageError, match="--prior 'fitted' is not available for --model dcgan"):
        training.resolve(flags(bars_root, "dcgan", **{"model.prior": "fitted"}))


def test_a_vae_written_before_fitted_priors_still_samples(bars_root: Path, tmp_path: Path) -> None:  # noqa: F811
    """A schema-2 model file (no prior in its config, no prior buffers) loads as a standard-prior VAE."""
    run = Path(training.train(flags(bars_root, "vae", **{"train.steps": 2, "model.prior": "standard"}), out=str(tmp_path / "r")).run_dir)
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(run / ckpt.MODEL_FILE), framework="pt") as handle:
        meta = handle.metadata()
    config = json.loads(meta["genai.config"])
    config["schema"] = 2
    del config["model"]["prior"]
    meta["genai.config"] = json.dumps(config)
    save_file(load_file(run / ckpt.MODEL_FILE), str(run / ckpt.MODEL_FILE), metadata=meta)
    result = CliRunner().invoke(app, ["sample", "-c", str(run), "--n", "4", "--out", str(tmp_path / "s.png")])
    assert result.exit_code == 0, result.stderr


def test_eval_reports_the_bound_under_both_priors(bars_root: Path, tmp_path: Path) -> None:  # noqa: F811
    from genai_cli.evaluation import vae_metrics

    run = Path(training.train(flags(bars_root, "vae", **{"train.steps": 4}), out=str(tmp_path / "r")).run_dir)
    model, _ = ckpt.load_model(str(run), torch.device("cpu"))
    images = torch.randint(0, 256, (8, 1, 16, 16), dtype=torch.uint8)
    result = vae_metrics(model, images, None, 4, torch.device("cpu"))
    assert {"nll", "nll_standard_prior", "elbo"} <= set(result) and result["nll"] != result["nll_standard_prior"]
