"""What the fitted prior buys a VAE: one trained run, scored twice with `genai eval`, once as
trained (samples from the Gaussian fitted to its codes) and once with that prior reset to N(0, I)
(the same weights, sampling as a plain VAE does). Same seeds, same reference, same extractor.

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
from safetensors.torch import load_file, save_file

SHARED = Path(__file__).resolve().parents[2] / "shared"


def with_standard_prior(run: Path, folder: Path) -> Path:
    """A copy of the run's model file whose fitted prior is the identity: N(0, I) latents."""
    model = run / "model.safetensors"
    with safe_open(str(model), framework="pt") as handle:
        metadata = handle.metadata()
    weights = load_file(model)
    if "decoder.prior.mean" not in weights:
        sys.exit(f"{run} has no fitted prior (trained with --prior standard, or not a VAE)")
    weights["decoder.prior.mean"] = torch.zeros_like(weights["decoder.prior.mean"])
    weights["decoder.prior.scale_tril"] = torch.eye(len(weights["decoder.prior.mean"]))
    folder.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(folder / "model.safetensors"), metadata=metadata)
    return folder


def score(checkpoint: Path, args: argparse.Namespace) -> dict:
    extra = ["--features", "inception", "--ref-stats", str(args.ref_stats)] if args.inception else ["--metrics", "fid,pr,nll"]
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
        standard = with_standard_prior(args.run, Path(tmp) / "standard")
        shutil.copy(args.run / "config.json", standard / "config.json")
        result = {"run": str(args.run), "n": args.n, "features": "inception" if args.inception else "classifier",
                  "fitted": score(args.run, args), "standard": score(standard, args)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
