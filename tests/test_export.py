"""`genai export` and `genai info`: every family to every format, parity with PyTorch, the
dynamic batch, metadata round trips, slim folders that genai loads back, and one-line errors."""

from __future__ import annotations

import importlib.util
import json
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import tiny_train
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from genai_cli import checkpoint as ck
from genai_cli import export
from genai_cli.cli import app
from genai_cli.errors import ExitCode

FAMILIES = ("gan", "dcgan", "cgan", "vae", "cvae")
HAS_EXPORT_EXTRA = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))
needs_extra = pytest.mark.skipif(not HAS_EXPORT_EXTRA, reason="the export extra is not installed: pip install -e '.[export]'")
FORMATS = [pytest.param("onnx", marks=needs_extra), "pt2", "safetensors"]


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def ok_json(result) -> dict:
    assert result.exit_code == 0, (result.stderr, result.exception)
    return json.loads(result.stdout)  # exactly one JSON object and nothing else on stdout


def one_line_error(result, code: int, *fragments: str) -> str:
    assert result.exit_code == code, (result.exit_code, result.stderr, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def runs(tiny_runs: dict[str, Path], tiny_data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny trained run per family (width 8, 16x16); the session's dcgan and cgan are reused."""
    base = tmp_path_factory.mktemp("export-runs")
    extra = {kind: Path(tiny_train(kind, tiny_data_root, base / kind).run_dir) for kind in FAMILIES if kind not in tiny_runs}
    return {**tiny_runs, **extra}


def pytorch_images(run: Path, *inputs: torch.Tensor) -> torch.Tensor:
    model, _ = ck.load_model(str(run), torch.device("cpu"))
    with torch.no_grad():
        return model.generate(*inputs)


def inputs_for(kind: str, batch: int, latent_dim: int) -> tuple[torch.Tensor, ...]:
    z = torch.randn(batch, latent_dim, generator=torch.Generator().manual_seed(batch))
    return (z, torch.arange(batch) % 10) if kind in ("cgan", "cvae") else (z,)


# ---------------------------------------------------------------- every family, every format


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", FAMILIES)
def test_every_family_exports_to_every_format_and_matches_pytorch(runs, kind: str, fmt: str, tmp_path: Path):
    out = tmp_path / {"onnx": "g.onnx", "pt2": "g.pt2", "safetensors": "slim"}[fmt]
    summary = ok_json(invoke("export", "--checkpoint", runs[kind], "--format", fmt, "--out", out, "--json"))
    assert summary["format"] == fmt and summary["out"] == str(out) and summary["kind"] == kind
    assert summary["checked"] and summary["passed"] and summary["tolerance"] == export.TOLERANCES["float32"]
    assert set(summary["max_abs_diff"]) == {"1", "7", "64"}
    assert all(0 <= d <= 1e-4 for d in summary["max_abs_diff"].values())
    assert summary["bytes"] == sum(Path(f).stat().st_size for f in summary["files"]) > 0
    assert summary["seconds"] > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the staging folder is gone

    model, loaded = ck.load_model(str(runs[kind]), torch.device("cpu"))
    c, s = model.config.channels, model.config.image_size
    for batch in (1, 7):  # the dynamic batch dimension
        inputs = inputs_for(kind, batch, model.latent_dim)
        want = pytorch_images(runs[kind], *inputs)
        if fmt == "onnx":
            got = export.onnx_runner(out)(*inputs)
        elif fmt == "pt2":
            got = torch.export.load(out).module()(*inputs)
        else:
            got = pytorch_images(out, *inputs)
        assert got.shape == (batch, c, s, s)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)

    if fmt == "onnx":
        import onnx
        import onnxruntime

        proto = onnx.load(out)
        meta = {p.key: p.value for p in proto.metadata_props}
        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        names = [(i.name, i.type) for i in session.get_inputs()]
        expected = [("z", "tensor(float)")] + ([("label", "tensor(int64)")] if model.conditional else [])
        assert names == expected
        assert [o.name for o in session.get_outputs()] == ["image"]
        assert [i.shape[0] for i in [*session.get_inputs(), *session.get_outputs()]] == ["batch"] * (len(names) + 1)
    elif fmt == "pt2":
        extra = {export.PT2_METADATA_FILE: ""}
        torch.export.load(out, extra_files=extra)
        meta = json.loads(extra[export.PT2_METADATA_FILE])
    else:
        assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
        meta = ck.read_metadata(out / "model.safetensors")
        assert meta["genai.contents"] == "generating-half" and meta["genai.dtype"] == "float32"
        assert json.loads((out / "config.json").read_text()) == loaded.config.to_dict()
        assert "genai sample --checkpoint" in (out / "README.md").read_text()
        prefix = ck.generating_prefix(model)
        _, index, _ = ck.read_header(out / "model.safetensors")
        assert index and all(name.startswith(prefix) for name in index)
        return
    assert meta["genai.kind"] == kind and meta["genai.version"] == loaded.metadata["genai.version"]
    assert int(meta["genai.latent_dim"]) == model.latent_dim
    assert int(meta["genai.num_classes"]) == model.config.num_classes
    assert json.loads(meta["genai.classes"]) == loaded.config.data.classes
    assert json.loads(meta["genai.image_shape"]) == [c, s, s]
    assert meta["genai.output_range"] == "[-1, 1]"
    assert meta["genai.source_sha256"] == ck_sha256(loaded.path)


def ck_sha256(path: Path) -> str:
    from genai_cli.fileio import file_sha256

    return file_sha256(path)


# ---------------------------------------------------------------- slim folders


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_folder_reloads_and_samples(runs, dtype: str, tmp_path: Path):
    summary = ok_json(invoke("export", "-c", runs["cgan"], "--out", tmp_path / "slim", "--dtype", dtype, "--json"))
    assert summary["format"] == "safetensors" and summary["passed"]
    assert summary["tolerance"] == export.TOLERANCES[dtype]
    _, index, _ = ck.read_header(tmp_path / "slim" / "model.safetensors")
    assert {e["dtype"] for e in index.values()} == {"F16" if dtype == "float16" else "BF16", "I64"}
    full = (runs["cgan"] / "model.safetensors").stat().st_size
    assert (tmp_path / "slim" / "model.safetensors").stat().st_size < full / 2

    sample = ok_json(invoke("sample", "--checkpoint", tmp_path / "slim", "--n", "20", "--out", tmp_path / "s.png", "--json"))
    assert sample["kind"] == "cgan" and Image.open(tmp_path / "s.png").size[0] > 0
    info = ok_json(invoke("info", tmp_path / "slim", "--json"))
    assert info["contents"] == "generating-half" and dtype in info["dtypes"]
    assert set(info["parameters"]) == {"total", "generator"}


def test_unit_range_output(runs, tmp_path: Path):
    out = tmp_path / "g.pt2"
    ok_json(invoke("export", "-c", runs["dcgan"], "--out", out, "--unit-range", "--json"))
    inputs = inputs_for("dcgan", 5, 100)
    got = torch.export.load(out).module()(*inputs)
    torch.testing.assert_close(got, pytorch_images(runs["dcgan"], *inputs) * 0.5 + 0.5, atol=1e-6, rtol=0)
    extra = {export.PT2_METADATA_FILE: ""}
    torch.export.load(out, extra_files=extra)
    assert json.loads(extra[export.PT2_METADATA_FILE])["genai.output_range"] == "[0, 1]"


def test_newest_run_is_the_default_and_format_comes_from_out(runs, tmp_path: Path, monkeypatch):
    (Path("runs")).mkdir()
    Path("runs/latest").symlink_to(runs["vae"].resolve())
    summary = ok_json(invoke("export", "--out", "decoder.pt2", "--no-check", "--json"))
    assert summary["format"] == "pt2" and summary["kind"] == "vae" and summary["checked"] is False
    assert summary["max_abs_diff"] is None and summary["passed"] is None


# ---------------------------------------------------------------- the parity check


def test_failing_parity_check_exits_4_and_leaves_out_alone(runs, tmp_path: Path, monkeypatch):
    real = export.RUNNERS["pt2"]
    monkeypatch.setitem(export.RUNNERS, "pt2", lambda path: (lambda *inputs: real(path)(*inputs) + 1e-3))
    out = tmp_path / "g.pt2"
    out.write_bytes(b"the previous export")
    result = invoke("export", "-c", runs["cgan"], "--out", out, "--force", "--json")
    line = one_line_error(result, ExitCode.EXPORT_CHECK_FAILED, "differs from the PyTorch model", "tolerance 0.0001")
    assert ExitCode.EXPORT_CHECK_FAILED == 4 and "0.001" in line
    summary = json.loads(result.stdout)  # --json still reports what was measured
    assert summary["passed"] is False and summary["checked"] is True
    assert all(abs(d - 1e-3) < 1e-5 for d in summary["max_abs_diff"].values())
    assert out.read_bytes() == b"the previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.pt2"]

    # the same difference passes under a looser --tolerance, and --no-check skips the check
    assert ok_json(invoke("export", "-c", runs["cgan"], "--out", out, "--force", "--tolerance", "0.01", "--json"))["passed"]
    assert ok_json(invoke("export", "-c", runs["cgan"], "--out", out, "--force", "--no-check", "--json"))["checked"] is False


