"""Multi-process training through torchrun: same maths as one process, one writer, resumable."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import make_idx_dataset
from safetensors.torch import load_file

from genai_cli import checkpoint as ckpt
from genai_cli import distributed
from genai_cli.distributed import World
from genai_cli.errors import UsageError

# No BatchNorm: each rank's BatchNorm would normalise its half batch (SyncBatchNorm is GPU-only),
# which is a different, equally valid computation; with --norm none the maths must match exactly,
# and in float32 (bf16 rounds each half batch's sums alone).
TINY_VAE = ["--model", "vae", "--data", "fashion-mnist", "--norm", "none", "--width", "8", "--precision", "fp32",
            "--latent-dim", "4", "--batch-size", "32", "--log-every", "2", "--sample-every", "100"]


def train_process(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "genai_cli", "train", *args], capture_output=True, text=True,
                          check=False, timeout=300, env={**os.environ, "GENAI_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr, proc.stderr  # genai's own logs only: no library noise from any rank
    return proc


def genai_train(*args: str) -> dict:
    return json.loads(train_process(*args, "--json", "-q").stdout)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model.safetensors")


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=1e-4, rtol=1e-4, msg=name)


def test_two_processes_train_the_same_vae_as_one_and_resume_across_counts(tmp_path: Path) -> None:
    make_idx_dataset(tmp_path / "data", n_train=256)
    data = ["--data-dir", str(tmp_path / "data")]
    single = genai_train(*TINY_VAE, *data, "--steps", "4", "--out", str(tmp_path / "one"))
    double = genai_train(*TINY_VAE, *data, "--steps", "4", "--out", str(tmp_path / "two"), "--nproc-per-node", "2")

    assert (single["processes"], double["processes"]) == (1, 2)
    assert double["step"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "one", "two"]  # rank 1 wrote no run of its own
    assert len(list((tmp_path / "two").glob("*.safetensors"))) == len(list((tmp_path / "one").glob("*.safetensors")))
    assert_same_weights(tmp_path / "one", tmp_path / "two")

    # A 2-process checkpoint resumes on one process, and a 1-process checkpoint on two.
    genai_train("--resume", str(tmp_path / "two"), "--steps", "6")
    genai_train("--resume", str(tmp_path / "one"), "--steps", "6", "--nproc-per-node", "2")
    assert_same_weights(tmp_path / "one", tmp_path / "two")


def test_two_processes_train_the_same_cvae_with_its_class_loss_as_one(tmp_path: Path) -> None:
    """The classifier beside the cvae syncs through its own DDP wrapper, and the decoder's class term
    through the ELBO's: the decoder (which that term trains) and the classifier end alike."""
    make_idx_dataset(tmp_path / "data", n_train=256)
    args = [*(("cvae" if a == "vae" else a) for a in TINY_VAE), "--data-dir", str(tmp_path / "data"), "--steps", "3", "--class-loss", "5"]
    genai_train(*args, "--out", str(tmp_path / "one"))
    genai_train(*args, "--out", str(tmp_path / "two"), "--nproc-per-node", "2")
    assert_same_weights(tmp_path / "one", tmp_path / "two")
    one, two = (ckpt.load_training_state(tmp_path / run).companions["classifier"] for run in ("one", "two"))
    for name in one:
        torch.testing.assert_close(one[name], two[name], atol=1e-4, rtol=1e-4, msg=name)


def test_two_processes_train_the_same_dcgan_with_r1_as_one(tmp_path: Path) -> None:
    """R1's double backward goes through DDP (DiscriminatorPass): step 0 penalises, step 1 does not;
    its channels-last first-conv grad strides raise no DDP warning on the user's stderr."""
    make_idx_dataset(tmp_path / "data", n_train=256)
    args = ["--model", "dcgan", "--data", "fashion-mnist", "--data-dir", str(tmp_path / "data"), "--norm", "none",
            "--width", "8", "--batch-size", "32", "--steps", "2", "--r1", "10", "--ema", "0", "--sample-every", "100",
            "--precision", "fp32"]
    genai_train(*args, "--out", str(tmp_path / "one"))
    log = train_process(*args, "--out", str(tmp_path / "two"), "--nproc-per-node", "2").stderr
    assert_same_weights(tmp_path / "one", tmp_path / "two")
    assert log.count("images 1×28×28") == 1, log  # the launcher checks the data quietly; rank 0 alone says it


