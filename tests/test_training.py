"""The training loop: every family learns, resume is bit-exact, signals save and exit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image_folder
from idx import write_idx
from safetensors import safe_open
from safetensors.torch import load_file, save

from genai_cli import checkpoint as ckpt
from genai_cli import training
from genai_cli.config import parse_duration
from genai_cli.errors import CheckpointError, ExitCode, TrainingDiverged, UsageError
from genai_cli.models import MODELS
from genai_cli.objectives.adversarial import COLLAPSE
from genai_cli.objectives.elbo import ELBOObjective

# float32 pinned: the exact comparisons below hold on every CPU, bf16 or not (test_precision.py covers bf16)
TINY = {"model.width": 8, "model.image_size": 16, "train.batch_size": 16, "train.log_every": 5, "train.precision": "fp32"}


@pytest.fixture(scope="module")
def bars_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 structured 28x28 images: class k is a bright bar at a class-specific row, plus noise.

    Unlike pure noise, this has something to learn, so a loss that falls means learning.
    """
    root = tmp_path_factory.mktemp("bars")
    rng = np.random.default_rng(0)
    labels = np.arange(64) % 4
    images = rng.integers(0, 40, (64, 28, 28))
    for i, k in enumerate(labels):
        images[i, 4 + 6 * k : 8 + 6 * k, 4:24] = 220
    write_idx(root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte", images)
    write_idx(root / "FashionMNIST" / "raw" / "train-labels-idx1-ubyte", labels)
    return root


def flags(root: Path, kind: str, **extra: object) -> dict:
    return {"model.kind": kind, "data.name": "fashion-mnist", "data.data_dir": str(root), **TINY, **extra}


def resumes_bit_for_bit_with(root: Path, tmp_path: Path, kind: str, setting: dict, steps: int, split: int) -> tuple[dict, dict]:
    """Train `steps` steps with `setting` straight through and resumed at `split`: the two end bit for bit alike,
    and unlike a run without it. Returns the train configs stored by the resumed run and by the run without."""
    given = flags(root, kind, **setting)
    straight = training.train({**given, "train.steps": steps}, out=str(tmp_path / "straight"))
    first = training.train({**given, "train.steps": split}, out=str(tmp_path / "split"))
    resumed = training.train({"train.steps": steps}, resume=first.run_dir)
    plain = training.train(flags(root, kind, **{"train.steps": steps}), out=str(tmp_path / "plain"))
    a, b, c = (load_file(Path(run.run_dir) / ckpt.STATE_FILE) for run in (straight, resumed, plain))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a if k.startswith("model."))
    return tuple(json.loads((Path(run.run_dir) / ckpt.CONFIG_FILE).read_text())["train"] for run in (resumed, plain))


def read_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()


def as_older_schema(run: Path, schema: int, section: str, name: str) -> None:
    """Rewrite a run's files as genai wrote them at `schema`, before its configs held `section.name`."""
    from safetensors.torch import save_file

    def older(text: str) -> str:
        raw = json.loads(text)
        del raw[section][name]
        return json.dumps({**raw, "schema": schema})
    for file in (ckpt.MODEL_FILE, ckpt.STATE_FILE):
        meta = read_metadata(run / file)
        save_file(load_file(run / file), str(run / file), metadata={**meta, "genai.config": older(meta["genai.config"])})
    (run / ckpt.CONFIG_FILE).write_text(older((run / ckpt.CONFIG_FILE).read_text()))


