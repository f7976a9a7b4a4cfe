"""What the fitted prior buys a VAE: one trained run's weights, scored with `genai eval` under
N(0, I) (a plain VAE), one Gaussian matching the aggregate posterior's moments (the means'
covariance plus the average posterior variance), and the mixture `genai train` fits (its
config's `prior_components` Gaussians, fitted by EM to the same aggregate posterior). A CVAE also
gets one Gaussian per class, and the mixtures are per class; its class accuracy is reported.
Same seeds, reference and extractor.

    python benchmarks/bench_vae_prior.py runs/vae-fashion-mnist-001 [--inception] [--n 10000]

Prints one JSON object: each prior's metrics (FID, precision/recall, and the likelihood bounds).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

SHARED = Path(__file__).resolve().parents[2] / "shared"


def write_variants(run: Path, folder: Path) -> dict[str, Path]:
    """Copies of the run's model file whose prior is N(0, I), one Gaussian (pooled, and per class for a
    CVAE), or the fitted mixture."""
    from genai_cli import checkpoint as ckpt
    from genai_cli.data import load_dataset
    from genai_cli.objectives.elbo import posterior_moments

    model, loaded = ckpt.load_model(str(run), torch.device("cpu"))
    if model.decoder.prior is None:
        sys.exit(f"{run} has no fitted prior (trained with --prior standard, or not a VAE)")
    data, shape = loaded.config.data, loaded.config.model
    train = load_dataset(data.name, data_dir=data.data_dir, split=data.split, channels=shape.channels, image_size=shape.image_size)
    means, variances = posterior_moments(model, train.in_order(500, torch.device("cpu")))
    prior, labels, seed = model.decoder.prior, train.all_labels(), loaded.config.train.seed
    fits = {"standard": prior.reset,
            "gaussian": lambda: prior.fit(means, variances, components=1, seed=seed)}
    if model.conditional:  # "gaussian" pools the classes; a CVAE fits its densities per class
        fits["gaussian_per_class"] = lambda: prior.fit(means, variances, labels, components=1, seed=seed)
    fits["mixture"] = lambda: prior.fit(means, variances, labels if model.conditional else None, seed=seed)
    with safe_open(str(run / "model.safetensors"), framework="pt") as handle:
        metadata = handle.metadata()
    paths = {}
    for name, fit in fits.items():
        fit()
        paths[name] = folder / name
        paths[name].mkdir(parents=True)
        save_file(ckpt.weights_of(model), str(paths[name] / "model.safetensors"), metadata=metadata)
        shutil.copy(run / "config.json", paths[name] / "config.json")
    return paths


def score(checkpoint: Path, args: argparse.Namespace, conditional: bool) -> dict:
    metrics = "fid,pr,nll" + (",acc" if conditional else "")
    extra = ["--features", "inception", "--ref-stats", str(args.ref_stats)] if args.inception else ["--metrics", metrics]
    proc = subprocess.run([sys.executable, "-m", "genai_cli", "eval", "-c", str(checkpoint), "--n", str(args.n),
                           "--iw-samples", str(args.iw_samples), *extra, "--json", "-q"], stdout=subprocess.PIPE, check=True)
    return json.loads(proc.stdout)["metrics"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--iw-samples", type=int, default=64)
    parser.add_argument("--inception", action="store_true", help="Protocol A (Inception, --ref-stats) instead of classifier features")
    parser.add_argument("--ref-stats", type=Path, default=SHARED / "stats" / "fashion-mnist-test-inception-2015-12-05.npz")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        variants = write_variants(args.run, Path(tmp))
        conditional = "gaussian_per_class" in variants
        result = {"run": str(args.run), "n": args.n, "features": "inception" if args.inception else "classifier",
                  **{name: score(path, args, conditional) for name, path in variants.items()}}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
