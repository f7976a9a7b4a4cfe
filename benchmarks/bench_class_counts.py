"""How many samples of each class a model draws, by genai's classifier: the sign of a GAN dropping classes.

An unconditional model asks for no class, so `genai eval`'s accuracy does not apply; FID mixes a
missing class in with everything else. This counts the judge's labels for the samples of seeds
0..n-1 (about n/10 each would match Fashion-MNIST). One JSON line per checkpoint goes to stdout.

    python benchmarks/bench_class_counts.py RUN [RUN ...] [--n 5000]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from pathlib import Path

import torch

from genai_cli import checkpoint as ckpt
from genai_cli import evaluation
from genai_cli import features as feats

SHARED = Path(__file__).resolve().parents[2] / "shared"


@functools.cache  # several runs of one dataset share its judge: read the splits once
def judge_for(dataset: str, data_dir: str | None, shape: tuple[int, int]) -> feats.Extractor:
    return evaluation.load_judge(dataset, data_dir, shape, torch.device("cpu"))[0]


def class_counts(checkpoint: str, n: int) -> dict[str, int]:
    model, loaded = ckpt.load_model(checkpoint, torch.device("cpu"))
    data, shape = loaded.config.data, (loaded.config.model.channels, loaded.config.model.image_size)
    images, _ = evaluation.seeded_samples(model, 0, n, torch.device("cpu"))
    labels = judge_for(data.name, data.data_dir, shape)(images)[1].argmax(1)
    return dict(zip(data.classes, torch.bincount(labels, minlength=len(data.classes)).tolist()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories or model files")
    parser.add_argument("--n", type=int, default=5000)
    args = parser.parse_args()
    os.environ.setdefault("GENAI_DATA_DIR", str(SHARED / "data"))
    for run in args.runs:
        print(json.dumps({"checkpoint": run, "n": args.n, "counts": class_counts(run, args.n)}), flush=True)


if __name__ == "__main__":
    main()
