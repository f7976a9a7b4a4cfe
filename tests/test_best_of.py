"""--best-of: a cvae's samples picked among candidates by the classifier its class loss trains, a copy
of which the model file carries; turned noise, refusals, and runs from before it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli import assert_one_line_error, invoke
from test_training import as_older_schema, bars_root, flags  # noqa: F401  (bars_root is a fixture)

from genai_cli import checkpoint as ckpt
from genai_cli import training
from genai_cli.config import ModelConfig
from genai_cli.errors import UsageError
from genai_cli.images import to_uint8
from genai_cli.models import MODELS
from genai_cli.models.vae import noise_turns
from genai_cli.sampling import choose_best_of, latents


def tiny_cvae(best_of: int):
    config = ModelConfig(kind="cvae", latent_dim=4, channels=1, image_size=16, num_classes=3, width=8, prior="fitted",
                         prior_components=2, likelihood="gaussian", class_norm=False, best_of=best_of)
    torch.manual_seed(0)
    return MODELS.get("cvae").build(config).eval()


def test_noise_turns_are_rotations_and_the_first_leaves_the_noise_as_it_is() -> None:
    turns = noise_turns(5, 6)
    assert torch.allclose(turns @ turns.transpose(1, 2), torch.eye(6).expand(5, 6, 6), atol=1e-5)
    assert torch.equal(turns[0], torch.eye(6))
    assert not torch.allclose(turns[1], turns[2])  # distinct candidates, not copies
    assert torch.equal(turns, noise_turns(5, 6))  # fixed: a seed names the same sample on every build
    assert torch.equal(turns[:2], noise_turns(2, 6))  # fewer candidates at sample time are the first of these


@torch.no_grad()
def test_a_sample_is_the_candidate_the_critic_reads_as_most_surely_its_class() -> None:
    model = tiny_cvae(3)
    decoder = model.decoder
    eps, labels = torch.randn(40, 4), torch.arange(40) % 3
    picked = model.generate(eps, labels)
    candidates = torch.stack([decoder.draw(eps @ turn.T, labels) for turn in decoder.turns])  # 3 x 40 x image
    sure = torch.stack([decoder.critic(c).log_softmax(1).gather(1, labels[:, None])[:, 0] for c in candidates])
    expected = candidates[sure.argmax(0), torch.arange(40)]
    assert torch.allclose(picked, expected, atol=1e-6)
    assert not torch.allclose(picked, candidates[0])  # some rows kept another candidate than the plain draw
    chosen = decoder.critic(picked).log_softmax(1).gather(1, labels[:, None])[:, 0]
    assert (chosen >= sure.max(0).values - 1e-5).all()


def test_best_of_one_is_the_plain_decoder_with_no_classifier_in_the_file() -> None:
    model = tiny_cvae(1)
    assert model.decoder.critic is None
    assert not any("critic" in name or "turns" in name for name in model.state_dict())


def test_the_model_file_carries_the_classifier_training_kept(bars_root: Path, tmp_path: Path) -> None:  # noqa: F811
    run = Path(training.train(flags(bars_root, "cvae", **{"train.steps": 3}), out=str(tmp_path / "r")).run_dir)
    state = ckpt.load_training_state(run)
    assert state.checkpoint.config.model.best_of == 2  # on by default with the class loss
    model, _ = ckpt.load_model(str(run), torch.device("cpu"))
    trained = state.companions["classifier"]
    copy = model.decoder.critic.state_dict()
    assert set(copy) == set(trained) and all(torch.equal(copy[k], trained[k]) for k in trained)
    labels = torch.arange(6) % model.config.num_classes
    assert model.generate(torch.randn(6, model.latent_dim), labels).shape == (6, 1, 16, 16)


def test_best_of_needs_the_cvae_class_loss_and_is_off_without_it(bars_root: Path) -> None:  # noqa: F811
    assert training.resolve(flags(bars_root, "cvae", **{"train.class_loss": 0.0})).model.best_of == 1
    assert training.resolve(flags(bars_root, "cvae", **{"model.best_of": 3})).model.best_of == 3
    assert training.resolve(flags(bars_root, "dcgan")).model.best_of == 1
    for family, extra in (("vae", {}), ("cgan", {}), ("cvae", {"train.class_loss": 0.0})):
        with pytest.raises(UsageError, match="drop --best-of"):
            training.resolve(flags(bars_root, family, **{"model.best_of": 3, **extra}))
    with pytest.raises(UsageError, match="--best-of must be"):
        training.resolve(flags(bars_root, "cvae", **{"model.best_of": 0}))


def test_a_cvae_from_before_best_of_loads_and_samples_as_it_did(bars_root: Path, tmp_path: Path) -> None:  # noqa: F811
    run = Path(training.train(flags(bars_root, "cvae", **{"train.steps": 2, "model.best_of": 1}),
                              out=str(tmp_path / "r")).run_dir)
    model, _ = ckpt.load_model(str(run), torch.device("cpu"))
    eps, labels = torch.randn(6, model.latent_dim), torch.arange(6) % model.config.num_classes
    before = model.generate(eps, labels)
    as_older_schema(run, 13, "model", "best_of")
    model, loaded = ckpt.load_model(str(run), torch.device("cpu"))
    assert loaded.config.model.best_of == 1 and model.decoder.critic is None
    assert torch.equal(model.generate(eps, labels), before)
    assert training.train({"train.steps": 3}, resume=str(run)).step == 3


def test_sample_and_eval_pick_among_another_count_than_trained(bars_root: Path, tmp_path: Path) -> None:  # noqa: F811
    run = Path(training.train(flags(bars_root, "cvae", **{"train.steps": 3, "model.best_of": 2}), out=str(tmp_path / "r")).run_dir)
    model, _ = ckpt.load_model(str(run), torch.device("cpu"))

    def sampled(*extra: str) -> np.ndarray:
        out = tmp_path / f"s{len(list(tmp_path.glob('s*.npz')))}.npz"
        result = invoke("sample", "-c", str(run), "--n", "30", "--out", str(out), "--device", "cpu", *extra)
        assert result.exit_code == 0, result.stderr
        return np.load(out)["arr_0"]

    as_trained, plain, four = sampled(), sampled("--best-of", "1"), sampled("--best-of", "4")
    assert np.array_equal(as_trained, sampled("--best-of", "2"))
    labels = torch.arange(30) // math.ceil(30 / model.config.num_classes)  # `sample` gives each class a run
    with torch.no_grad():
        draw = to_uint8(model.decoder.draw(latents(range(30), model.latent_dim), labels)).permute(0, 2, 3, 1).numpy()
    assert np.abs(plain.astype(int) - draw).max() <= 1  # the plain draw, no pick
    assert not np.array_equal(as_trained, plain) and not np.array_equal(four, as_trained)
    result = invoke("eval", "-c", str(run), "--n", "20", "--metrics", "nll", "--iw-samples", "2", "--split", "train",
                    "--best-of", "3", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["protocol"]["best_of"] == 3


def test_export_ships_the_pick_of_another_count_or_the_decoder_alone(bars_root: Path, tmp_path: Path) -> None:  # noqa: F811
    run = Path(training.train(flags(bars_root, "cvae", **{"train.steps": 3, "model.best_of": 2}), out=str(tmp_path / "r")).run_dir)
    for k in (1, 3):
        result = invoke("export", "-c", str(run), "--out", str(tmp_path / f"slim{k}"), "--best-of", str(k), "--json")
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout)["passed"] is True  # the folder samples as the model picking among k
        slim, loaded = ckpt.load_model(str(tmp_path / f"slim{k}"), torch.device("cpu"))
        assert loaded.config.model.best_of == k
        assert any(name.startswith("decoder.critic.") for name in loaded.tensors) == (k > 1)  # 1: no classifier shipped
        full, _ = ckpt.load_model(str(run), torch.device("cpu"))
        eps, labels = latents(range(24), full.latent_dim), torch.arange(24) % 2
        with torch.no_grad():
            as_trained = full.generate(eps, labels)
            choose_best_of(full, run, k)
            assert torch.equal(slim.generate(eps, labels), full.generate(eps, labels))
            assert not torch.equal(slim.generate(eps, labels), as_trained)
    result = invoke("eval", "-c", str(run), "--n", "20", "--metrics", "nll", "--iw-samples", "2", "--split", "train",
                    "--best-of", "1", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["protocol"]["best_of"] == 1  # asked for, so recorded, though nothing picks


@pytest.mark.parametrize("kind", ["vae", "cvae-best-of-1"])
def test_sample_best_of_is_refused_without_a_classifier_to_pick_with(bars_root: Path, tmp_path: Path, kind: str) -> None:  # noqa: F811
    family, extra = ("cvae", {"model.best_of": 1}) if kind.startswith("cvae") else (kind, {})
    run = training.train(flags(bars_root, family, **{"train.steps": 2, **extra}), out=str(tmp_path / "r")).run_dir
    for command in ("sample", "eval"):
        result = invoke(command, "-c", run, "--best-of", "2", "--out" if command == "sample" else "--n",
                        str(tmp_path / "g.png") if command == "sample" else "20")
        assert_one_line_error(result, 2, "no classifier to pick samples with", "drop --best-of")
    result = invoke("export", "-c", run, "--best-of", "2", "--out", str(tmp_path / "slim"))
    assert_one_line_error(result, 2, "no classifier to pick samples with", "drop --best-of")
    assert not (tmp_path / "g.png").exists() and not (tmp_path / "slim").exists()
