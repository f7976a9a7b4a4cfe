"""pix2pix: paired data (A|B folders, A/ B/ folders, inputs derived from a dataset), training,
`sample --input`, eval's paired metrics and an image-input export."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FakeClock, budget_plans, make_idx_dataset
from PIL import Image
from typer.testing import CliRunner

from genai_cli import pairs, training
from genai_cli.cli import app
from genai_cli.config import Config
from genai_cli.errors import UsageError
from genai_cli.models import MODELS
from genai_cli.models.pix2pix import patch_layers
from genai_cli.objectives import choose
from genai_cli.objectives.pix2pix import Pix2PixObjective

TINY = {"model.kind": "pix2pix", "model.width": 8, "model.image_size": 16, "train.batch_size": 4,
        "train.steps": 3, "train.log_every": 1}


def stripes(size: tuple[int, int], seed: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    pixels[:, :, 0] = rng.integers(0, 256)
    pixels[::4] = 255
    return Image.fromarray(pixels).convert(mode)


def ab_folder(root: Path, n: int = 6, side: int = 20, split: str | None = "train") -> Path:
    """Side-by-side A|B images of flat colours (A blue, B red), as the pix2pix datasets ship."""
    folder = root / split if split else root
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pair = Image.new("RGB", (2 * side, side))
        pair.paste(Image.new("RGB", (side, side), (0, 0, 100 + 10 * i)), (0, 0))
        pair.paste(Image.new("RGB", (side, side), (10 * i, 0, 0)), (side, 0))
        pair.save(folder / f"{i}.png")
    return root


def a_b_folders(root: Path, n: int = 6, side: int = 20) -> Path:
    """A/ (grey PNG) and B/ (RGB BMP) whose files pair by name."""
    for sub in ("A", "B"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        stripes((side, side), i, "L").save(root / "A" / f"img{i}.png")
        Image.new("RGB", (side, side), (0, 20 * i, 0)).save(root / "B" / f"img{i}.bmp")
    return root


@pytest.fixture(scope="module")
def idx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("p2p-idx")
    make_idx_dataset(root, n_train=16, n_test=8)
    return root


@pytest.fixture(scope="module")
def run(idx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny pix2pix trained on the edges of a tiny Fashion-MNIST; read-only."""
    out = tmp_path_factory.mktemp("p2p-run") / "r"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENAI_OFFLINE", "1")
        return Path(training.train({**TINY, "data.name": "fashion-mnist", "data.data_dir": str(idx)}, out=str(out)).run_dir)


def cli(*args: str, stdin: bytes | None = None):
    return CliRunner().invoke(app, list(args), input=stdin)


# ---------------------------------------------------------------- model and objective


@pytest.mark.parametrize("size,layers", [(28, 1), (32, 1), (64, 2), (128, 3), (256, 3)])
def test_unet_depth_and_patch_size_follow_the_image_size(size: int, layers: int) -> None:
    from genai_cli.config import ModelConfig

    model = MODELS.get("pix2pix").build(ModelConfig(kind="pix2pix", latent_dim=0, channels=3, in_channels=1,
                                                    image_size=size, width=4)).eval()
    x = torch.rand(2, 1, size, size) * 2 - 1
    assert model.generate(x).shape == (2, 3, size, size)
    assert patch_layers(size) == layers
    assert model.discriminator(torch.zeros(2, 3, size, size), x).shape[1] == 1
    assert model.input_names == ("input",) and model.translates


def test_dropout_is_the_only_noise_and_skips_carry_the_input() -> None:
    from genai_cli.config import ModelConfig

    model = MODELS.get("pix2pix").build(ModelConfig(kind="pix2pix", latent_dim=0, channels=1, image_size=16, width=4))
    x = torch.rand(1, 1, 16, 16) * 2 - 1
    model.eval()
    assert torch.equal(model.generate(x), model.generate(x))  # eval: deterministic
    model.train()
    torch.manual_seed(0)
    assert not torch.equal(model.generate(x), model.generate(x))  # training: dropout draws