def test_non_finite_output_fails_the_check(runs, tmp_path: Path, monkeypatch):
    monkeypatch.setitem(export.RUNNERS, "safetensors", lambda path: (lambda z, *rest: torch.full((z.shape[0], 1, 16, 16), float("nan"))))
    result = invoke("export", "-c", runs["dcgan"], "--out", tmp_path / "slim", "--json")
    one_line_error(result, 4, "inf > tolerance")
    assert json.loads(result.stdout)["max_abs_diff"] == {"1": None, "7": None, "64": None}
    assert not (tmp_path / "slim").exists()


def test_missing_export_extra_is_one_line(runs, tmp_path: Path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real_find_spec(name, *a))
    result = invoke("export", "-c", runs["gan"], "--out", tmp_path / "g.onnx")
    one_line_error(result, 1, "onnxscript", "pip install 'genai-cli[export]'")
    assert not (tmp_path / "g.onnx").exists()


def test_explicit_check_without_onnxruntime_is_one_line(runs, tmp_path: Path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real_find_spec(name, *a))
    one_line_error(invoke("export", "-c", runs["gan"], "--out", tmp_path / "g.onnx", "--check"), 1, "onnxruntime", "[export]")


@needs_extra
def test_onnx_without_onnxruntime_is_exported_unchecked_with_a_warning(runs, tmp_path: Path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real_find_spec(name, *a))
    result = invoke("export", "-c", runs["gan"], "--out", tmp_path / "g.onnx", "--json")
    assert ok_json(result)["checked"] is False and "not checked" in result.stderr
    assert (tmp_path / "g.onnx").stat().st_size > 0