def metrics(run_dir: str | Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("kind", MODELS.names())
def test_each_family_trains_at_its_own_batch_size_unless_told(tmp_path: Path, kind: str) -> None:
    """pix2pix's 16 is not the GANs' 128; a --batch-size given wins, and the checkpoint records the one used."""
    write_idx(tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte", np.zeros((160, 28, 28), np.uint8))
    write_idx(tmp_path / "FashionMNIST" / "raw" / "train-labels-idx1-ubyte", np.arange(160) % 4)
    given = {**flags(tmp_path, kind), "train.batch_size": None}
    assert training.resolve(given).train.batch_size == MODELS.get(kind).batch_size
    assert training.resolve({**given, "train.batch_size": 8}).train.batch_size == 8


@pytest.mark.parametrize("kind", ["gan", "dcgan", "cgan"])
def test_adversarial_families_learn_to_discriminate(bars_root: Path, tmp_path: Path, kind: str) -> None:
    result = training.train(flags(bars_root, kind, **{"train.steps": 30}), out=str(tmp_path / kind))
    rows = metrics(result.run_dir)
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30]
    assert rows[-1]["loss_g"] != rows[0]["loss_g"]
    assert rows[-1]["d_real"] > rows[-1]["d_fake"]  # D separates real from generated
    assert all(np.isfinite(r["loss_d"]) and np.isfinite(r["loss_g"]) for r in rows)


@pytest.mark.parametrize("kind", ["vae", "cvae"])
def test_variational_families_reduce_the_elbo(bars_root: Path, tmp_path: Path, kind: str) -> None:
    result = training.train(flags(bars_root, kind, **{"train.steps": 30}), out=str(tmp_path / kind))
    rows = metrics(result.run_dir)
    assert (Path(result.run_dir) / "reconstructions.png").is_file()
    assert rows[-1]["loss"] < 0.9 * rows[0]["loss"]
    assert rows[-1]["loss"] == pytest.approx(rows[-1]["recon"] + rows[-1]["kl"], rel=1e-5)


def test_run_directory_contents(bars_root: Path, tmp_path: Path) -> None:
    result = training.train(flags(bars_root, "dcgan", **{"train.steps": 10, "train.sample_every": 5}),
                            out=str(tmp_path / "run"))
    run = Path(result.run_dir)
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_000005.png", "step_000010.png"]
    for name in ("model.safetensors", "training_state.safetensors", "config.json", "loss.svg", "report.html", "metrics.jsonl"):
        assert (run / name).is_file(), name
    assert Path("runs/latest").resolve() == run.resolve()  # runs/ of the working directory
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["channels"] == 1 and saved["model"]["image_size"] == 16
    assert saved["data"]["classes"][0] == "T-shirt/top"
    assert not list(run.glob(".*.tmp"))  # no temporary files left behind


@pytest.mark.parametrize("kind", ["gan", "dcgan", "cvae"])
def test_resume_is_bitwise_identical_to_one_straight_run(bars_root: Path, tmp_path: Path, kind: str) -> None:
    """N steps, stop, resume for M steps == N + M steps straight (crossing an epoch boundary)."""
    straight = training.train(flags(bars_root, kind, **{"train.steps": 7}), out=str(tmp_path / "straight"))
    first = training.train(flags(bars_root, kind, **{"train.steps": 3}), out=str(tmp_path / "split"))
    resumed = training.train({"train.steps": 7}, resume=first.run_dir)
    a = load_file(Path(straight.run_dir) / ckpt.MODEL_FILE)
    b = load_file(Path(resumed.run_dir) / ckpt.MODEL_FILE)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    sa = load_file(Path(straight.run_dir) / ckpt.STATE_FILE)
    sb = load_file(Path(resumed.run_dir) / ckpt.STATE_FILE)
    assert all(torch.equal(sa[k], sb[k]) for k in sa if k.startswith("optim."))
    assert [r["step"] for r in metrics(resumed.run_dir)] == [3, 5, 7]


def test_resume_drops_log_lines_past_the_checkpoint(bars_root: Path, tmp_path: Path) -> None:
    run = training.train(flags(bars_root, "vae", **{"train.steps": 4, "train.log_every": 1}), out=str(tmp_path / "r"))
    with (Path(run.run_dir) / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 5, "loss": 1.0}\n{"step": 6, "lo')  # lines a crash left behind
    training.train({"train.steps": 6}, resume=run.run_dir)
    assert [r["step"] for r in metrics(run.run_dir)] == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_to_change_the_model(bars_root: Path, tmp_path: Path) -> None:
    run = training.train(flags(bars_root, "vae", **{"train.steps": 2}), out=str(tmp_path / "r"))
    with pytest.raises(UsageError, match="--model cannot change"):
        training.train({"model.kind": "dcgan", "train.steps": 4}, resume=run.run_dir)
    with pytest.raises(UsageError, match="--beta1 cannot change"):
        training.train({"train.beta1": 0.5, "train.steps": 4}, resume=run.run_dir)


def test_resume_may_lower_the_learning_rate(bars_root: Path, tmp_path: Path) -> None:
    """The fix a divergence message suggests: continue the last good checkpoint with a lower --lr."""
    run = training.train(flags(bars_root, "vae", **{"train.steps": 2}), out=str(tmp_path / "r"))
    training.train({"train.lr": 1e-4, "train.steps": 3}, resume=run.run_dir)
    state = ckpt.load_training_state(Path(run.run_dir))
    assert state.checkpoint.config.train.lr == 1e-4
    assert [g["lr"] for g in state.optimizers["model"]["param_groups"]] == [1e-4]


def test_existing_run_directory_is_not_overwritten(bars_root: Path, tmp_path: Path) -> None:
    run = training.train(flags(bars_root, "vae", **{"train.steps": 2}), out=str(tmp_path / "r"))
    before = (Path(run.run_dir) / ckpt.MODEL_FILE).read_bytes()
    with pytest.raises(UsageError, match="--resume .*--force"):
        training.train(flags(bars_root, "vae", **{"train.steps": 2}), out=run.run_dir)
    assert (Path(run.run_dir) / ckpt.MODEL_FILE).read_bytes() == before


def test_resume_refuses_a_damaged_optimiser_or_rng_state(bars_root: Path, tmp_path: Path) -> None:
    run = Path(training.train(flags(bars_root, "vae", **{"train.steps": 2}), out=str(tmp_path / "r")).run_dir)
    path = run / ckpt.STATE_FILE
    tensors, meta = load_file(path), read_metadata(path)
    state = json.loads(meta["genai.state"])
    state["rng"] = {"__dict__": [["torch", 1], ["numpy", 1], ["python", 1]]}  # well-formed JSON, wrong content
    meta["genai.state"] = json.dumps(state)
    path.write_bytes(save(tensors, metadata=meta))
    with pytest.raises(CheckpointError, match="damaged optimiser or RNG state.*start a new run"):
        training.train({"train.steps": 4}, resume=str(run))


def test_resume_removes_temporaries_a_killed_write_left(bars_root: Path, tmp_path: Path) -> None:
    run = Path(training.train(flags(bars_root, "vae", **{"train.steps": 2}), out=str(tmp_path / "r")).run_dir)
    stale = [run / ".model.safetensors.x1y2.tmp", run / "samples" / ".step_000003.png.a1b2.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    training.train({"train.steps": 3}, resume=str(run))
    assert not any(path.exists() for path in stale)


def test_force_replaces_the_run_but_not_the_users_other_files(bars_root: Path, tmp_path: Path) -> None:
    run = Path(training.train(flags(bars_root, "vae", **{"train.steps": 4, "train.log_every": 1}), out=str(tmp_path / "r")).run_dir)
    (run / "notes.txt").write_text("mine")
    training.train(flags(bars_root, "vae", **{"train.steps": 2, "train.log_every": 1}), out=str(run), force=True)
    assert ckpt.load_training_state(run).checkpoint.step == 2
    assert [r["step"] for r in metrics(run)] == [1, 2]  # the old run's log is gone with it
    assert (run / "notes.txt").read_text() == "mine"


def test_max_time_ends_training_cleanly_with_a_checkpoint(bars_root: Path, tmp_path: Path) -> None:
    result = training.train(flags(bars_root, "dcgan", **{"train.steps": 100_000}), out=str(tmp_path / "r"), max_time=1e-6)
    assert result.max_time_reached and result.step == 1  # the first step boundary after the deadline
    assert ckpt.load_training_state(Path(result.run_dir)).checkpoint.step == 1
    assert training.train({"train.steps": 3}, resume=result.run_dir).step == 3


@pytest.mark.parametrize("text,seconds", [("45", 45), ("90s", 90), ("10m", 600), ("1.5h", 5400), ("1h30m", 5400)])
def test_max_time_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "10x", "0", "0m", "-5m", "m"])
def test_max_time_rejects_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(UsageError, match="--max-time"):
        parse_duration(text)


@pytest.mark.parametrize("target,found", [("parameter", "became NaN or infinite"), ("buffer", "weights hold NaN")])
def test_divergence_stops_and_keeps_the_last_good_checkpoint(bars_root: Path, tmp_path: Path, monkeypatch, target: str, found: str) -> None:
    """A NaN after step 3 in a weight (seen in the next loss) or a BatchNorm statistic (seen when saving)."""
    original, calls = ELBOObjective.step, []

    def poisoned(self: ELBOObjective, real: torch.Tensor, labels: torch.Tensor | None):
        losses = original(self, real, labels)
        calls.append(1)
        if len(calls) == 3:
            tensor = next(self.model.parameters()) if target == "parameter" else next(self.model.buffers())
            tensor.data.fill_(float("nan"))
        return losses

    monkeypatch.setattr(ELBOObjective, "step", poisoned)
    run = tmp_path / "r"
    with pytest.raises(TrainingDiverged) as raised:
        training.train(flags(bars_root, "vae", **{"train.steps": 10, "train.log_every": 1, "train.save_every": 2}), out=str(run))
    message = str(raised.value)
    assert raised.value.exit_code == ExitCode.DIVERGED == 5
    assert found in message and "step 4" in message and "step 2" in message and "--lr 0.0005" in message
    kept = ckpt.load_training_state(run)
    assert kept.checkpoint.step == 2
    assert all(torch.isfinite(t).all() for t in kept.model_weights.values())


def test_collapse_warning_needs_many_steps_of_a_winning_discriminator() -> None:
    watch = training.CollapseWatch(COLLAPSE)
    window = 50
    assert watch.update(50, window, 0.001) is None  # one quiet window is not collapse
    assert watch.update(100, window, 0.5) is None  # and a recovery resets the count
    messages = [watch.update(step, window, 0.001) for step in range(150, 100 + COLLAPSE.steps + 1, window)]
    assert [m is not None for m in messages].count(True) == 1 and messages[-1] is not None
    assert "--lr-d" in messages[-1] and "since step 100" in messages[-1]
    assert watch.update(10_000, window, 0.001) is None  # warned once per run


def test_conditional_model_needs_labels(flat_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="labelled"):
        training.train({"model.kind": "cgan", "data.name": str(flat_folder), **TINY,
                        "train.batch_size": 4, "train.steps": 1}, out=str(tmp_path / "r"))


def test_trains_on_an_image_folder(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "pets", classes=("cat", "dog"), n_per_class=8, size=20)
    result = training.train({"model.kind": "cgan", "data.name": str(folder), **TINY,
                             "train.batch_size": 4, "train.steps": 3}, out=str(tmp_path / "r"))
    model, loaded = ckpt.load_model(result.run_dir, torch.device("cpu"))
    assert loaded.config.data.classes == ["cat", "dog"]
    assert loaded.config.model.channels == 3 and loaded.config.model.num_classes == 2


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_saves_a_checkpoint_and_exits_with_its_code(bars_root: Path, tmp_path: Path, signum: int, code: int) -> None:
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "genai_cli", "train", "--model", "dcgan", "--data-dir", str(bars_root),
           "--width", "8", "--image-size", "16", "--batch-size", "16", "--steps", "100000",
           "--log-every", "1", "--save-every", "100000", "--out", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "GENAI_OFFLINE": "1"})
    deadline = time.monotonic() + 60
    while not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.1)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "--resume" in err.decode() and "Traceback" not in err.decode()
    assert (run / "loss.svg").is_file() and (run / "report.html").is_file()  # the stopped run is summarised too
    step = ckpt.load_training_state(run).checkpoint.step
    assert step >= 1
    resumed = training.train({"train.steps": step + 2}, resume=str(run))
    assert resumed.step == step + 2