def test_the_objective_is_cgan_plus_100_l1_with_the_papers_adam() -> None:
    spec = choose(MODELS.get("pix2pix").shape, "bce")
    assert spec.build is Pix2PixObjective and (spec.lr, spec.beta1) == (2e-4, 0.5)



def test_l1_alone_trains_only_the_generator_and_resumes_bitwise(idx: Path, tmp_path: Path) -> None:
    """The paper's baseline: the same U-Net on L1 alone; D keeps its initial weights."""
    from safetensors.torch import load_file

    from genai_cli import checkpoint as ckpt

    base = {**TINY, "data.name": "fashion-mnist", "data.data_dir": str(idx), "train.gan_loss": "l1"}
    straight = training.train({**base, "train.steps": 4}, out=str(tmp_path / "straight"))
    assert set(straight.losses) == {"l1"} and math.isfinite(straight.losses["l1"])
    first = training.train({**base, "train.steps": 2}, out=str(tmp_path / "split"))
    after_4, after_2 = (load_file(Path(run) / ckpt.MODEL_FILE) for run in (straight.run_dir, first.run_dir))
    d_keys = [k for k in after_4 if k.startswith("discriminator.")]
    g_keys = [k for k in after_4 if k.startswith("generator.")]
    assert d_keys and all(torch.equal(after_4[k], after_2[k]) for k in d_keys)  # D never moves
    assert not all(torch.equal(after_4[k], after_2[k]) for k in g_keys)  # G does
    resumed = training.train({"train.steps": 4}, resume=first.run_dir)
    for name in (ckpt.MODEL_FILE, ckpt.STATE_FILE):
        a, b = load_file(Path(straight.run_dir) / name), load_file(Path(resumed.run_dir) / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def metric_rows(run_dir: str) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def d_updates(run_dir: str) -> list[int]:
    """How many steps D's Adam took, per parameter."""
    from genai_cli import checkpoint as ckpt

    state = ckpt.load_training_state(Path(run_dir)).optimizers["discriminator"]["state"]
    return sorted({int(s["step"]) for s in state.values()})


def test_the_warm_up_trains_g_on_l1_alone_then_adds_d(idx: Path, tmp_path: Path) -> None:
    run = training.train({**TINY, "data.name": "fashion-mnist", "data.data_dir": str(idx), "train.steps": 4,
                          "train.warmup": 0.5}, out=str(tmp_path / "r"))
    assert [sorted(k for k in row if k.startswith(("loss", "l1"))) for row in metric_rows(run.run_dir)] == [
        ["l1"], ["l1"], ["l1", "loss_d", "loss_g"], ["l1", "loss_d", "loss_g"]]
    assert d_updates(run.run_dir) == [2]  # D learned in the last two steps only


def test_a_resumed_run_given_more_steps_keeps_its_warm_up_end(idx: Path, tmp_path: Path) -> None:
    base = {**TINY, "data.name": "fashion-mnist", "data.data_dir": str(idx), "train.warmup": 0.5}
    first = training.train({**base, "train.steps": 4}, out=str(tmp_path / "r"))
    training.train({"train.steps": 8}, resume=first.run_dir)
    assert ["loss_d" in row for row in metric_rows(first.run_dir)] == [False] * 2 + [True] * 6
    assert d_updates(first.run_dir) == [6]  # D went on learning: the warm-up did not come back


def test_a_budgeted_run_plans_both_phases_and_replans_when_d_joins(idx: Path, tmp_path: Path, monkeypatch) -> None:
    """On a clock that reads 1 ms a call during the warm-up and 3 ms after it (about the objective's
    warmup_cost): the warm-up takes about half the budget, as 78% of a run's steps do, and the run ends
    by its plan, revised once D joins."""
    clock, switched = FakeClock(0.001), []
    adversarial = Pix2PixObjective.step

    def dearer(self, real, labels):
        switched.append(clock.now)
        clock.tick = 0.003
        return adversarial(self, real, labels)

    plans = budget_plans(monkeypatch, clock)
    monkeypatch.setattr(Pix2PixObjective, "step", dearer)
    flags = {**TINY, "data.name": "fashion-mnist", "data.data_dir": str(idx), "train.steps": None, "train.epochs": None}
    run = training.train(flags, out=str(tmp_path / "r"), max_time=2.0)
    assert len(plans) >= 2 and run.step == plans[-1] and not run.max_time_reached
    warm = ["loss_d" not in row for row in metric_rows(run.run_dir)]
    ended = warm.index(False)
    assert not any(warm[ended:]) and ended == Config.from_json((Path(run.run_dir) / "config.json").read_text()).train.warmup_steps
    assert 0.35 < switched[0] / 2.0 < 0.65  # the share of the budget spent warming up


def test_a_noise_gan_loss_on_pix2pix_is_a_usage_error(idx: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="bce, l1"):
        training.train({**TINY, "data.name": "fashion-mnist", "data.data_dir": str(idx), "train.gan_loss": "hinge"},
                       out=str(tmp_path / "r"))

# ---------------------------------------------------------------- paired data


@pytest.mark.parametrize("kind", pairs.DERIVED)
def test_derived_pairs_train(kind: str, idx: Path, tmp_path: Path) -> None:
    result = training.train({**TINY, "data.name": "fashion-mnist", "data.data_dir": str(idx), "data.pairs": kind},
                            out=str(tmp_path / "r"))
    config = Config.from_json((Path(result.run_dir) / "config.json").read_text())
    assert config.data.pairs == kind and config.model.in_channels == 1
    assert all(math.isfinite(v) for v in result.losses.values()) and "l1" in result.losses
    assert (Path(result.run_dir) / "samples" / "step_000003.png").is_file()


def test_resume_is_bitwise_identical_dropout_and_the_warm_up_included(idx: Path, tmp_path: Path, monkeypatch) -> None:
    """Stopped at step 2 of 5, inside the L1 warm-up (steps 0-2): the resumed run adds D at step 3 as the straight one does."""
    from safetensors.torch import load_file

    from genai_cli import checkpoint as ckpt

    base = {**TINY, "data.name": "fashion-mnist", "data.data_dir": str(idx), "data.pairs": "masked", "train.steps": 5}
    straight = training.train(base, out=str(tmp_path / "straight"))
    with monkeypatch.context() as patch:
        patch.setattr(training.Session, "past_deadline", lambda self: self.step == 2)
        first = training.train(base, out=str(tmp_path / "split"))
    assert first.step == 2
    resumed = training.train({}, resume=first.run_dir)
    for name in (ckpt.MODEL_FILE, ckpt.STATE_FILE):
        a, b = load_file(Path(straight.run_dir) / name), load_file(Path(resumed.run_dir) / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_derived_inputs() -> None:
    images = torch.zeros(1, 1, 16, 16, dtype=torch.uint8)
    images[..., 8:] = 255
    edges = pairs.derive("edges", images)
    assert edges[0, 0, 4, 7] == 0 and edges[0, 0, 4, 2] == 255  # a black line on the step, white elsewhere
    masked = pairs.derive("masked", images)
    assert (masked[..., 4:12, 4:12] == 128).all() and masked[0, 0, 0, 0] == 0
    small = pairs.derive("downsampled", torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16))
    assert small[0, 0, :4, :4].unique().numel() == 1  # 4x4 blocks


@pytest.mark.parametrize("direction", ["AtoB", "BtoA"])
def test_ab_folder_pairs_in_both_directions(tmp_path: Path, direction: str) -> None:
    root = ab_folder(tmp_path / "facades")
    source = pairs.load_pairs(str(root), "folder", direction, image_size=16)
    assert len(source) == 6 and source.location.endswith("train")
    a, b = (source.inputs, source.images) if direction == "AtoB" else (source.images, source.inputs)
    assert int(a[3, 2, 8, 8]) == 130 and int(b[3, 0, 8, 8]) == 30  # image 3: A (0, 0, 130) | B (30, 0, 0)


def test_ab_folder_trains_from_the_cli(tmp_path: Path) -> None:
    root = ab_folder(tmp_path / "facades")
    result = cli("train", "--model", "pix2pix", "--data", str(root), "--image-size", "16", "--width", "8",
                 "--batch-size", "2", "--steps", "2", "--out", str(tmp_path / "r"), "--json", "-q")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["data"]["pairs"] == "folder" and config["model"]["channels"] == 3


@pytest.mark.parametrize("direction", ["AtoB", "BtoA"])
def test_a_b_folders_pair_by_name_with_their_own_channels(tmp_path: Path, direction: str) -> None:
    root = a_b_folders(tmp_path / "ab")
    source = pairs.load_pairs(str(root), "folder", direction, image_size=16)
    gray, rgb = (source.inputs, source.images) if direction == "AtoB" else (source.images, source.inputs)
    assert gray.shape == (6, 1, 16, 16) and rgb.shape == (6, 3, 16, 16)
    assert int(rgb[2, 1, 8, 8]) == 40  # B/img2.bmp is (0, 40, 0), paired by name
    result = training.train({**TINY, "data.name": str(root), "data.direction": direction, "train.batch_size": 2},
                            out=str(tmp_path / "r"))
    config = Config.from_json((Path(result.run_dir) / "config.json").read_text()).model
    assert (config.in_channels, config.channels) == ((1, 3) if direction == "AtoB" else (3, 1))


def test_a_missing_partner_is_named(tmp_path: Path) -> None:
    root = a_b_folders(tmp_path / "ab")
    (root / "B" / "img4.bmp").unlink()
    with pytest.raises(UsageError, match=r"img4.png has no partner in .*B"):
        pairs.load_pairs(str(root), "folder", "AtoB", image_size=16)


def test_size_mismatches_are_usage_errors(tmp_path: Path) -> None:
    root = a_b_folders(tmp_path / "ab")
    Image.new("RGB", (24, 20)).save(root / "B" / "img1.bmp")
    with pytest.raises(UsageError, match="img1.png is 20x20 but its partner .*img1.bmp is 24x20"):
        pairs.load_pairs(str(root), "folder", "AtoB", image_size=16)
    side = ab_folder(tmp_path / "sbs", split=None)
    Image.new("RGB", (30, 20)).save(side / "odd.png")
    with pytest.raises(UsageError, match="odd.png is 30x20, not two squares side by side"):
        pairs.load_pairs(str(side), "folder", "AtoB", image_size=16)


def test_older_configs_load_without_the_paired_fields() -> None:
    raw = Config().to_dict()
    raw["schema"] = 3
    for section, name in (("model", "in_channels"), ("data", "pairs"), ("data", "direction")):
        del raw[section][name]
    old = Config.from_dict(raw)
    assert (old.model.in_channels, old.data.pairs, old.data.direction) == (None, None, "AtoB")


def test_configs_from_before_the_warm_up_load_without_one() -> None:
    raw = Config().to_dict()
    raw["schema"] = 4
    del raw["train"]["warmup"]
    del raw["train"]["warmup_steps"]
    old = Config.from_dict(raw).train
    assert (old.warmup, old.warmup_steps) == (0.0, 0)  # their pix2pix runs had D from the first step


# ---------------------------------------------------------------- sample --input


def test_sample_an_image_a_folder_and_stdin(run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        stripes((20, 20), i, "L").save(folder / f"x{i}.png")
    one = cli("sample", "-c", str(run), "--input", str(folder / "x0.png"), "--out", str(tmp_path / "one.png"), "--json")
    assert one.exit_code == 0, one.output
    assert Image.open(tmp_path / "one.png").size == (16, 16)  # the translation itself, no frame
    many = cli("sample", "-c", str(run), "--input", str(folder), "--out", str(tmp_path / "outs"), "--json")
    assert many.exit_code == 0 and json.loads(many.stdout)["n"] == 3
    manifest = [json.loads(line) for line in (tmp_path / "outs" / "manifest.jsonl").read_text().splitlines()]
    assert [m["file"] for m in manifest] == ["x0.png", "x1.png", "x2.png"]
    assert all((tmp_path / "outs" / m["file"]).is_file() for m in manifest)
    png = io.BytesIO()
    stripes((20, 20), 0, "L").save(png, format="PNG")
    piped = cli("sample", "-c", str(run), "--input", "-", "--out", str(tmp_path / "piped.png"), stdin=png.getvalue())
    assert piped.exit_code == 0, piped.output
    assert (tmp_path / "piped.png").read_bytes() == (tmp_path / "one.png").read_bytes()


def test_sample_a_dataset_split_as_input_output_target_rows(run: Path, idx: Path, tmp_path: Path) -> None:
    result = cli("sample", "-c", str(run), "--input", "fashion-mnist:test", "--n", "5", "--out", str(tmp_path / "g.png"),
                 "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n"] == 5
    assert Image.open(tmp_path / "g.png").size == (3 * 18 + 2, 5 * 18 + 2)  # 3 columns, 5 rows of 16 px + padding


@pytest.mark.parametrize("args,message", [
    (["--seeds", "0-3"], "--seeds chooses latents"),
    (["--label", "1"], "--label chooses latents"),
    ([], "translates images: give them with --input"),
    (["--input", "nowhere"], "--input nowhere is no image, folder or dataset"),
])
def test_sample_usage_errors_on_pix2pix(run: Path, tmp_path: Path, args: list[str], message: str) -> None:
    if "--seeds" in args or "--label" in args:
        args = [*args, "--input", "fashion-mnist:test"]
    result = cli("sample", "-c", str(run), *args, "--out", str(tmp_path / "x.png"))
    assert result.exit_code == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- eval


def test_ssim_of_an_image_with_itself_is_1_and_of_flat_images_by_hand() -> None:
    from genai_cli import metrics

    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(metrics.ssim(x, x), torch.ones(2, dtype=torch.float64))
    # flat images a and b: no variance, so SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    a, b = torch.full((1, 1, 12, 12), 0.5), torch.full((1, 1, 12, 12), 0.25)
    assert metrics.ssim(a, b).item() == pytest.approx((2 * 0.5 * 0.25 + 1e-4) / (0.25 + 0.0625 + 1e-4), abs=1e-12)
    scores = metrics.paired(torch.full((1, 1, 12, 12), 255, dtype=torch.uint8), torch.zeros(1, 1, 12, 12, dtype=torch.uint8))
    assert scores["l1"] == 1 and scores["psnr"] == 0 and scores["ssim"] == pytest.approx(1e-4 / (1 + 1e-4))


def test_eval_scores_outputs_against_targets(run: Path) -> None:
    result = cli("eval", "-c", str(run), "--n", "8", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert set(out["metrics"]) == {"fid", "l1", "psnr", "ssim"}
    assert all(math.isfinite(v) for v in out["metrics"].values()) and 0 <= out["metrics"]["l1"] <= 1
    assert out["protocol"]["candidates"] == "translations of the first 8 edges inputs of fashion-mnist test"


def test_eval_on_a_paired_folder_gates_on_ssim(tmp_path: Path) -> None:
    root = a_b_folders(tmp_path / "ab")
    run_dir = training.train({**TINY, "data.name": str(root), "train.batch_size": 2}, out=str(tmp_path / "r")).run_dir
    result = cli("eval", "-c", run_dir, "--n", "6", "--json", "--fail-if", "ssim>1")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert set(out["metrics"]) == {"l1", "psnr", "ssim"} and "--features inception" in out["not_computed"]["fid"]
    assert out["gates"][0]["passed"]


# ---------------------------------------------------------------- export


@pytest.mark.parametrize("suffix", ["onnx", "pt2"])
def test_export_takes_an_image_and_matches_pytorch(run: Path, tmp_path: Path, suffix: str) -> None:
    if suffix == "onnx":
        pytest.importorskip("onnxruntime")
    result = cli("export", "-c", str(run), "--out", str(tmp_path / f"m.{suffix}"), "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["passed"] and all(d is not None and d <= 1e-4 for d in out["max_abs_diff"].values())
    if suffix == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
        (graph_input,) = session.get_inputs()
        assert graph_input.name == "input" and graph_input.shape == ["batch", 1, 16, 16]