def test_global_slice_gives_each_rank_its_rows_of_the_global_draw() -> None:
    noise = torch.arange(8.0).reshape(8, 1)
    halves = [distributed.global_slice(noise, World(rank, rank, 2)) for rank in (0, 1)]
    assert torch.equal(torch.cat(halves), noise)
    assert torch.equal(distributed.global_slice(noise, World()), noise)


def test_launcher_builds_a_torchrun_command_without_its_own_flags() -> None:
    argv = ["--model", "vae", "--nproc-per-node", "2", "--nnodes=1", "--steps", "3"]
    command = distributed.torchrun_command(distributed.strip_launch_flags(argv), 2, "1", None)
    assert command[1:3] == ["-m", "torch.distributed.run"]
    assert "--standalone" in command  # a free port, never a fixed one
    assert command[-7:] == ["-m", "genai_cli", "train", "--model", "vae", "--steps", "3"]

    multi = distributed.torchrun_command([], 4, "2", "head:29400")
    assert ["--rdzv-endpoint", "head:29400"] == multi[multi.index("--rdzv-endpoint"):][:2]
    with pytest.raises(UsageError, match="--rdzv-endpoint"):
        distributed.torchrun_command([], 4, "2", None)
    for bad in (0, -1, 5000):
        with pytest.raises(UsageError, match="--nproc-per-node"):
            distributed.torchrun_command([], bad, "1", None)
    for nodes in ("0", "two", "1:", "-1"):
        with pytest.raises(UsageError, match="--nnodes"):
            distributed.torchrun_command([], 2, nodes, "head:29400")


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (Linux /proc), found through parent links."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds processes through Linux /proc")
def test_sigterm_to_the_launcher_stops_torchrun_and_every_worker_with_a_checkpoint(tmp_path: Path) -> None:
    make_idx_dataset(tmp_path / "data", n_train=256)
    run = tmp_path / "run"
    launcher = subprocess.Popen([sys.executable, "-m", "genai_cli", "train", *TINY_VAE, "--data-dir", str(tmp_path / "data"),
                                 "--steps", "100000", "--log-every", "1", "--save-every", "100000", "--out", str(run),
                                 "--nproc-per-node", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, "GENAI_OFFLINE": "1"})
    below: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text():
            assert launcher.poll() is None and time.monotonic() < deadline, launcher.stderr.read() if launcher.stderr else ""
            time.sleep(0.2)
        below = descendants(launcher.pid)
        assert len(below) >= 3, below  # torchrun and two workers
        launcher.send_signal(signal.SIGTERM)
        _, err = launcher.communicate(timeout=120)
        assert launcher.returncode == 143, err.decode()
        assert not [pid for pid in below if alive(pid)], "torchrun or a worker outlived the launcher"
        assert "--resume" in err.decode()
        assert ckpt.load_training_state(run).checkpoint.step >= 1
    finally:
        for pid in below | {launcher.pid}:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("flags,message", [
    (["--beta1", "1.5"], r"--beta1 must be in \[0, 1\), got 1\.5"),
    (["--latent-dim", "0"], r"--latent-dim must be at least 1, got 0"),
    (["--device", "cpu:x"], r"--device 'cpu:x' is not a device"),
    (["--out", ""], r"--out is empty"),
    (["--batch-size", "33"], r"--batch-size 33 does not split evenly over 2 processes"),
])
def test_the_launcher_checks_every_value_before_starting_torchrun(tmp_path: Path, flags: list[str], message: str) -> None:
    """One error line and exit 2 from the launcher itself, not torchrun's traceback of a failed worker."""
    make_idx_dataset(tmp_path / "data")
    proc = subprocess.run([sys.executable, "-m", "genai_cli", "train", *TINY_VAE, "--data-dir", str(tmp_path / "data"),
                           "--steps", "2", "--nproc-per-node", "2", *flags], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "GENAI_OFFLINE": "1"}, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    *logs, last = proc.stderr.splitlines()
    assert last.startswith("error: ") and re.search(message, last), proc.stderr
    assert not [line for line in logs if line.startswith(("error:", "warning:", " ", "Traceback"))], proc.stderr
    assert "torch.distributed" not in proc.stderr
