"""Training throughput of every model family through genai's own engine.

Runs the engine's training step (the same objective, optimiser and batching that
`genai train` uses) on Fashion-MNIST 28x28 at batch 64 and 128 and prints images/s as a
table on stderr and one JSON object on stdout. Each figure is the median of several timed
rounds after warm-up. Uses real data when found (GENAI_DATA_DIR, ../shared/data, ...) and
random images of the same shape otherwise: throughput does not depend on pixel values.

    python benchmarks/bench_train.py [--families gan,dcgan] [--batches 64,128] [--steps 30] [--rounds 3]
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from genai_cli import training
from genai_cli.errors import DataError
from genai_cli.objectives import make_objective
from genai_cli.runtime import seed_everything

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from idx import write_idx  # noqa: E402  (the tests' IDX writer; benchmarks run as scripts)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def data_dir() -> str | None:
    """A root with Fashion-MNIST, or a temporary one with random images of its shape."""
    from genai_cli.data import load_dataset

    try:
        load_dataset("fashion-mnist", data_dir=str(SHARED_DATA) if SHARED_DATA.exists() else None)
        return str(SHARED_DATA) if SHARED_DATA.exists() else None
    except DataError:
        root = Path(tempfile.mkdtemp(prefix="genai-bench-")) / "FashionMNIST" / "raw"
        root.mkdir(parents=True)
        images = np.random.default_rng(0).integers(0, 256, (10_000, 28, 28), dtype=np.uint8)
        labels = np.arange(10_000, dtype=np.uint8) % 10
        for name, array in (("train-images-idx3-ubyte", images), ("train-labels-idx1-ubyte", labels)):
            write_idx(root / name, array)
        print("Fashion-MNIST not found: timing on random images of the same shape", file=sys.stderr)
        return str(root.parents[1])


def time_family(kind: str, batch_size: int, steps: int, rounds: int, root: str | None) -> float:
    """Median images/s of `rounds` timed runs of `steps` training steps after warm-up."""
    plan = training.plan_run({"model.kind": kind, "data.data_dir": root, "train.batch_size": batch_size}, None)
    seed_everything(0)
    model = training.build_model(plan, plan.device)
    objective = make_objective(model, plan.config.train, plan.device)
    batches = plan.source.epoch_batches(0, batch_size, 0, plan.device)
    step_indices = itertools.count()

    def run(n: int) -> float:
        start = time.perf_counter()
        losses = {}
        for _ in range(n):
            images, labels = next(batches)
            objective.step_index = next(step_indices)  # as the loop tells it: R1 falls on every 16th step
            losses = objective.step(training.prepare_batch(images), labels)
        torch.stack(list(losses.values())).tolist()  # wait for the device
        return n * batch_size / (time.perf_counter() - start)

    run(5)  # warm-up: allocator, kernel selection
    return statistics.median(run(steps) for _ in range(rounds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="gan,dcgan,cgan,vae,cvae")
    parser.add_argument("--batches", default="64,128")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    root = data_dir()
    families, batches = args.families.split(","), [int(b) for b in args.batches.split(",")]
    results = {k: {str(b): round(time_family(k, b, args.steps, args.rounds, root), 1) for b in batches} for k in families}
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{'family':<8}" + "".join(f"{'batch ' + str(b):>12}" for b in batches) + "   (images/s, 28x28)", file=sys.stderr)
    for kind, row in results.items():
        print(f"{kind:<8}" + "".join(f"{row[str(b)]:>12.0f}" for b in batches), file=sys.stderr)
    print(json.dumps({"images_per_sec": results, "threads": torch.get_num_threads(), "peak_rss_mib": round(rss_mib),
                      "torch": torch.__version__, "device": "cpu" if not torch.cuda.is_available() else "cuda"}))


if __name__ == "__main__":
    main()
