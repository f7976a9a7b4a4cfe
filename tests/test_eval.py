"""`genai eval`: metric maths checked by hand and against scipy, extractors, gates, the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import make_idx_dataset, tiny_train
from idx import write_idx
from scipy import linalg
from typer.testing import CliRunner

from genai_cli import evaluation, features, metrics
from genai_cli.cli import app
from genai_cli.data import load_dataset
from genai_cli.errors import GenaiError, UsageError
from genai_cli.fileio import file_sha256

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def gaussian(n: int, d: int, shift: float = 0.0, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(shift, 1.0, (n, d)))


# ---------------------------------------------------------------- FID, KID, IS


def test_fid_equals_a_direct_scipy_computation() -> None:
    a, b = gaussian(400, 8), gaussian(300, 8, shift=0.5, seed=1) @ torch.randn(8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x, y = a.numpy(), b.numpy()
    mu1, mu2, s1, s2 = x.mean(0), y.mean(0), np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    direct = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert metrics.fid(a, b) == pytest.approx(direct, rel=1e-9)


def test_fid_is_zero_for_a_set_with_itself_and_grows_with_noise() -> None:
    a = gaussian(500, 16)
    assert abs(metrics.fid(a, a)) < 1e-6
    noisy = [metrics.fid(a, a + gaussian(500, 16, seed=3) * scale) for scale in (0.1, 0.5, 1.0)]
    assert noisy[0] < noisy[1] < noisy[2]


def test_kid_is_unbiased_on_equal_distributions_and_positive_otherwise() -> None:
    same, same_std = metrics.kid(gaussian(600, 8), gaussian(600, 8, seed=1), subsets=50, subset_size=200)
    assert abs(same) < same_std  # unbiased: centred on 0, unlike the biased MMD estimate
    differ, _ = metrics.kid(gaussian(600, 8), gaussian(600, 8, shift=1.0, seed=1), subsets=50, subset_size=200)
    assert differ > 50 * same_std


def test_inception_score_bounds() -> None:
    confident = torch.eye(10).repeat(10, 1) * 50  # every class equally, each image certain
    assert metrics.inception_score(confident)[0] == pytest.approx(10, rel=1e-3)
    assert metrics.inception_score(torch.zeros(100, 10))[0] == pytest.approx(1.0)


# ---------------------------------------------------------------- precision/recall, density/coverage


def test_precision_recall_by_hand() -> None:
    """Real points on a line 0..4 (3-NN radius: 3 for the ends, 2 inside); fakes checked by hand."""
    real = torch.tensor([[0.0, 0], [1, 0], [2, 0], [3, 0], [4, 0]])
    fake = torch.tensor([[2.0, 0.5], [10, 0], [11, 0], [12, 0], [13, 0]])
    precision, recall = metrics.precision_recall(real, fake, k=3)
    assert precision == pytest.approx(1 / 5)  # only (2, 0.5) lies in a real ball
    # fake radii: (2,.5)->(12,0) is ~10.01; the others 3-NN radius 2 or 3; reals within 10.01 of (2,.5): all 5
    assert recall == pytest.approx(1.0)


def test_density_coverage_by_hand() -> None:
    real = torch.tensor([[0.0, 0], [1, 0], [2, 0], [3, 0], [4, 0], [5, 0]])
    fake = torch.tensor([[0.5, 0.1], [0.5, -0.1], [100.0, 0]])
    density, coverage = metrics.density_coverage(real, fake, k=2)
    # 2-NN radii: 2,1,1,1,1,2. (0.5,±0.1) are 0.51 from reals 0 and 1 and 1.5 from real 2: in 2 balls each.
    assert density == pytest.approx((2 + 2 + 0) / (2 * 3))
    assert coverage == pytest.approx(2 / 6)


# ---------------------------------------------------------------- extractors


class TinyFidHelperNet(torch.nn.Module):
    """Stands in for fid-helper's TorchScript: forward(x) -> N×2048 at 299x299."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3, 2048)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-1] == 299
        return self.proj(x.mean(dim=(2, 3)))


