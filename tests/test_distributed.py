"""Multi-process training through torchrun: same maths as one process, one writer, resumable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_idx_dataset
from safetensors.torch import load_file

from genai_cli import distributed
from genai_cli.distributed import World
from genai_cli.errors import UsageError

# No BatchNorm: each rank's BatchNorm would normalise its half batch (SyncBatchNorm is GPU-only),
# which is a different, equally valid computation; with --norm none the maths must match exactly.
TINY_VAE = ["--model", "vae", "--data", "fashion-mnist", "--norm", "none", "--width", "8",
            "--latent-dim", "4", "--batch-size", "32", "--log-every", "2", "--sample-every", "100"]


def genai_train(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "genai_cli", "train", *args, "--json", "-q"],
                          capture_output=True, text=True, check=False, timeout=300,
                          env={**os.environ, "GENAI_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


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
    with pytest.raises(UsageError, match="--nproc-per-node"):
        distributed.torchrun_command([], 0, "1", None)