@pytest.mark.parametrize(("args", "fragment"), [
    (["--out", "g.onnx", "--format", "pt2"], "--format pt2 writes a .pt2 file"),
    (["--out", "g.bin"], "cannot tell the format"),
    (["--out", "g.onnx", "--format", "tflite"], "unknown --format"),
    (["--out", "slim.safetensors", "--format", "safetensors"], "writes a folder"),
    (["--out", "g.pt2", "--dtype", "float16"], "--dtype float16 applies to --format safetensors"),
    (["--out", "slim", "--dtype", "int8"], "unknown --dtype"),
    (["--out", "slim", "--unit-range"], "--unit-range applies"),
    (["--out", "g.pt2", "--tolerance", "0"], "--tolerance must be positive"),
])
def test_usage_errors(runs, args: list[str], fragment: str):
    one_line_error(invoke("export", "-c", runs["gan"], *args), 2, fragment)


def test_existing_out_needs_force(runs, tmp_path: Path):
    (tmp_path / "slim").mkdir()
    (tmp_path / "slim" / "keep.txt").write_text("mine")
    one_line_error(invoke("export", "-c", runs["gan"], "--out", tmp_path / "slim"), 2, "already exists", "--force")
    ok_json(invoke("export", "-c", runs["gan"], "--out", tmp_path / "slim", "--force", "--json"))
    assert (tmp_path / "slim" / "keep.txt").read_text() == "mine" and (tmp_path / "slim" / "model.safetensors").exists()


def test_missing_checkpoint(tmp_path: Path):
    one_line_error(invoke("export", "--out", tmp_path / "g.pt2"), 1, "no checkpoint given")


# ---------------------------------------------------------------- genai info


def test_info_on_every_kind_of_target(runs, tmp_path: Path, monkeypatch):
    run = runs["cgan"]
    ok_json(invoke("export", "-c", run, "--out", tmp_path / "slim", "--json"))
    Path("runs").mkdir()
    Path("runs/latest").symlink_to(run.resolve())
    monkeypatch.setattr(ck, "load_tensors", lambda *a: pytest.fail("info must not load tensors"))
    model_info = ok_json(invoke("info", "--json"))  # runs/latest
    assert model_info["path"] == "runs/latest/model.safetensors"
    assert model_info["real_path"] == str((run / "model.safetensors").resolve())
    for other in (run, run / "model.safetensors"):
        assert ok_json(invoke("info", other, "--json")) == {**model_info, "path": str(run / "model.safetensors")}
    assert model_info["kind"] == "cgan" and model_info["role"] == "model" and model_info["contents"] == "full"
    assert model_info["step"] == 3 and model_info["dataset"] == "fashion-mnist" and len(model_info["classes"]) == 10
    assert model_info["image_shape"] == [1, 16, 16] and model_info["latent_dim"] == 100
    assert model_info["file_bytes"] == (run / "model.safetensors").stat().st_size
    assert model_info["sha256"] == ck_sha256(run / "model.safetensors")
    monkeypatch.undo()
    model, _ = ck.load_model(str(run), torch.device("cpu"))
    assert model_info["parameters"] == {
        "total": sum(p.numel() for p in model.parameters()),
        "generator": sum(p.numel() for p in model.generator.parameters()),
        "discriminator": sum(p.numel() for p in model.discriminator.parameters()),
    }
    state_info = ok_json(invoke("info", run / "training_state.safetensors", "--json"))
    assert state_info["role"] == "training-state" and state_info["parameters"] == model_info["parameters"]
    slim_info = ok_json(invoke("info", tmp_path / "slim", "--json"))
    assert slim_info["parameters"]["total"] == model_info["parameters"]["generator"]

    text = invoke("info", run)
    assert text.exit_code == 0 and text.stdout.startswith(str(run / "model.safetensors"))
    for fragment in ("cgan (model file)", "step 3", "fashion-mnist", "Ankle boot", "sha256", "float32"):
        assert fragment in text.stdout