class TinyNvidiaNet(torch.nn.Module):
    """Stands in for NVIDIA's TorchScript: forward(img, return_features) on [0, 255] at any size."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3, 2048)

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return self.proj(img.mean(dim=(2, 3)) / 255)


@pytest.mark.parametrize("net", [TinyFidHelperNet, TinyNvidiaNet])
def test_torchscript_inception_files_load(tmp_path: Path, net: type) -> None:
    path = tmp_path / "inception-2015-12-05.pt"
    torch.jit.save(torch.jit.script(net()), str(path))
    extractor = features.load_inception(str(path), torch.device("cpu"))
    f, logits = extractor(torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8))
    assert f.shape == (3, 2048) and logits is None and extractor.weights_sha256 == file_sha256(path)


def test_pytorch_fid_state_dict_loads_with_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(features.fid_inception_v3().state_dict(), path)
    extractor = features.load_inception(str(path), torch.device("cpu"))
    f, logits = extractor(torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8))
    assert f.shape == (2, 2048) and logits is not None and logits.shape == (2, 1008)


def test_missing_inception_offline_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GENAI_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(features, "cache_dir", lambda: Path("nowhere"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: "nowhere-either")
    with pytest.raises(GenaiError, match="--inception-weights") as err:
        features.find_inception_weights(None)
    assert "\n" not in str(err.value)


def test_real_features_are_cached(tmp_path: Path) -> None:
    calls = []
    extractor = features.Extractor("stub", "w", "0" * 64, "none", lambda x: (x.float().flatten(1)[:, :2], None), torch.device("cpu"))
    extractor._features = lambda x: (calls.append(1), (x.float().flatten(1)[:, :2], None))[1]
    images = torch.arange(12, dtype=torch.uint8).view(3, 1, 2, 2)
    key = features.features_key("d", "test", images, extractor)
    assert key != features.features_key("d", "test", images + 1, extractor)  # other pixels, other entry
    first, _ = features.cached_features(key, images, extractor, "p")
    second, _ = features.cached_features(key, images, extractor, "p")
    assert torch.equal(first, second) and len(calls) == 1


# ---------------------------------------------------------------- gates and the engine


@pytest.mark.parametrize("text,value,fails", [("fid>30", 31.0, True), ("fid>30", 29.0, False), ("acc<0.9", 0.8, True), ("nll<=80", 80.0, True)])
def test_gates(text: str, value: float, fails: bool) -> None:
    assert evaluation.parse_gate(text).fails(value) is fails


@pytest.mark.parametrize("text", ["fid", "fid>>3", "speed>3"])
def test_bad_gates_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        evaluation.parse_gate(text)


@pytest.fixture(scope="module")
def eval_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval-data")
    make_idx_dataset(root, n_train=64, n_test=40)
    out = tmp_path_factory.mktemp("eval-runs")
    runs = {kind: Path(tiny_train(kind, root, out / kind).run_dir) for kind in ("dcgan", "cgan", "vae", "cvae")}
    runs["root"] = root
    return runs


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout


def test_eval_json_states_its_protocol_and_logs_to_the_run(eval_runs: dict[str, Path]) -> None:
    code, out = run_cli("eval", "-c", str(eval_runs["dcgan"]), "--n", "30", "--json")
    assert code == 0, out
    result = json.loads(out)
    assert set(result["metrics"]) >= {"fid", "kid", "is", "precision", "recall", "density", "coverage"}
    assert "NaN" not in out  # strict JSON: non-finite numbers are written as null
    assert result["protocol"]["extractor"] == "classifier" and result["protocol"]["n_real"] == 30
    assert result["protocol"]["reference"] == "fashion-mnist test"
    # what was done: 30 images per set shrink KID's subsets, and the k-NN metrics state their k
    assert result["protocol"]["kid"] == "100 subsets of 30, not 1000: the smaller set has 30 images; poly kernel"
    assert result["protocol"]["pr_k"] == 3 and result["protocol"]["dc_k"] == 5 and result["protocol"]["is_splits"] == 10
    lines = (eval_runs["dcgan"] / "metrics.jsonl").read_text().splitlines()
    assert "eval" in json.loads(lines[-1])
    code, out = run_cli("eval", "-c", str(eval_runs["dcgan"]), "--n", "30", "--metrics", "fid", "--json")
    assert code == 0 and not {"kid", "pr_k", "dc_k", "is_splits"} & set(json.loads(out)["protocol"])


def test_eval_conditional_and_vae_metrics(eval_runs: dict[str, Path]) -> None:
    _, out = run_cli("eval", "-c", str(eval_runs["cgan"]), "--n", "30", "--json")
    cond = json.loads(out)["metrics"]
    assert set(cond["acc_per_class"]) == set(cond["classifier_acc_per_class"]) == set(FASHION_CLASSES)  # by class name
    assert 0 <= cond["acc"] <= 1
    table = run_cli_all("eval", "-c", str(eval_runs["cgan"]), "--n", "30", "--metrics", "acc")
    assert table.exit_code == 0 and "Ankle boot" in table.stderr, table.stderr
    _, out = run_cli("eval", "-c", str(eval_runs["vae"]), "--n", "20", "--iw-samples", "8", "--metrics", "nll", "--json")
    assert json.loads(out)["protocol"]["extractor"] is None  # the likelihood bounds need no features
    vae = json.loads(out)["metrics"]
    assert vae["nll"] <= -vae["elbo"] + 1e-6  # the importance-weighted bound is tighter than the ELBO
    assert vae["recon_mse"] > 0
    # a cvae's bounds read each image's label: on fewer images than the split (20 of 40), not a batch of another's
    code, out = run_cli("eval", "-c", str(eval_runs["cvae"]), "--n", "20", "--iw-samples", "4", "--metrics", "nll", "--json")
    assert code == 0, out
    cvae = json.loads(out)["metrics"]
    assert cvae["nll"] <= -cvae["elbo"] + 1e-6


@pytest.mark.parametrize("classes,keys", [
    (["cat", "dog"], ["cat", "dog"]),
    ([], ["0", "1"]),  # a dataset without names
    (["a", "a"], ["0", "1"]),  # names that would collide
])
def test_per_class_numbers_are_keyed_by_class_name(classes: list[str], keys: list[str]) -> None:
    assert evaluation.class_keys(classes, 2) == keys


def test_every_table_metric_is_offered_and_gated() -> None:
    """--metrics lists the table's names; every number a metric adds but its spread is a --fail-if gate."""
    result = CliRunner().invoke(app, ["eval", "--help"], env={"COLUMNS": "300"})
    assert all(name in result.stdout for name in evaluation.METRICS), result.stdout
    assert set(evaluation.GATE_METRICS) == {k for m in evaluation.METRICS.values() for k in m.keys if not k.endswith("_std")}
    with pytest.raises(UsageError, match="choose from: " + ", ".join(evaluation.METRICS)):
        evaluation.choose_metrics(evaluation.EvalRequest(metrics=["speed"]), None)


