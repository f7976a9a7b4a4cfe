"""DCGAN training throughput: genai's engine against a pytorch/examples-style loop, same maths.

For each row (image size x channels x batch) it runs, in one process and alternating round by
round, (a) the loop body of pytorch/examples dcgan/main.py -- a torchvision dataset with
transforms.ToTensor + Normalize, a DataLoader (shuffle, --workers processes), plain Adam
(lr 2e-4, betas (0.5, 0.999)), netD.zero_grad(), D on real then on fake, the G step, and the
per-step .item() reads the example prints -- and (b) genai's engine: `objective.step` over
`source.epoch_batches`, as `genai train` runs it. Both train the same G and D, built by
genai's model registry from one ModelConfig and one seed, on the same images: the example's
network, whose G makes the image with a transposed conv (`--no-full-res-conv`). The example's
Sigmoid + BCELoss is written as BCEWithLogitsLoss on D's logits (the same loss, stably), and
genai runs with `--ema 0 --r1 0` (its DCGAN defaults keep a moving average of G and add R1
every 16th step, work the example does not do), so both perform the same update. On CUDA and on CPUs with native
bf16 (AVX512-BF16, AMX) genai trains under bf16 autocast, its default (--precision fp32: float32, the
reference's arithmetic), and the reference keeps the example's cudnn.benchmark = True.

Rows: 28x28x1 (Fashion-MNIST when found, else random images), 32x32x3 and 64x64x3 (random
RGB images: torchvision's FakeData for the reference -- the example's --dataset fake -- and
the same images as a PNG folder for genai), batch 64 and 128. The 64x64x3 batch-64 row is
pytorch/examples' default configuration (ngf = ndf = 64). Each figure is the median of
--rounds timed rounds after warm-up; ratio = genai / reference. FLOPs of one step of each
loop are counted once per row with FlopCounterMode (outside timing) and turned into achieved
GFLOP/s, shown next to the machine's float32 matmul GFLOP/s (best of a few torch.mm). Also:
sampling images/s (generator only, eval, no_grad, batch 1000) per image size, and peak
memory (RSS; CUDA allocator peak per loop when on a GPU). A readable table goes to stderr
and exactly one JSON object to stdout.

    python benchmarks/bench_throughput.py [--quick] [--sizes 28,32,64] [--batches 64,128]
        [--rounds 5] [--steps N] [--workers 2] [--width 64] [--precision bf16|fp32] [--random-data]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn, optim
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import datasets, transforms

from genai_cli import console, training
from genai_cli.config import ModelConfig, TrainConfig
from genai_cli.data import resolve_data_roots
from genai_cli.models import MODELS, AdversarialModel
from genai_cli.objectives import make_objective
from genai_cli.runtime import PRECISIONS, describe, pick_device, seed_everything

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FASHION_FILES = [f"{split}-{kind}-idx{dims}-ubyte" for split in ("train", "t10k")
                 for kind, dims in (("images", 3), ("labels", 1))]
DEFAULT_STEPS = {28: 20, 32: 10, 64: 3}  # per timed round: a few seconds each on a 2-core CPU
EXAMPLES_DEFAULT = (64, 3, 64)  # pytorch/examples dcgan: --imageSize 64, 3 channels, --batchSize 64
SAMPLE_BATCH = 1000
REAL_LABEL, FAKE_LABEL = 1.0, 0.0

Run = Callable[[int], int]  # trains n steps and returns the images seen, with the device idle


@dataclass(frozen=True)
class Row:
    size: int
    channels: int
    batch: int

    @property
    def shape(self) -> str:
        return f"{self.size}x{self.size}x{self.channels}"

    @property
    def examples_default(self) -> bool:
        return (self.size, self.channels, self.batch) == EXAMPLES_DEFAULT


@dataclass
class RowData:
    """The same images twice: as the reference loop's torchvision dataset and as genai flags."""

    name: str
    reference: Dataset
    flags: dict[str, Any]


# ---------------------------------------------------------------- data


def fashion_mnist_root() -> str | None:
    """A root holding Fashion-MNIST decompressed in torchvision's layout, which both loops read."""
    for root in [SHARED_DATA, *resolve_data_roots(None)]:
        if all((root / "FashionMNIST" / "raw" / name).is_file() for name in FASHION_FILES):
            return str(root)
    return None


def normalise(channels: int) -> transforms.Compose:
    """The example's transform: uint8 -> [0, 1] -> [-1, 1], as genai's images / 127.5 - 1."""
    return transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,) * channels, (0.5,) * channels)])


