"""The pipeline contract of the `genai` command: stdout carries data only, logs and one-line
errors go to stderr, exit codes are documented, and run directories are laid out as promised."""

from __future__ import annotations

import json
import math
import os
import re
import struct
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
import torch
import typer
from conftest import tiny_train
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from genai_cli import checkpoint as ck
from genai_cli import choices, console
from genai_cli.cli import app
from genai_cli.config import Config
from genai_cli.errors import ExitCode, UsageError

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
COLOUR_ENV = ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "TERM", "COLUMNS", "GENAI_DEBUG")


def tiny_args(data_dir: Path, steps: int = 3) -> list[str]:
    return ["--data", "fashion-mnist", "--data-dir", str(data_dir), "--width", "8", "--image-size", "16",
            "--batch-size", "8", "--steps", str(steps), "--log-every", "1"]


def run_genai(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    """`python -m genai_cli ...` in a subprocess with real pipes for stdout and stderr (bytes)."""
    full_env = {k: v for k, v in os.environ.items() if k not in COLOUR_ENV}
    full_env.update(GENAI_OFFLINE="1", **env)
    return subprocess.run([sys.executable, "-m", "genai_cli", *args], capture_output=True, check=False, cwd=cwd,
                          env=full_env, timeout=300)


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def assert_one_line_error(result, code: int, *fragments: str) -> str:
    assert result.exit_code == code, (result.exit_code, result.stderr, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    return lines[0]


def png_length(data: bytes) -> int:
    """Bytes up to and including the IEND chunk of the PNG at the start of `data`."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:16]
    pos = 8
    while True:
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        pos += 12 + length
        if kind == b"IEND":
            return pos


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch):
    monkeypatch.delenv("GENAI_DEBUG", raising=False)


# ---------------------------------------------------------------- start-up


def test_cli_import_and_help_do_not_import_torch():
    code = (
        "import sys, json\n"
        "import genai_cli.cli as cli\n"
        "after_import = 'torch' in sys.modules\n"
        "for args in (['--help'], ['train', '--help'], ['sample', '--help']):\n"
        "    try:\n"
        "        cli.app(args, prog_name='genai')\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, exc.code\n"
        "print(json.dumps([after_import, 'torch' in sys.modules]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, check=False, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == [False, False]


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert re.fullmatch(r"genai \d+\.\d+\.\d+\S*\n", result.stdout)


# ---------------------------------------------------------------- stdout purity (real pipes)


def test_sample_png_to_stdout_pipe(tiny_runs, tmp_path: Path):
    proc = run_genai("sample", "--checkpoint", str(tiny_runs["dcgan"]), "--out", "-", "--n", "4")
    assert proc.returncode == 0, proc.stderr.decode()
    data = proc.stdout
    assert png_length(data) == len(data), "bytes after the PNG on stdout"
    with Image.open(__import__("io").BytesIO(data)) as image:
        image.load()
        assert image.size == (2 * 18 + 2, 2 * 18 + 2)  # 4 images of 16px, 2 per row, 2px padding
    assert b"wrote 4 images" in proc.stderr
    # the same grid as writing it to a file
    out = tmp_path / "grid.png"
    assert invoke("sample", "--checkpoint", str(tiny_runs["dcgan"]), "--out", str(out), "--n", "4").exit_code == 0
    assert out.read_bytes() == data


def test_train_json_then_sample_json(idx_root: Path, tmp_path: Path):
    proc = run_genai("train", *tiny_args(idx_root), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    text = proc.stdout.decode()
    assert text.endswith("\n") and text.count("\n") == 1, text
    result = json.loads(text)
    assert isinstance(result, dict)
    assert {"run_dir", "checkpoint", "step", "epoch", "losses", "images_per_sec", "seconds", "device"} <= set(result)
    assert result["step"] == 3 and result["device"] == "cpu"
    assert Path(result["run_dir"]) == Path("runs") / "dcgan-fashion-mnist-001"
    assert (tmp_path / result["checkpoint"]).is_file()
    assert {"loss_d", "loss_g"} <= set(result["losses"])
    assert all(math.isfinite(v) for v in result["losses"].values())
    assert result["images_per_sec"] > 0
    assert b"step 3/3" in proc.stderr  # progress is logged, on stderr

    proc = run_genai("sample", "--json", "--n", "3", "--out", "s.npz", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    text = proc.stdout.decode()
    assert text.count("\n") == 1
    summary = json.loads(text)
    assert {"files", "n", "checkpoint", "kind", "device"} <= set(summary)
    assert summary["n"] == 3 and summary["files"] == ["s.npz"]
    assert summary["kind"] == "dcgan" and summary["device"] == "cpu"
    assert (tmp_path / summary["checkpoint"]).resolve() == (tmp_path / result["checkpoint"]).resolve()
    assert (tmp_path / "s.npz").is_file()


def test_data_json_is_one_object(idx_root: Path):
    result = invoke("data", "fashion-mnist", "--data-dir", str(idx_root), "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["images"] == 64 and summary["classes"] == FASHION and summary["channels"] == 1


def test_quiet_keeps_stderr_empty_on_success(tiny_runs, tmp_path: Path):
    result = invoke("sample", "--checkpoint", str(tiny_runs["dcgan"]), "--out", str(tmp_path / "x.png"), "--quiet")
    assert result.exit_code == 0 and result.stderr == "" and result.stdout == ""
    result = invoke("sample", "--checkpoint", str(tiny_runs["dcgan"]), "--out", str(tmp_path / "x.png"), "--quiet")
    assert result.exit_code == 2 and result.stderr.startswith("error: ")  # errors still show


def test_out_dash_and_json_conflict():
    assert_one_line_error(invoke("sample", "--out", "-", "--json"), 2, "--json")


def test_closed_stdout_pipe_is_not_an_internal_error(tiny_runs):
    """`genai sample --out - | head -c0`: the reader went away; say so in one line, no traceback."""
    env = {k: v for k, v in os.environ.items() if k not in COLOUR_ENV}
    proc = subprocess.Popen([sys.executable, "-m", "genai_cli", "sample", "--checkpoint", str(tiny_runs["dcgan"]),
                             "--out", "-", "--n", "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**env, "GENAI_OFFLINE": "1"})
    proc.stdout.close()  # nobody reads the PNG
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 1
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        "error: stdout was closed before all output was written (broken pipe)"], err
    assert "internal error" not in err and "Traceback" not in err and "Exception ignored" not in err


# ---------------------------------------------------------------- colour

SGR = re.compile(r"\x1b\[([0-9;]*)m")


def _colour_params(text: str) -> list[int]:
    """SGR parameters that set a foreground or background colour."""
    params = [int(p) for m in SGR.finditer(text) for p in m.group(1).split(";") if p]
    return [p for p in params if 30 <= p <= 49 or 90 <= p <= 107]


# A usage error raised before torch is imported: quick, and on stderr.
COLOUR_ERROR_ARGS = ("sample", "--out", "-", "--json")


def test_error_is_coloured_when_stderr_counts_as_a_terminal():
    proc = run_genai(*COLOUR_ERROR_ARGS, TTY_COMPATIBLE="1")
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert _colour_params(err), repr(err)
    assert proc.stdout == b""


def test_no_color_removes_colour():
    """rich documents NO_COLOR as removing colour only; bold and other attributes may stay."""
    proc = run_genai(*COLOUR_ERROR_ARGS, TTY_COMPATIBLE="1", NO_COLOR="1")
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert "error:" in err and "--json" in err
    assert _colour_params(err) == [], repr(err)


@pytest.mark.parametrize("env", [{}, {"TTY_COMPATIBLE": "1", "TERM": "dumb"}])
def test_no_escapes_in_pipes_or_dumb_terminals(env):
    proc = run_genai(*COLOUR_ERROR_ARGS, **env)
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert err.startswith("error: ") and "\x1b" not in err, repr(err)


# ---------------------------------------------------------------- exit codes and one-line errors


def test_unknown_model_suggests_the_close_one(idx_root: Path):
    assert_one_line_error(invoke("train", *tiny_args(idx_root), "--model", "dcgna"), 2, "dcgna", "'dcgan'")


def test_unknown_dataset(idx_root: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(invoke("train", "--data", "fashion-mnits", "--data-dir", str(idx_root)), 2, "fashion-mnits")
    assert not (tmp_path / "runs").exists()


def test_missing_dataset_offline_names_the_expected_path(idx_root: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = assert_one_line_error(invoke("train", *tiny_args(idx_root), "--data", "mnist"), 1, "mnist", "GENAI_OFFLINE")
    assert str(idx_root / "MNIST" / "raw") in line
    assert not (tmp_path / "runs").exists()


def test_foreign_safetensors_as_checkpoint(tmp_path: Path):
    path = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(path))
    assert_one_line_error(invoke("sample", "--checkpoint", str(path), "--out", str(tmp_path / "x.png")), 1, str(path))
    assert not (tmp_path / "x.png").exists()


def test_truncated_checkpoint_through_the_cli(tiny_runs, tmp_path: Path):
    path = tmp_path / "model.safetensors"
    path.write_bytes((tiny_runs["dcgan"] / ck.MODEL_FILE).read_bytes()[:-100])
    assert_one_line_error(invoke("sample", "--checkpoint", str(path), "--out", str(tmp_path / "x.png")), 1, "truncated")


def test_sample_without_any_run(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(invoke("sample", "--out", "x.png"), 1, "runs/latest", "--checkpoint")


def test_debug_shows_the_traceback(tmp_path: Path):
    path = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2)}, str(path))
    result = invoke("sample", "--checkpoint", str(path), "--out", str(tmp_path / "x.png"), "--debug")
    assert result.exit_code == 1
    assert "Traceback" in result.stderr
    assert "not a genai checkpoint" in result.stderr


def test_resume_with_another_model_kind(tiny_data_root: Path, tmp_path: Path):
    run = Path(tiny_train("vae", tiny_data_root, tmp_path / "vae-run", **{"train.steps": 1}).run_dir)
    before = sorted(p.name for p in run.iterdir())
    state = (run / ck.STATE_FILE).read_bytes()
    assert_one_line_error(invoke("train", "--resume", str(run), "--model", "dcgan"), 2, "--model")
    assert_one_line_error(invoke("train", "--resume", str(run), "--width", "16"), 2, "--width")
    assert sorted(p.name for p in run.iterdir()) == before
    assert (run / ck.STATE_FILE).read_bytes() == state


def test_train_into_an_existing_run_is_refused(tiny_runs, tiny_data_root: Path):
    run = tiny_runs["dcgan"]
    model = (run / ck.MODEL_FILE).read_bytes()
    assert_one_line_error(invoke("train", *tiny_args(tiny_data_root), "--out", str(run)), 2, "--resume")
    assert (run / ck.MODEL_FILE).read_bytes() == model


def test_png_to_a_terminal_is_refused(tiny_runs, monkeypatch):
    monkeypatch.setattr(console, "stdout_is_terminal", lambda: True)
    assert_one_line_error(invoke("sample", "--checkpoint", str(tiny_runs["dcgan"]), "--out", "-"), 2, "terminal")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_cuda(tiny_runs, idx_root: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(invoke("train", *tiny_args(idx_root), "--device", "cuda"), 2, "cuda")
    assert_one_line_error(invoke("sample", "--checkpoint", str(tiny_runs["dcgan"]), "--out", "x.png", "--device", "cuda"),
                          2, "cuda")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "x.png").exists()


def test_unknown_device(tiny_runs, tmp_path: Path):
    assert_one_line_error(invoke("sample", "--checkpoint", str(tiny_runs["dcgan"]), "--out", str(tmp_path / "x.png"),
                                 "--device", "tpu"), 2, "tpu")


def test_internal_error_is_one_line_and_debug_shows_it(monkeypatch, tmp_path: Path):
    from genai_cli import sampling

    def broken(req):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(sampling, "run_sample", broken)
    line = assert_one_line_error(invoke("sample", "--out", str(tmp_path / "x.png")), 1, "internal error", "kaboom")
    assert "--debug" in line
    result = invoke("sample", "--out", str(tmp_path / "x.png"), "--debug")
    assert result.exit_code == 1 and "Traceback" in result.stderr and "kaboom" in result.stderr


def test_multi_line_internal_error_is_still_one_line(monkeypatch, tmp_path: Path):
    from genai_cli import sampling

    def broken(req):
        raise RuntimeError("first line\n  second line\n")

    monkeypatch.setattr(sampling, "run_sample", broken)
    line = assert_one_line_error(invoke("sample", "--out", str(tmp_path / "x.png")), 1, "internal error")
    assert "first line second line" in line
    assert len(invoke("sample", "--out", str(tmp_path / "x.png")).stderr.strip().splitlines()) == 1


TRICKY_MESSAGES = ["cannot read /data/[draft]/a.png", "closing [/b] tag", "C:\\runs\\", "dir\\[x]", "[bold]not bold[/bold]"]


@pytest.mark.parametrize("message", TRICKY_MESSAGES)
def test_errors_and_warnings_print_messages_verbatim(capsys, message: str):
    """Messages carry paths and file names: brackets in them are text, never rich markup."""
    console.error(message)
    console.warn(message)
    assert capsys.readouterr().err == f"error: {message}\nwarning: {message}\n"


def test_ctrl_c_exits_130(monkeypatch, tmp_path: Path):
    from genai_cli import sampling

    def interrupted(req):
        raise KeyboardInterrupt

    monkeypatch.setattr(sampling, "run_sample", interrupted)
    assert_one_line_error(invoke("sample", "--out", str(tmp_path / "x.png")), 130, "interrupted")


@pytest.mark.parametrize("argv,fragments", [
    (["sample", "--interpolate", "3", "--frames", "10"], ["--interpolate takes 2 values, A B, but --frames came"]),
    (["sample", "--interpolate", "3"], ["--interpolate needs 2 values, A B"]),
    (["sample", "--n", "abc"], ["--n takes a whole number, got 'abc'"]),
    (["train", "--lr", "fast"], ["--lr takes a number, got 'fast'"]),
    (["train", "--modle", "dcgan"], ["unknown option --modle (did you mean --model?)", "genai train -h"]),
    (["train", "--model"], ["--model needs a value, gan|dcgan|"]),
    (["train", "--model", "dcgna"], ["unknown --model 'dcgna'; did you mean 'dcgan'? choose one of: gan, dcgan,"]),
    (["eval", "--features", "incpetion"], ["unknown --features 'incpetion'; did you mean 'inception'?"]),
    (["export", "--out", "g.onnx", "--format", "tflite"], ["unknown --format 'tflite'", "onnx, pt2, safetensors"]),
    (["export", "--out", "slim", "--dtype", "int8"], ["unknown --dtype 'int8'", "float32, float16, bfloat16"]),
    (["export"], ["--out is required", "genai export -h"]),
    (["sample", "--force", "true"], ["unexpected argument 'true'", "write --force, not --force true"]),
    (["sample", "--force=yes"], ["--force is a flag and takes no value"]),
    (["trian"], ["unknown command 'trian' (did you mean 'train'?)", "genai -h lists the commands"]),
    (["--bogus"], ["unknown option --bogus"]),
])
def test_parse_errors_are_one_line_naming_the_flag_and_the_fix(argv: list[str], fragments: list[str]):
    """Unknown options, missing values, bad types and bad choices: the same one `error:` line and exit 2 as
    genai's own usage errors, no rich box and no usage block."""
    result = invoke(*argv)
    assert_one_line_error(result, 2, *fragments)
    assert result.stderr.count("\n") == 1 and "╭" not in result.stderr and "Usage:" not in result.stderr


def test_parse_errors_show_the_traceback_with_debug():
    result = invoke("sample", "--debug", "--n", "x")
    assert "Traceback" in result.stderr
    assert result.exit_code == 2 and result.stderr.strip().splitlines()[-1] == "error: --n takes a whole number, got 'x'"


def test_choices_are_case_and_underscore_blind(idx_root: Path):
    result = invoke("train", *tiny_args(idx_root), "--model", "DCGAN", "--gan-loss", "WGAN_GP", "--norm", "None",
                    "--dry-run")
    assert result.exit_code == 0, result.stderr
    config = json.loads(result.stdout)
    assert (config["model"]["kind"], config["train"]["gan_loss"], config["model"]["norm"]) == ("dcgan", "wgan-gp", "none")


def registry_names() -> dict[str, set[str]]:
    """What each tuple of genai_cli.choices mirrors, read from the registries themselves."""
    from genai_cli import augment, data, evaluation, export, pairs, runtime, selection
    from genai_cli.models import MODELS, blocks, vae
    from genai_cli.objectives import gan_losses

    with pytest.raises(UsageError) as features:  # evaluation names its extractors in the refusal of others
        evaluation.run_eval(evaluation.EvalRequest(features="none-such"))
    return {
        "MODELS": set(MODELS.names()), "DATASETS": set(data.DATASETS.names()),
        "GAN_LOSSES": {spec.gan_loss for spec in gan_losses()}, "NORMS": set(blocks.NORMS),
        "PRIORS": {"standard"} | {MODELS.get(name).prior for name in MODELS.names()} - {None},
        "PAIRS": set(pairs.PAIRS), "DIRECTIONS": set(pairs.DIRECTIONS),
        "FEATURES": {name for name in choices.FEATURES if repr(name) in str(features.value)},
        "METRICS": set(evaluation.METRICS),
        "EXPORT_FORMATS": set(export.FORMATS), "DTYPES": set(export.DTYPES), "DEVICES": set(runtime.DEVICE_CHOICES), "PRECISIONS": set(runtime.PRECISIONS),
        "KEEPS": set(selection.KEEPS), "LIKELIHOODS": set(vae.LIKELIHOODS), "AUGMENTS": set(augment.POLICIES),
    }


@pytest.mark.parametrize("name", [n for n in vars(choices) if n.isupper()])
def test_cli_choices_match_their_registries(name: str):
    """The CLI lists these without importing torch; the registries are what the engine accepts."""
    assert set(getattr(choices, name)) == registry_names()[name]


COMPLETE = ("import json, os, sys\n"
            "from genai_cli.cli import main\n"
            "try:\n"
            "    main()\n"
            "except SystemExit:\n"
            "    pass\n"
            "print(json.dumps('torch' in sys.modules), file=sys.stderr)\n")


@pytest.mark.parametrize("line,expected", [
    ("genai train --model ", choices.MODELS),
    ("genai train --model c", ("cgan", "cvae")),
    ("genai train --gan-loss ", choices.GAN_LOSSES),
    ("genai train --norm ", choices.NORMS),
    ("genai train --data ", choices.DATASETS),
    ("genai sample --device ", choices.DEVICES),
    ("genai eval --features ", choices.FEATURES),
    ("genai export --format ", choices.EXPORT_FORMATS),
    ("genai export --dtype b", ("bfloat16",)),
    ("genai sample --tr", ("--trunc",)),
])
def test_shell_completion_offers_the_choices_without_importing_torch(line: str, expected: tuple[str, ...]):
    """What bash's `genai train --model <TAB>` runs (Typer's protocol: the line in COMP_WORDS)."""
    words = line.split(" ")
    env = {**os.environ, "_GENAI_COMPLETE": "complete_bash", "COMP_WORDS": line, "COMP_CWORD": str(len(words) - 1)}
    proc = subprocess.run([sys.executable, "-c", COMPLETE], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.stdout.split() == list(expected), proc.stderr
    assert json.loads(proc.stderr.splitlines()[-1]) is False, "completion imported torch"


COMMANDS = tuple(typer.main.get_command(app).commands)  # every command, also one added later


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_no_fake_placeholders_and_ends_with_examples(command: str):
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for fake in ("<bool>", "<str>", "<int", "<float>", "list[", ">..."):
        assert fake not in result.stdout, fake
    tail = result.stdout.rstrip().rsplit("Examples:", 1)
    assert len(tail) == 2 and "╰" not in tail[1], "the examples are not the end of the help"
    examples = [line.strip() for line in tail[1].strip().splitlines()]
    assert len(examples) >= 3 and all(line.startswith(f"genai {command}") for line in examples), examples


@pytest.mark.parametrize("command,listed", [
    ("train", ["gan|dcgan|cgan|vae|cvae|pix2pix", "bce|hinge|wgan-gp", "batch|group|none", "auto|cpu|cuda[:N]|mps"]),
    ("eval", ["classifier|inception"]),
    ("export", ["onnx|pt2|safetensors", "float32|float16|bfloat16"]),
])
def test_help_lists_the_choices(command: str, listed: list[str]):
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    for choice in listed:
        assert choice in result.stdout, choice


def test_top_level_help_lists_every_exit_code():
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    codes = [int(line.split()[0]) for line in result.stdout.split("Exit codes:")[1].splitlines()
             if line.strip()[:1].isdigit()]
    assert codes == sorted(v for k, v in vars(ExitCode).items() if k.isupper())


def test_typer_usage_errors_exit_2():
    result = invoke("train", "--steps", "many")
    assert result.exit_code == 2
    result = invoke("sample", "--no-such-flag")
    assert result.exit_code == 2


# ---------------------------------------------------------------- --dry-run


@pytest.mark.parametrize("kind,num_classes", [("dcgan", 0), ("cgan", 10)])
def test_dry_run_prints_the_resolved_config(idx_root: Path, tmp_path: Path, monkeypatch, kind: str, num_classes: int):
    monkeypatch.chdir(tmp_path)
    before = sorted(os.listdir(tmp_path))
    result = invoke("train", "--model", kind, "--data", "fashion-mnist", "--data-dir", str(idx_root),
                    "--batch-size", "8", "--dry-run", "--out", "would-be-run")
    assert result.exit_code == 0, result.stderr
    config = json.loads(result.stdout)
    Config.from_dict(config)  # a complete, valid config
    model = config["model"]
    assert model["kind"] == kind
    assert model["channels"] == 1 and model["image_size"] == 28  # filled from the dataset
    assert model["num_classes"] == num_classes
    assert model["latent_dim"] == 100
    assert config["data"]["classes"] == FASHION
    from genai_cli.models import MODELS

    assert config["train"]["lr"] == pytest.approx(MODELS.get(kind).lr) and config["train"]["beta1"] == pytest.approx(0.5)
    assert config["train"]["batch_size"] == 8
    assert sorted(os.listdir(tmp_path)) == before, "--dry-run wrote files"


@pytest.mark.parametrize("flags,keep,width,full_res_conv", [
    (["--max-time", "60s"], "last", 32, False),  # a short budget: the DCGAN's short recipe
    (["--max-time", "60s", "--full-res-conv"], "last", 32, True),  # a flag given wins over the recipe
    (["--max-time", "1h"], "best", 64, True),  # a long one ends with its best model
    (["--max-time", "1h", "--steps", "9"], "last", 64, True),  # with --steps, only a deadline
])
def test_dry_run_of_a_budget_shows_what_the_budget_changes(idx_root: Path, flags: list[str], keep: str, width: int,
                                                           full_res_conv: bool):
    result = invoke("train", "--data-dir", str(idx_root), *flags, "--dry-run")
    assert result.exit_code == 0, result.stderr
    config = json.loads(result.stdout)
    assert (config["train"]["keep"], config["model"]["width"], config["model"]["full_res_conv"]) == (keep, width, full_res_conv)


# ---------------------------------------------------------------- run directories


def test_train_run_directories_latest_and_default_sampling(idx_root: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = invoke("train", *tiny_args(idx_root), "--json")
    assert first.exit_code == 0, first.stderr
    second = invoke("train", *tiny_args(idx_root), "--seed", "1", "--json")
    assert second.exit_code == 0, second.stderr
    run1, run2 = (Path(json.loads(r.stdout)["run_dir"]) for r in (first, second))
    assert run1 == Path("runs/dcgan-fashion-mnist-001") and run2 == Path("runs/dcgan-fashion-mnist-002")
    latest = Path("runs/latest")
    assert latest.is_symlink() and latest.resolve() == run2.resolve()
    assert not Path(os.readlink(latest)).is_absolute()  # the runs folder can move

    # the run directory's contents
    for run in (run1, run2):
        assert {"config.json", ck.MODEL_FILE, ck.STATE_FILE, "metrics.jsonl", "samples", "loss.svg", "report.html"} <= set(os.listdir(run))
    stored = Config.from_json((run2 / "config.json").read_text())
    _, loaded = ck.load_model(str(run2), torch.device("cpu"))
    assert stored == loaded.config and loaded.step == 3
    assert stored.train.seed == 1 and stored.model.image_size == 16
    assert ck.load_training_state(run2).checkpoint.step == 3
    rows = [json.loads(line) for line in (run2 / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert math.isfinite(row["loss_d"]) and math.isfinite(row["loss_g"])
    grids = sorted((run2 / "samples").glob("step_*.png"))
    assert [g.name for g in grids] == ["step_000003.png"]
    for png in grids:
        with Image.open(png) as image:
            image.verify()
    ElementTree.fromstring((run2 / "loss.svg").read_text())  # well-formed SVG

    # `genai sample` without --checkpoint samples the newest run
    result = invoke("sample", "--json", "--n", "4", "--out", "latest.npz")
    assert result.exit_code == 0, result.stderr
    assert Path(json.loads(result.stdout)["checkpoint"]).resolve() == (run2 / ck.MODEL_FILE).resolve()
    for run, name in ((run1, "one.npz"), (run2, "two.npz")):
        assert invoke("sample", "--checkpoint", str(run), "--n", "4", "--out", name).exit_code == 0
    latest_images, one, two = (np.load(n)["arr_0"] for n in ("latest.npz", "one.npz", "two.npz"))
    assert np.array_equal(latest_images, two)
    assert not np.array_equal(latest_images, one)


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 62914560000 bytes."),
                                   __import__("torch").OutOfMemoryError("CUDA out of memory. Tried to allocate 60.00 GiB")])
def test_running_out_of_memory_is_one_line_with_what_to_ask_for(monkeypatch, tmp_path: Path, error: Exception):
    from genai_cli import training

    def step(*args, **kwargs):
        raise error

    monkeypatch.setattr(training, "train", step)
    result = invoke("train", "--out", str(tmp_path / "run"))
    assert_one_line_error(result, 1, "out of memory")
    assert "a smaller --batch-size, --width or --image-size" in result.stderr and "internal error" not in result.stderr