def test_generator_moving_average_is_what_the_model_file_holds(bars_root: Path, tmp_path: Path) -> None:
    averaged = training.train(flags(bars_root, "dcgan", **{"train.steps": 6}), out=str(tmp_path / "ema"))
    model = load_file(Path(averaged.run_dir) / ckpt.MODEL_FILE)
    state = load_file(Path(averaged.run_dir) / ckpt.STATE_FILE)
    generator = [k for k in model if k.startswith("generator.") and "weight" in k]
    assert all(torch.equal(model[k], state[f"ema.{k.removeprefix('generator.')}"]) for k in generator)
    assert not all(torch.equal(model[k], state[f"model.{k}"]) for k in generator)  # the average lags the live G
    assert all(torch.equal(model[k], state[f"model.{k}"]) for k in model if k.startswith("discriminator."))

    plain = training.train(flags(bars_root, "dcgan", **{"train.steps": 6, "train.ema": 0.0}), out=str(tmp_path / "plain"))
    model = load_file(Path(plain.run_dir) / ckpt.MODEL_FILE)
    state = load_file(Path(plain.run_dir) / ckpt.STATE_FILE)
    measured = {k for k in model if k.startswith("generator.") and k.endswith(("running_mean", "running_var"))}
    assert measured and not any(k.startswith("ema.") for k in state)
    assert all(torch.equal(model[k], state[f"model.{k}"]) for k in model if k not in measured)
    # G's BatchNorm statistics are measured afresh for the file (standing statistics), not training's running ones
    assert not any(torch.equal(model[k], state[f"model.{k}"]) for k in measured)