def test_gate_failure_exits_3_and_passing_exits_0(eval_runs: dict[str, Path]) -> None:
    assert run_cli("eval", "-c", str(eval_runs["dcgan"]), "--n", "20", "--metrics", "fid", "--fail-if", "fid>-1")[0] == 3
    assert run_cli("eval", "-c", str(eval_runs["dcgan"]), "--n", "20", "--metrics", "fid", "--fail-if", "fid<-1")[0] == 0
    assert run_cli("eval", "-c", str(eval_runs["dcgan"]), "--metrics", "acc")[0] == 2  # acc needs a conditional model


def test_real_floor_and_image_folder(eval_runs: dict[str, Path], tmp_path: Path) -> None:
    code, out = run_cli("eval", "--real", "--data", "fashion-mnist", "--data-dir", str(eval_runs["root"]), "--n", "30", "--metrics", "fid", "--json")
    assert code == 0 and json.loads(out)["protocol"]["candidates"].startswith("fashion-mnist train")
    assert run_cli("sample", "-c", str(eval_runs["dcgan"]), "--n", "12", "--out", str(tmp_path / "pngs"))[0] == 0
    code, out = run_cli("eval", "--images", str(tmp_path / "pngs"), "--data", "fashion-mnist", "--data-dir", str(eval_runs["root"]), "--metrics", "fid,kid", "--json")
    assert code == 0 and json.loads(out)["protocol"]["n_generated"] == 12
    assert run_cli("sample", "-c", str(eval_runs["dcgan"]), "--n", "12", "--out", str(tmp_path / "s.npz"))[0] == 0
    code, out = run_cli("eval", "--images", str(tmp_path / "s.npz"), "--data", "fashion-mnist", "--data-dir", str(eval_runs["root"]), "--metrics", "fid", "--json")
    assert code == 0 and json.loads(out)["protocol"]["n_generated"] == 12  # `genai sample`'s npz (arr_0)