def write_fake_folder(folder: Path, count: int, channels: int, size: int) -> None:
    """FakeData's images as lossless PNGs, so genai's folder loader decodes the reference's pixels."""
    folder.mkdir(parents=True)
    for i, (image, _) in enumerate(datasets.FakeData(size=count, image_size=(channels, size, size))):
        image.save(folder / f"{i:06d}.png")


def row_data(size: int, channels: int, count: int, fashion_root: str | None, scratch: Path) -> RowData:
    """Fashion-MNIST at 28x28x1 when available; otherwise `count` random images, identical for both loops."""
    transform = normalise(channels)
    if (size, channels) == (28, 1) and fashion_root:
        dataset = datasets.FashionMNIST(fashion_root, train=True, download=False, transform=transform)
        return RowData("fashion-mnist", dataset, {"data.name": "fashion-mnist", "data.data_dir": fashion_root})
    folder = scratch / f"{size}x{size}x{channels}"
    write_fake_folder(folder, count, channels, size)
    dataset = datasets.FakeData(size=count, image_size=(channels, size, size), transform=transform)
    return RowData("random", dataset, {"data.name": str(folder)})


# ---------------------------------------------------------------- the two loops


@contextmanager
def cudnn_benchmark() -> Iterator[None]:
    """pytorch/examples dcgan sets cudnn.benchmark = True; keep that to the reference's own steps."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def forever(loader: DataLoader) -> Iterator[Any]:
    """Epoch after epoch, as the example's `for epoch ... for i, data in enumerate(dataloader)`."""
    while True:
        yield from loader


def reference_loop(model: AdversarialModel, dataset: Dataset, batch_size: int, workers: int,
                   train: TrainConfig, device: torch.device) -> Run:
    """The body of pytorch/examples dcgan/main.py, names and all, on genai's G and D."""
    netG, netD, nz = model.generator, model.discriminator, model.latent_dim
    criterion = nn.BCEWithLogitsLoss()  # the example: Sigmoid at D's end + nn.BCELoss
    optimizerD = optim.Adam(netD.parameters(), lr=train.lr, betas=(train.beta1, 0.999))
    optimizerG = optim.Adam(netG.parameters(), lr=train.lr, betas=(train.beta1, 0.999))
    batches = forever(DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers))

    def step(data: tuple[torch.Tensor, torch.Tensor]) -> int:
        netD.zero_grad()
        real_cpu = data[0].to(device)
        batch_size = real_cpu.size(0)
        label = torch.full((batch_size,), REAL_LABEL, dtype=real_cpu.dtype, device=device)
        output = netD(real_cpu)
        errD_real = criterion(output, label)
        errD_real.backward()
        D_x = output.sigmoid().mean().item()
        noise = torch.randn(batch_size, nz, 1, 1, device=device)
        fake = netG(noise)
        label.fill_(FAKE_LABEL)
        output = netD(fake.detach())
        errD_fake = criterion(output, label)
        errD_fake.backward()
        D_G_z1 = output.sigmoid().mean().item()
        errD = errD_real + errD_fake
        optimizerD.step()
        netG.zero_grad()
        label.fill_(REAL_LABEL)
        output = netD(fake)
        errG = criterion(output, label)
        errG.backward()
        D_G_z2 = output.sigmoid().mean().item()
        optimizerG.step()
        _ = (errD.item(), errG.item(), D_x, D_G_z1, D_G_z2)  # what the example prints every step
        return batch_size

    def run(n: int) -> int:
        with cudnn_benchmark():
            return sum(step(next(batches)) for _ in range(n))

    return run


def genai_loop(plan: training.Plan, batch_size: int) -> Run:
    """genai's engine as `genai train` drives it: seeded batches on the device, one objective step each."""
    seed_everything(plan.config.train.seed)
    model = training.build_model(plan, plan.device)
    objective = make_objective(model, plan.config.train, plan.device)
    batches = itertools.chain.from_iterable(
        plan.source.epoch_batches(epoch, batch_size, plan.config.train.seed, plan.device) for epoch in itertools.count())
    step_indices = itertools.count()

    def run(n: int) -> int:
        losses, seen = {}, 0
        for images, labels in itertools.islice(batches, n):
            objective.step_index = next(step_indices)  # as the loop tells it: R1 falls on every 16th step
            losses = objective.step(training.prepare_batch(images), labels)
            seen += images.shape[0]
        torch.stack(list(losses.values())).tolist()  # wait for the device
        return seen

    return run


