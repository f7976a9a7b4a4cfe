"""A user's work is never lost: runs reached through `runs/latest`, `--force` that replaces only
genai's files, folders genai did not write, and one process per run (an OS lock)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_idx_dataset
from typer.testing import CliRunner

from genai_cli import checkpoint as ck
from genai_cli import rundir
from genai_cli.cli import app

TINY = ("--data", "fashion-mnist", "--data-dir", "datasets", "--width", "8", "--image-size", "16",
        "--batch-size", "8", "--log-every", "1")


@pytest.fixture(autouse=True)
def datasets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test works in its own folder (the working directory, as a user's shell would be)."""
    monkeypatch.chdir(tmp_path)
    make_idx_dataset(tmp_path / "datasets")


def genai(*args: str):
    return CliRunner().invoke(app, list(args))


def ok(*args: str) -> dict:
    result = genai(*args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def one_line_error(result, code: int, *fragments: str) -> str:
    assert result.exit_code == code, (result.exit_code, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def tree(folder: Path) -> dict[str, str]:
    """Every file under `folder` with its content hash."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def steps_logged(run: Path) -> list[int]:
    return [row["step"] for row in rundir.read_metrics(run / rundir.METRICS_FILE) if "eval" not in row]


# ---------------------------------------------------------------- 1. runs/latest is a link to a run


@pytest.mark.parametrize("how", ["resume", "force"])
def test_a_run_named_through_runs_latest_is_the_real_run(how: str) -> None:
    first = Path(ok("train", *TINY, "--steps", "2")["run_dir"])
    args = ("--resume", "runs/latest", "--steps", "4") if how == "resume" else (*TINY, "--steps", "3", "--out", "runs/latest", "--force")
    result = ok("train", *args)
    assert Path(result["run_dir"]).resolve() == first.resolve()
    latest = Path("runs/latest")
    assert latest.is_symlink() and os.readlink(latest) == first.name  # still the run's own name, never a loop
    assert ck.load_training_state(first).checkpoint.step == (4 if how == "resume" else 3)
    assert steps_logged(first) == ([1, 2, 3, 4] if how == "resume" else [1, 2, 3])
    assert ok("info")["step"] == (4 if how == "resume" else 3)
    assert genai("sample", "--n", "2", "--out", "x.png").exit_code == 0


def test_commands_that_fall_back_to_runs_latest_say_which_run() -> None:
    run = Path(ok("train", *TINY, "--steps", "2")["run_dir"])
    for args in (("sample", "--n", "2", "--out", "x.png"), ("info",), ("export", "--out", "slim")):
        result = genai(*args)
        assert result.exit_code == 0, result.stderr
        assert f"using {run} (runs/latest; dcgan, step 2)" in result.stderr, (args, result.stderr)
    named = genai("info", str(run))  # a run the user named needs no such line
    assert "runs/latest" not in named.stderr


# ---------------------------------------------------------------- 2. --force replaces only genai's files


def test_force_keeps_the_users_files_inside_the_run() -> None:
    ok("train", *TINY, "--steps", "2", "--sample-every", "1", "--out", "run2")
    run = Path("run2")
    mine = {run / "samples" / "favourite.png": b"my best grid", run / "notes.md": b"lr 2e-4 was better",
            run / "analysis" / "plot.svg": b"<svg/>"}
    for path, data in mine.items():
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
    result = genai("train", *TINY, "--steps", "1", "--out", "run2", "--force")
    assert result.exit_code == 0, result.stderr
    assert "keeping 3 file(s) genai did not write" in result.stderr
    for path, data in mine.items():
        assert path.read_bytes() == data
    assert sorted(p.name for p in (run / "samples").glob("step_*.png")) == ["step_000001.png"]  # the old run's grids went
    assert steps_logged(run) == [1]


# ---------------------------------------------------------------- 3. a folder genai did not write


@pytest.mark.parametrize("contents", [
    {"config.json": b'{"project": "thesis"}', "loss.png": b"my plot", "samples/step_000001.png": b"mine",
     "metrics.jsonl": b'{"step": 99, "mine": true}\n'},
    {"notes.txt": b"hello"},
    {".hidden": b"dotfile"},
    {"sub/deeper/file.bin": b"\0\1"},
])
def test_a_folder_that_is_not_a_run_is_refused_without_force(contents: dict[str, bytes]) -> None:
    docs = Path("mydocs")
    for name, data in contents.items():
        (docs / name).parent.mkdir(parents=True, exist_ok=True)
        (docs / name).write_bytes(data)
    before = tree(docs)
    one_line_error(genai("train", *TINY, "--steps", "1", "--out", "mydocs"), 2,
                   "mydocs is not empty and holds no genai run", "--force")
    assert tree(docs) == before and not (docs / ck.MODEL_FILE).exists()


def test_force_into_a_foreign_folder_replaces_only_genai_file_names() -> None:
    docs = Path("mydocs")
    (docs / "samples").mkdir(parents=True)
    (docs / "metrics.jsonl").write_text('{"step": 99, "mine": true}\n')
    (docs / "thesis.tex").write_text("\\section{GANs}")
    (docs / "samples" / "photo.jpg").write_bytes(b"jpeg")
    result = genai("train", *TINY, "--steps", "2", "--out", "mydocs", "--force")
    assert result.exit_code == 0, result.stderr
    assert steps_logged(docs) == [1, 2]  # a fresh log, never appended to someone's file
    assert (docs / "thesis.tex").read_text() == "\\section{GANs}"
    assert (docs / "samples" / "photo.jpg").read_bytes() == b"jpeg"


def test_an_empty_folder_is_a_fine_run_directory() -> None:
    Path("empty").mkdir()
    assert ok("train", *TINY, "--steps", "1", "--out", "empty")["step"] == 1


# ---------------------------------------------------------------- 4. one process per run


def test_a_run_being_trained_is_locked_against_every_other_writer() -> None:
    run = Path(ok("train", *TINY, "--steps", "2", "--out", "run")["run_dir"])
    before = tree(run)
    with rundir.claim_existing(run):  # what a training process holds, from another descriptor
        for args in (("train", "--resume", "run", "--steps", "4"),
                     ("train", *TINY, "--steps", "1", "--out", "run"),
                     ("train", *TINY, "--steps", "1", "--out", "run", "--force")):
            one_line_error(genai(*args), 1, "run is being trained by another genai process", "wait for it")
        assert tree(run) == before
        # readers keep working on the last complete checkpoint
        assert ok("sample", "-c", "run", "--n", "2", "--out", "x.npz")["n"] == 2
        assert ok("info", "run")["step"] == 2
    assert ok("train", "--resume", "run", "--steps", "3")["step"] == 3  # the lock went with its holder


def test_a_run_without_a_checkpoint_yet_says_it_is_still_training() -> None:
    Path("young").mkdir()
    with rundir.claim_existing(Path("young")):
        one_line_error(genai("sample", "-c", "young", "--out", "x.png"), 1, "still training", "wait for its first")


def spawn_train(*args: str) -> subprocess.Popen:
    env = {**os.environ, "GENAI_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "genai_cli", "train", *TINY, *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_started_together_never_share_a_run() -> None:
    procs = [spawn_train("--steps", "6", "--out", "same") for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0 and codes[1] in (1, 2), results  # 1: locked out; 2: the other had finished: a run
    loser = next(err for code, err in results if code != 0)
    assert "being trained by another genai process" in loser or "already holds a run" in loser, loser
    assert steps_logged(Path("same")) == [1, 2, 3, 4, 5, 6]  # one run's steps, each once


def test_a_killed_trainer_leaves_no_stale_lock() -> None:
    proc = spawn_train("--steps", "100000", "--save-every", "2", "--out", "run")
    deadline = time.monotonic() + 240
    while not (Path("run") / ck.STATE_FILE).exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else "slow"
        time.sleep(0.2)
    one_line_error(genai("train", "--resume", "run", "--steps", "100001"), 1, "being trained by another")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    step = ck.load_training_state(Path("run")).checkpoint.step
    assert ok("train", "--resume", "run", "--steps", str(step + 1))["step"] == step + 1


def test_a_fifo_named_like_genais_config_is_refused_not_read() -> None:
    Path("pipe").mkdir()
    os.mkfifo("pipe/config.json")  # reading it would block until someone writes
    one_line_error(genai("train", *TINY, "--steps", "1", "--out", "pipe"), 2, "pipe is not empty and holds no genai run")