def test_standing_statistics_are_the_statistics_of_what_g_is_fed() -> None:
    from genai_cli.objectives.base import STANDING_BATCH, standing_statistics

    torch.manual_seed(0)
    g = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2), torch.nn.BatchNorm1d(2))
    before = {k: v.clone() for k, v in g.state_dict().items()}
    fed = []

    def inputs(draws: torch.Generator, n: int) -> tuple:
        fed.append(torch.randn(n, 3, generator=draws) * 5 + 2)
        return (fed[-1],)

    measured = standing_statistics(g, inputs, image_size=28)
    assert all(torch.equal(v, g.state_dict()[k]) for k, v in before.items())  # G itself is untouched
    assert len(fed) > 1 and all(len(x) == STANDING_BATCH for x in fed[:-1])
    with torch.no_grad():
        first = g[0](torch.cat(fed))
        batch_vars = torch.stack([g[0](x).var(0) for x in fed]).mean(0)
    assert torch.allclose(measured[1].running_mean, first.mean(0), atol=1e-5)
    assert torch.allclose(measured[1].running_var, batch_vars, atol=1e-5)
    again = standing_statistics(g, lambda draws, n: (torch.randn(n, 3, generator=draws) * 5 + 2,), image_size=28)
    assert torch.equal(again[3].running_mean, measured[3].running_mean)  # seeded: a function of the weights alone
    assert not measured[1].training and standing_statistics(torch.nn.Linear(2, 2), inputs, 28).training  # no BN: G itself
