"""Training on several processes with PyTorch's own engine: torchrun starts them, DDP syncs them.

`genai train --nproc-per-node N` re-launches itself under `torch.distributed.run` (as
torchtune's `tune run` does); `torchrun -m genai_cli train ...` works the same way. Each
process reads its rank from the environment torchrun sets. `--batch-size` stays the global
batch, so a run computes the same maths on any number of processes and a checkpoint
written by N processes resumes on M.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

import torch
import torch.distributed as dist
from torch import nn

from genai_cli.config import check_range
from genai_cli.errors import ExitCode, UsageError

LAUNCH_FLAGS = ("--nproc-per-node", "--nnodes", "--rdzv-endpoint")
SIGNAL_EXIT_CODES = {signal.SIGINT: ExitCode.SIGINT, signal.SIGTERM: ExitCode.SIGTERM}
# How long torchrun lets the workers stop after passing a signal on (its default, 30 s, can be shorter
# than the wait for the next --log-every step, where they save their checkpoint): then SIGKILL.
SHUTDOWN_SECONDS = "600"


@dataclass(frozen=True)
class World:
    """This process's place in the run: rank 0 alone logs, samples and writes files."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE_PROCESS = World()


def current_world() -> World:
    """The world torchrun describes in the environment (a single process without it)."""
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1)))


def start(world: World, device: torch.device) -> torch.device:
    """Join the process group (nccl on CUDA, gloo elsewhere); returns this rank's device."""
    if not world.distributed:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def finish(world: World) -> None:
    """Wait until every rank is done: tearing gloo down while a peer still writes can abort it."""
    if world.distributed and dist.is_initialized():
        dist.barrier()


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def sync_batchnorm(module: nn.Module, world: World, device: torch.device) -> nn.Module:
    """BatchNorm statistics over the global batch; PyTorch implements that on GPUs only."""
    if world.distributed and device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return module


def wrap(module: nn.Module, world: World, device: torch.device) -> nn.Module:
    """DDP averages gradients across ranks during backward; a no-op for one process."""
    if not world.distributed or not any(p.requires_grad for p in module.parameters()):
        return module
    # R1's double backward hands the first conv's weight (one input channel) a grad whose strides
    # differ from its channels-last ones only on the size-1 dim: the same memory order, so DDP copies
    # a few floats per step; its warning about it is noise on the user's stderr (pytorch/pytorch#47163).
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def any_rank(flags: Sequence[bool], world: World, device: torch.device) -> list[bool]:
    """Each flag true on every rank when it is true on one (a stop request, a NaN), so all act together."""
    if not world.distributed:
        return list(flags)
    values = torch.tensor([float(flag) for flag in flags], device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(v) for v in values.tolist()]


def mean_over_ranks(value: torch.Tensor, world: World) -> torch.Tensor:
    """A detached scalar's mean over every process (the scalar itself on one): a statistic of the
    whole batch, where each process holds an equal slice of it."""
    total = value.detach().clone()
    if world.distributed:
        dist.all_reduce(total)
    return total / world.size


def broadcast_text(text: str, world: World) -> str:
    """Rank 0's string on every rank (the run directory rank 0 chose)."""
    if not world.distributed:
        return text
    box = [text]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def global_slice(tensor_for_all: torch.Tensor, world: World) -> torch.Tensor:
    """Rank r's rows of a tensor drawn for the global batch (same RNG state on every rank).

    Noise drawn this way gives each rank different noise and keeps a run's maths independent
    of the number of processes: with one process it is exactly `torch.randn(batch, ...)`.
    """
    per_rank = tensor_for_all.shape[0] // world.size
    return tensor_for_all[world.rank * per_rank : (world.rank + 1) * per_rank]


def torchrun_command(train_args: Sequence[str], nproc_per_node: int, nnodes: str, rdzv_endpoint: str | None) -> list[str]:
    """`python -m torch.distributed.run ... -m genai_cli train ARGS`; a free port on one node."""
    check_range("--nproc-per-node", nproc_per_node)
    if not re.fullmatch(r"[1-9]\d{0,3}(:[1-9]\d{0,3})?", nnodes):
        raise UsageError(f"--nnodes {nnodes!r} is not a machine count; write N or MIN:MAX, e.g. 2 or 1:4")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc_per_node), "--nnodes", nnodes]
    if rdzv_endpoint:
        command += ["--rdzv-backend", "c10d", "--rdzv-endpoint", rdzv_endpoint]
    elif nnodes not in ("1", "1:1"):
        raise UsageError("--nnodes above 1 needs --rdzv-endpoint HOST:PORT of a machine every node can reach")
    else:
        command += ["--standalone"]  # c10d rendezvous on localhost with a free port
    return [*command, "-m", "genai_cli", "train", *train_args]


def strip_launch_flags(argv: Sequence[str]) -> list[str]:
    """The `genai train` arguments without the launcher's own flags (`--flag value` or `--flag=value`)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in LAUNCH_FLAGS:
            skip = True
        elif not arg.startswith(tuple(f"{flag}=" for flag in LAUNCH_FLAGS)):
            kept.append(arg)
    return kept


def launch_world(nproc_per_node: int, nnodes: str) -> World:
    """The smallest world a launch can make (MIN machines of MIN:MAX), for checking the flags up front."""
    return World(size=nproc_per_node * int(nnodes.split(":")[0]))


def launch(command: Sequence[str], nproc_per_node: int) -> int:
    """Run torchrun and return its exit code.

    torchrun gets a session of its own, so a terminal's Ctrl-C reaches this process alone, and
    SIGINT or SIGTERM here is passed on to torchrun once; torchrun passes it to every worker,
    which saves a checkpoint and stops, and this process waits for all of them and exits
    130 or 143: nothing is left running.
    """
    env = dict(os.environ)
    # Share this machine's cores among its processes (torchrun would otherwise pick 1 and say so).
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc_per_node)))
    env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", SHUTDOWN_SECONDS)
    child = subprocess.Popen(list(command), env=env, start_new_session=True)
    received: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        if not received:  # torchrun stops its workers on the first; a second would cut their checkpoint short
            child.send_signal(signum)
        received.append(signum)

    previous = {sig: signal.signal(sig, forward) for sig in SIGNAL_EXIT_CODES}
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return SIGNAL_EXIT_CODES[signal.Signals(received[0])] if received else code