@pytest.mark.parametrize("fmt", FORMATS[:2])
def test_info_reads_genai_exports_like_checkpoints(runs, fmt: str, tmp_path: Path, monkeypatch):
    run, out = runs["cgan"], tmp_path / f"g.{fmt}"
    ok_json(invoke("export", "-c", run, "--out", out, "--no-check", "--json"))
    model_info = ok_json(invoke("info", run, "--json"))
    monkeypatch.setattr(torch.export, "load", lambda *a, **k: pytest.fail("info must not unpickle a pt2 program"))
    got = ok_json(invoke("info", out, "--json"))
    same = ("kind", "version", "step", "epoch", "dataset", "classes", "image_shape", "latent_dim", "device", "config")
    assert {k: got[k] for k in same} == {k: model_info[k] for k in same}
    generator = model_info["parameters"]["generator"]
    assert got["role"] == "export" and got["contents"] == fmt and got["dtypes"] == ["float32"]
    assert got["parameters"] == {"total": generator, "generator": generator}
    assert set(got["inputs"]) == {"z", "label"} and got["output_range"] == "[-1, 1]"
    assert got["source_sha256"] == model_info["sha256"] and got["file_bytes"] == out.stat().st_size
    text = invoke("info", out)
    assert text.exit_code == 0 and text.stdout.startswith(str(out))
    for fragment in (f"cgan ({fmt} export: generating half only)", "step 3, epoch", "Ankle boot", "label int64", "in [-1, 1]"):
        assert fragment in text.stdout


def test_info_reads_an_older_export_without_epoch_device_or_parameters(runs, tmp_path: Path):
    model, loaded = ck.load_model(str(runs["cgan"]), torch.device("cpu"))
    meta = export.export_metadata(model, loaded, unit_range=False)
    for key in ("genai.epoch", "genai.device", "genai.parameters"):
        del meta[key]
    with zipfile.ZipFile(tmp_path / "old.pt2", "w") as archive:
        archive.writestr("old/extra/genai.json", json.dumps(meta))
    got = ok_json(invoke("info", tmp_path / "old.pt2", "--json"))
    assert got["kind"] == "cgan" and (got["epoch"], got["device"], got["parameters"]) == (None, None, None)
    text = invoke("info", tmp_path / "old.pt2")
    assert text.exit_code == 0 and "not recorded" in text.stdout and "epoch" not in text.stdout


def test_info_refuses_foreign_and_damaged_files(runs, tmp_path: Path):
    save_file({"w": torch.zeros(3)}, tmp_path / "foreign.safetensors")
    one_line_error(invoke("info", tmp_path / "foreign.safetensors"), 1, "not a genai checkpoint")
    data = (runs["dcgan"] / "model.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    one_line_error(invoke("info", tmp_path / "cut.safetensors"), 1, "truncated")
    (tmp_path / "notes.txt").write_text("hello, not a checkpoint at all")
    one_line_error(invoke("info", tmp_path / "notes.txt"), 1, "not a safetensors file")
    (tmp_path / "g.pt2").write_bytes(b"PK not a zip")
    one_line_error(invoke("info", tmp_path / "g.pt2"), 1, "not a readable pt2 archive")
    with zipfile.ZipFile(tmp_path / "other.pt2", "w") as archive:
        archive.writestr("archive/extra/other.json", "{}")
    one_line_error(invoke("info", tmp_path / "other.pt2"), 1, "pt2 file without genai metadata")
    if HAS_EXPORT_EXTRA:
        (tmp_path / "g.onnx").write_bytes(b"\x08\x07" * 64)  # a valid ModelProto, with no metadata
        one_line_error(invoke("info", tmp_path / "g.onnx"), 1, "onnx file without genai metadata")
    one_line_error(invoke("info", tmp_path / "missing"), 1, "does not exist")
    one_line_error(invoke("info"), 1, "runs/latest")


@needs_extra
def test_json_is_alone_on_real_stdout(runs, tmp_path: Path):
    """The ONNX exporter and onnxruntime log from C++ too: nothing of theirs may reach stdout."""
    from test_cli import run_genai

    proc = run_genai("export", "-c", str(runs["cvae"]), "--out", str(tmp_path / "g.onnx"), "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout)["passed"] is True