# ---------------------------------------------------------------- measurements


def images_per_sec(run: Run, steps: int) -> float:
    start = time.perf_counter()
    seen = run(steps)
    return seen / (time.perf_counter() - start)


def flops_per_image(run: Run) -> float:
    """FLOPs (matmuls and convolutions, forward and backward) of one step, per image."""
    with FlopCounterMode(display=False) as counter:
        seen = run(1)
    return counter.get_total_flops() / seen


def cuda_peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def reset_cuda_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


def matmul_gflops(n: int, device: torch.device, repeats: int) -> float:
    """The machine's float32 matmul rate: best of `repeats` n x n torch.mm after one warm-up."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.mm(a, b)
    synchronize(device)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def compare(row: Row, data: RowData, args: argparse.Namespace, steps: int) -> dict[str, Any]:
    """Both loops on one row: FLOPs, warm-up, then alternating timed rounds (reference first)."""
    flags = {"model.kind": "dcgan", "model.image_size": row.size, "model.channels": row.channels,
             "model.width": args.width, "model.full_res_conv": False, "train.batch_size": row.batch,
             "train.ema": 0.0, "train.r1": 0.0, "train.precision": args.precision, **data.flags}
    plan = training.plan_run(flags, None)
    seed_everything(plan.config.train.seed)  # genai_loop seeds alike: both start from the same weights
    reference_model = plan.spec.build(plan.config.model).to(plan.device)
    loops = {"reference": reference_loop(reference_model, data.reference, row.batch, args.workers,
                                         plan.config.train, plan.device),
             "genai": genai_loop(plan, row.batch)}
    flops = {name: flops_per_image(run) for name, run in loops.items()}
    for run in loops.values():
        run(args.warmup)
    rounds: dict[str, list[float]] = {name: [] for name in loops}
    peaks: dict[str, list[float | None]] = {name: [] for name in loops}
    for _ in range(args.rounds):
        for name, run in loops.items():
            reset_cuda_peak(plan.device)
            rounds[name].append(images_per_sec(run, steps))
            peaks[name].append(cuda_peak_mib(plan.device))
    result: dict[str, Any] = {"shape": row.shape, "size": row.size, "channels": row.channels, "batch": row.batch,
                              "width": args.width, "data": data.name, "steps": steps, "precision": plan.config.train.precision,
                              "examples_default": row.examples_default}
    for name in loops:
        cuda = [p for p in peaks[name] if p is not None]
        result[name] = {"images_per_sec": round(statistics.median(rounds[name]), 2),
                        "rounds": [round(r, 2) for r in rounds[name]],
                        "gflop_per_image": round(flops[name] / 1e9, 4),
                        "cuda_peak_mib": round(max(cuda)) if cuda else None}
    result["ratio"] = round(result["genai"]["images_per_sec"] / result["reference"]["images_per_sec"], 3)
    result["rss_high_water_mib"] = round(rss_mib())
    return result


def add_gflops(result: dict[str, Any], matmul: float) -> None:
    """Achieved GFLOP/s of each loop and its share of the matmul rate."""
    for name in ("reference", "genai"):
        side = result[name]
        side["gflops"] = round(side["gflop_per_image"] * side["images_per_sec"], 2)
        side["share_of_matmul"] = round(side["gflops"] / matmul, 4)


@torch.no_grad()
def sampling_rate(size: int, channels: int, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Generator-only images/s at batch 1000 in eval mode: what sampling the default G costs at this size."""
    spec = MODELS.get("dcgan")
    config = ModelConfig("dcgan", spec.latent_dim, channels, size, width=args.width, full_res_conv=spec.full_res_conv)
    generator = spec.build(config).generator.to(device).eval()
    z = torch.randn(SAMPLE_BATCH, config.latent_dim, device=device)

    def run(_: int) -> int:
        generator(z)
        synchronize(device)
        return SAMPLE_BATCH

    run(1)
    rate = statistics.median(images_per_sec(run, 1) for _ in range(args.rounds))
    return {"shape": f"{size}x{size}x{channels}", "batch": SAMPLE_BATCH, "images_per_sec": round(rate, 1)}


# ---------------------------------------------------------------- report


