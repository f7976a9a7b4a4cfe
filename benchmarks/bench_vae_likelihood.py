"""The VAE decoder's likelihood, Bernoulli against Gaussian, on the same budget: how sharp its
reconstructions are (the best any prior could sample) and what its samples score.

For each likelihood: `genai train --model vae --data fashion-mnist --max-time T --likelihood L
--seed S`, then `genai eval -c R --n N --metrics fid,pr` (classifier features, seeds 0..N-1,
against the test split), and the FID of the reconstructions of the first N train images (the
decoder's mean at each image's posterior mean, same features and reference). One JSON line per
likelihood on stdout.

    python benchmarks/bench_vae_likelihood.py [--max-time 300s] [--n 10000] [--out runs/vae-likelihood]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from genai_json import genai

from genai_cli import checkpoint as ckpt
from genai_cli import evaluation, metrics
from genai_cli.data import load_dataset
from genai_cli.objectives.elbo import reconstruct


def reconstruction_fid(run: Path, n: int) -> float:
    """Classifier FID of the reconstructions of the first n train images against the test split."""
    device = torch.device("cpu")
    model, loaded = ckpt.load_model(str(run), device)
    shape, data = loaded.config.model, loaded.config.data
    assert shape.channels and shape.image_size
    judge, _ = evaluation.load_judge(data.name, data.data_dir, (shape.channels, shape.image_size), device)
    test, train = (load_dataset(data.name, data_dir=data.data_dir, split=split, channels=shape.channels,
                                image_size=shape.image_size) for split in ("test", "train"))
    reference = evaluation.split_features(test, data.name, "test", n, judge)
    images = train.all_images()[:n]
    labels = train.all_labels()
    recon = torch.cat([reconstruct(model, images[i : i + 500], labels[i : i + 500] if model.conditional and labels is not None else None,
                                   device) for i in range(0, len(images), 500)])
    return metrics.fid(reference, judge(recon)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-time", default="300s")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/vae-likelihood"))
    args = parser.parse_args()
    for likelihood in ("bernoulli", "gaussian"):
        run = args.out / likelihood
        trained = genai("train", "--model", "vae", "--data", "fashion-mnist", "--max-time", args.max_time,
                        "--likelihood", likelihood, "--seed", str(args.seed), "--out", str(run), "--force")
        scored = genai("eval", "-c", str(run), "--n", str(args.n), "--metrics", "fid,pr")["metrics"]
        print(json.dumps({"likelihood": likelihood, "max_time": args.max_time, "steps": trained["step"],
                          "images_per_sec": trained["images_per_sec"], "sample_fid": scored["fid"],
                          "precision": scored["precision"], "recall": scored["recall"],
                          "reconstruction_fid": reconstruction_fid(run, args.n)}), flush=True)


if __name__ == "__main__":
    main()