@pytest.mark.parametrize("key", ["arr_0", "images"])  # genai's npz layout, and older genai files'
def test_eval_images_reads_genais_npz(eval_runs: dict[str, Path], tmp_path: Path, key: str) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (12, 16, 16, 1), dtype=np.uint8)
    np.savez_compressed(tmp_path / "s.npz", **{key: pixels}, labels=np.arange(12) % 10)
    code, out = run_cli("eval", "--images", str(tmp_path / "s.npz"), "--data", "fashion-mnist", "--data-dir",
                        str(eval_runs["root"]), "--metrics", "fid,kid", "--json")
    assert code == 0 and json.loads(out)["protocol"]["n_generated"] == 12
    assert json.loads(out)["protocol"]["candidates"] == f"images in {tmp_path / 's.npz'}"


def test_json_output_writes_non_finite_numbers_as_null() -> None:
    from genai_cli.console import json_safe

    assert json_safe({"is": float("nan"), "per_class": [1.0, float("inf")], "n": 3}) == {"is": None, "per_class": [1.0, None], "n": 3}


# ---------------------------------------------------------------- gates on metrics that could not be computed (issue 12, item 8)


def run_cli_all(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize("gate", ["intra_fid>30", "intra_fid<30", "precision>0.5", "is<1"])
def test_a_gate_on_a_metric_that_was_not_computed_fails_with_its_reason(eval_runs: dict[str, Path], gate: str) -> None:
    """--n 3 is too few for intra-class FID (per class), precision/recall (k+1 = 4) and IS (10 splits):
    whichever way the gate points, a metric without a number fails it."""
    result = run_cli_all("eval", "-c", str(eval_runs["cgan"]), "--n", "3", "--fail-if", gate, "--json")
    assert result.exit_code == 3, result.stderr
    verdict = json.loads(result.stdout)["gates"][0]
    assert verdict["passed"] is False and verdict["value"] is None and verdict["reason"].startswith("not computed: ")
    assert f"quality gate failed: {gate} (not computed: " in result.stderr


# ---------------------------------------------------------------- small or odd allowed inputs (item 9)


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_few_images_compute_what_is_defined_and_say_what_is_not(eval_runs: dict[str, Path], n: int) -> None:
    result = run_cli_all("eval", "-c", str(eval_runs["cgan"]), "--n", str(n), "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["metrics"]["fid"] is not None and report["metrics"]["kid"] is not None
    assert report["metrics"]["is"] is None and "needs at least 10 images" in report["not_computed"]["is"]
    assert report["metrics"]["density"] is None and "needs at least 6 images in each set" in report["not_computed"]["density"]
    assert (report["metrics"]["precision"] is None) is (n < 4)
    assert "internal error" not in result.stderr and "LinAlgWarning" not in result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len([w for w in warnings if "singular covariance" in w]) == 1, result.stderr


def test_a_folder_of_one_image_is_scored_as_far_as_it_can_be(eval_runs: dict[str, Path], tmp_path: Path) -> None:
    assert run_cli("sample", "-c", str(eval_runs["dcgan"]), "--n", "1", "--out", str(tmp_path / "one"))[0] == 0
    result = run_cli_all("eval", "--images", str(tmp_path / "one"), "--data", "fashion-mnist", "--data-dir",
                         str(eval_runs["root"]), "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert all(value is None for value in report["metrics"].values()), report["metrics"]
    assert set(report["not_computed"]) == {"fid", "kid", "is", "precision", "recall", "density", "coverage"}


def test_fid_below_the_feature_dimension_raises_no_scipy_warning() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isfinite(metrics.fid(gaussian(5, 64), gaussian(5, 64, seed=1)))


def test_knn_metrics_in_chunks_equal_the_whole_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    real, fake = gaussian(70, 4), gaussian(50, 4, shift=0.3, seed=1)
    whole = metrics.precision_recall(real, fake), metrics.density_coverage(real, fake)
    monkeypatch.setattr(metrics, "CHUNK", 7)
    assert (metrics.precision_recall(real, fake), metrics.density_coverage(real, fake)) == whole


# ---------------------------------------------------------------- a damaged classifier cache (item 10)


def _damage_truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _damage_strip_metadata(path: Path) -> None:
    from safetensors.torch import load as load_tensors
    from safetensors.torch import save as save_tensors

    path.write_bytes(save_tensors(load_tensors(path.read_bytes())))


@pytest.mark.parametrize("damage", [_damage_truncate, _damage_strip_metadata, lambda path: path.write_bytes(b"")],
                         ids=["truncated", "no-metadata", "empty"])
def test_a_damaged_classifier_cache_is_retrained_with_one_warning(eval_runs: dict[str, Path], damage) -> None:
    args = ("eval", "-c", str(eval_runs["dcgan"]), "--n", "20", "--metrics", "fid", "--json")
    evaluation.load_judge.cache_clear()  # this test's own cache folder, not one an earlier test's judge came from
    first = run_cli_all(*args)
    assert first.exit_code == 0, first.stderr
    cached = Path(json.loads(first.stdout)["protocol"]["weights"])
    damage(cached)
    evaluation.load_judge.cache_clear()
    again = run_cli_all(*args)
    assert again.exit_code == 0, again.stderr
    assert [line for line in again.stderr.splitlines() if "damaged classifier cache" in line] == [
        line for line in again.stderr.splitlines() if line.startswith("warning: ignoring")]
    assert "training it again" in again.stderr
    assert json.loads(again.stdout)["metrics"]["fid"] == pytest.approx(json.loads(first.stdout)["metrics"]["fid"])
    # the same network, so the same identity, though its file is written anew (safetensors orders metadata at random)
    assert json.loads(again.stdout)["protocol"]["weights_sha256"] == json.loads(first.stdout)["protocol"]["weights_sha256"]
    evaluation.load_judge.cache_clear()
    third = run_cli_all(*args)  # rewritten whole: read back without a warning
    assert third.exit_code == 0 and "damaged" not in third.stderr


def test_the_classifier_judge_is_one_network_whatever_thread_count_eval_runs_in() -> None:
    """CPU sums split by thread: unpinned, 1 and 3 threads train other weights from these same 1,024 images."""
    draws = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (1024, 1, 28, 28), dtype=torch.uint8, generator=draws)
    labels = torch.randint(0, 10, (1024,), generator=draws)
    trained = []
    for threads in (1, 3):
        with features.cpu_threads(threads):
            trained.append(features.train_judge(images, labels, 10, epochs=1).state_dict())
            assert torch.get_num_threads() == threads  # the caller's count, back once the judge is trained
    assert all(torch.equal(trained[0][k], trained[1][k]) for k in trained[0])


# ---------------------------------------------------------------- --ref-stats: a reference known by its mean and covariance


def write_stats(path: Path, features: torch.Tensor, **extra: np.ndarray) -> Path:
    x = features.double().numpy()
    np.savez(path, mu=x.mean(axis=0), sigma=np.cov(x, rowvar=False), **extra)
    return path


def real_features(eval_runs: dict[str, Path], n: int) -> torch.Tensor:
    from genai_cli.data import load_dataset

    test = load_dataset("fashion-mnist", data_dir=str(eval_runs["root"]), split="test", image_size=16)
    judge, _ = evaluation.load_judge("fashion-mnist", str(eval_runs["root"]), (1, 16), torch.device("cpu"))
    return judge(test.all_images()[:n])[0]


def test_ref_stats_give_the_fid_of_the_features_they_summarise(eval_runs: dict[str, Path], tmp_path: Path) -> None:
    stats = write_stats(tmp_path / "ref.npz", real_features(eval_runs, 30), n=np.array(30))
    code, out = run_cli("eval", "-c", str(eval_runs["dcgan"]), "--n", "30", "--metrics", "fid", "--json")
    direct = json.loads(out)["metrics"]["fid"]
    code, out = run_cli("eval", "-c", str(eval_runs["dcgan"]), "--n", "30", "--ref-stats", str(stats), "--json")
    assert code == 0, out
    result = json.loads(out)
    assert result["metrics"]["fid"] == pytest.approx(direct, rel=1e-9)
    assert set(result["metrics"]) == {"fid", "is", "is_std"}  # the metrics that need no reference features
    assert result["protocol"]["reference"] == f"statistics in {stats}" and result["protocol"]["n_real"] == 30


def test_ref_stats_keep_class_accuracy_but_not_intra_class_fid(eval_runs: dict[str, Path], tmp_path: Path) -> None:
    stats = write_stats(tmp_path / "ref.npz", real_features(eval_runs, 30))  # pytorch-fid's files do not say n
    code, out = run_cli("eval", "-c", str(eval_runs["cgan"]), "--n", "30", "--ref-stats", str(stats), "--json")
    result = json.loads(out)
    assert code == 0 and 0 <= result["metrics"]["acc"] <= 1
    assert result["metrics"]["intra_fid"] is None and "mean and covariance" in result["not_computed"]["intra_fid"]
    assert result["protocol"]["n_real"] is None


@pytest.mark.parametrize("args,problem", [
    (("--metrics", "fid,kid"), "--metrics kid need the reference's features"),
    (("--fail-if", "precision<0.5"), "precision never applies"),
])
def test_ref_stats_refuse_what_needs_features(eval_runs: dict[str, Path], tmp_path: Path, args: tuple, problem: str) -> None:
    stats = write_stats(tmp_path / "ref.npz", real_features(eval_runs, 30))
    result = CliRunner().invoke(app, ["eval", "-c", str(eval_runs["dcgan"]), "--n", "30", "--ref-stats", str(stats), *args])
    assert result.exit_code == 2 and problem in result.stderr, result.stderr


@pytest.mark.parametrize("content,problem", [
    ({"mu": np.zeros(5), "sigma": np.eye(5)}, "shape (5,)"),
    ({"mu": np.zeros(128)}, "not a statistics file"),
    ({"mu": np.full(128, np.nan), "sigma": np.eye(128)}, "NaN or infinite"),
    ({"mu": np.array([{"x": 1}], dtype=object), "sigma": np.eye(128)}, "not a statistics file"),  # pickled: never loaded
])
def test_bad_ref_stats_are_one_line(eval_runs: dict[str, Path], tmp_path: Path, content: dict, problem: str) -> None:
    np.savez(tmp_path / "bad.npz", **content)
    result = CliRunner().invoke(app, ["eval", "-c", str(eval_runs["dcgan"]), "--n", "30", "--ref-stats", str(tmp_path / "bad.npz")])
    assert result.exit_code == 2 and problem in result.stderr and "Traceback" not in result.stderr, result.stderr


def bar_images(labels: torch.Tensor) -> torch.Tensor:
    """Class k is a bright bar across rows 2k..2k+1 on a dark 28x28 image: trivially learnable."""
    images = torch.zeros(len(labels), 1, 28, 28, dtype=torch.uint8)
    for i, k in enumerate(labels.tolist()):
        images[i, 0, 2 * k + 2 : 2 * k + 4, 3:25] = 255
    return images


@pytest.mark.parametrize("generator,expected", [("right class", (0.9, 1.0)), ("blind to the class", (0.0, 0.2))])
def test_classification_accuracy_score_learns_the_classes_only_from_samples_of_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, generator: str, expected: tuple[float, float]) -> None:
    """CAS pairs each sample with the class it was asked for: a generator that draws that class teaches
    the classes, one that ignores the label cannot (chance is 0.1)."""
    for prefix, n in (("train", 1000), ("t10k", 200)):
        labels = torch.arange(n) % 10
        write_idx(tmp_path / "FashionMNIST" / "raw" / f"{prefix}-images-idx3-ubyte", bar_images(labels)[:, 0].numpy())
        write_idx(tmp_path / "FashionMNIST" / "raw" / f"{prefix}-labels-idx1-ubyte", labels.numpy().astype(np.uint8))
    draw = bar_images if generator == "right class" else lambda labels: bar_images(torch.zeros_like(labels))
    monkeypatch.setattr(evaluation.sampling, "generate", lambda model, z, labels, device: draw(labels))
    model = SimpleNamespace(config=SimpleNamespace(kind="stub", num_classes=10), latent_dim=2, conditional=True)
    reference = load_dataset("fashion-mnist", data_dir=str(tmp_path), split="test")
    scoring = evaluation.Scoring(evaluation.EvalRequest(metrics=["cas"]), model, None, reference, 200, "fashion-mnist",
                                 str(tmp_path), (1, 28), torch.device("cpu"))
    result = evaluation.classification_accuracy_score(scoring)
    assert expected[0] <= result["cas"] <= expected[1], result
    assert result["cas_real"] > 0.9  # the judge, trained on the real bars, on the same test images


def test_the_classification_accuracy_score_is_asked_for_not_default(eval_runs: dict[str, Path]) -> None:
    """It trains a classifier on as many samples as the train split (minutes on a CPU): only on request."""
    _, out = run_cli("eval", "-c", str(eval_runs["cgan"]), "--n", "30", "--json")
    assert "cas" not in json.loads(out)["metrics"]
    code, out = run_cli("eval", "-c", str(eval_runs["cgan"]), "--n", "30", "--metrics", "cas", "--json", "--fail-if", "cas<0")
    assert code == 0 and 0 <= json.loads(out)["metrics"]["cas"] <= 1, out
    code, _ = run_cli("eval", "-c", str(eval_runs["dcgan"]), "--n", "30", "--metrics", "cas")
    assert code == 2  # an unconditional model has no classes to ask for


def test_small_set_warnings_name_the_fid_they_are_about(eval_runs: dict[str, Path]) -> None:
    """30 samples over 10 classes: intra-class FID from 3 images a class is warned about as such, FID from
    30 images too, and without overall FID asked for, no overall-FID warning."""
    stderr = run_cli_all("eval", "-c", str(eval_runs["cgan"]), "--n", "30", "--metrics", "fid,acc").stderr
    assert "FID from 30 images per set" in stderr and "intra-class FID from 3 images per set" in stderr, stderr
    stderr = run_cli_all("eval", "-c", str(eval_runs["cgan"]), "--n", "30", "--metrics", "acc").stderr
    assert "intra-class FID from 3 images" in stderr and "warning: FID from" not in stderr, stderr