def print_table(report: dict[str, Any]) -> None:
    """The JSON's headline numbers, readable, on stderr."""
    mm = report["matmul"]
    lines = [f"genai vs pytorch/examples dcgan loop on {report['device']}, torch {report['torch']}: "
             f"median of {report['rounds']} rounds, {report['workers']} DataLoader workers, genai --ema 0 --r1 0",
             f"float32 matmul {mm['size']}x{mm['size']}: {mm['gflops']:.1f} GFLOP/s",
             f"{'shape':<9}{'batch':>6}{'data':>15}{'ref img/s':>11}{'genai img/s':>13}{'ratio':>8}"
             f"{'ref GF/s':>10}{'genai GF/s':>12}{'of mm':>7}"]
    for r in report["rows"]:
        ref, gen = r["reference"], r["genai"]
        mark = "*" if r["examples_default"] else " "
        lines.append(f"{r['shape']:<9}{r['batch']:>5}{mark}{r['data']:>15}{ref['images_per_sec']:>11.1f}"
                     f"{gen['images_per_sec']:>13.1f}{r['ratio']:>7.2f}x{ref['gflops']:>10.1f}{gen['gflops']:>12.1f}"
                     f"{gen['share_of_matmul']:>7.0%}")
    if any(r["examples_default"] for r in report["rows"]):
        lines.append("* pytorch/examples dcgan's default configuration (64x64x3, ngf = ndf = 64, batch 64)")
    lines.append("sampling (generator only, batch 1000): "
                 + ", ".join(f"{s['shape']} {s['images_per_sec']:.0f} img/s" for s in report["sampling"]))
    memory = report["memory"]
    lines.append(f"peak RSS {memory['peak_rss_mib']} MiB (DataLoader workers {memory['peak_rss_workers_mib']} MiB)")
    print("\n".join(lines), file=sys.stderr)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run (the test suite's): 28 and 32 px at batch 64, 2 steps, 1 round")
    parser.add_argument("--sizes", default="28,32,64", help="image sides; 28 is 1 channel, others 3")
    parser.add_argument("--batches", default="64,128")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per loop; the median is reported")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"steps per timed round (default per size: {DEFAULT_STEPS})")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per loop after the FLOP-counting one")
    parser.add_argument("--workers", type=int, default=2, help="the reference's DataLoader workers (the example's default)")
    parser.add_argument("--width", type=int, default=64, help="ngf = ndf")
    parser.add_argument("--matmul-size", type=int, default=None, help="default 2048 (8192 on CUDA)")
    parser.add_argument("--precision", choices=PRECISIONS, default=None, help="genai's precision (default: what genai picks for the device)")
    parser.add_argument("--random-data", action="store_true", help="random images at 28x28 even where Fashion-MNIST is")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.batches, args.rounds, args.steps, args.warmup = "28,32", "64", 1, 2, 1
        args.matmul_size = args.matmul_size or 512
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    console.configure(quiet=True)  # the table and the JSON are the output
    sizes, batches = [int(s) for s in args.sizes.split(",")], [int(b) for b in args.batches.split(",")]
    fashion_root = None if args.random_data else fashion_mnist_root()
    rows, sampling = [], []
    with tempfile.TemporaryDirectory(prefix="genai-bench-") as scratch:
        for size in sizes:
            channels = 1 if size == 28 else 3
            steps = args.steps or DEFAULT_STEPS.get(size, 3)
            count = max(batches) * (1 + args.warmup + args.rounds * steps)
            data = row_data(size, channels, count, fashion_root, Path(scratch))
            rows += [compare(Row(size, channels, batch), data, args, steps) for batch in batches]
    device = pick_device("auto")
    sampling = [sampling_rate(size, 1 if size == 28 else 3, args, device) for size in sizes]
    matmul_size = args.matmul_size or (8192 if device.type == "cuda" else 2048)
    matmul = matmul_gflops(matmul_size, device, repeats=max(3, args.rounds))
    for row in rows:
        add_gflops(row, matmul)
    report = {"device": describe(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "torchvision": torchvision.__version__, "rounds": args.rounds, "warmup": args.warmup,
              "workers": args.workers, "quick": args.quick, "ema": 0.0, "r1": 0.0,
              "matmul": {"size": matmul_size, "dtype": "float32", "gflops": round(matmul, 1)},
              "rows": rows, "sampling": sampling,
              "memory": {"peak_rss_mib": round(rss_mib()), "peak_rss_workers_mib": round(rss_mib(resource.RUSAGE_CHILDREN))}}
    print_table(report)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
