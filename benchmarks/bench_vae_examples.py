"""genai's VAE against pytorch/examples' `vae/main.py`, at equal wall time, side by side in one run.

The examples script is run unchanged: it reads MNIST from `../data/MNIST/raw`, so a scratch folder
gives it Fashion-MNIST's IDX files under that name (same file names, same format). Its printed
"Test set loss" is the negative ELBO per test image (Bernoulli BCE on [0, 1] pixels + KL, one
posterior sample), the quantity `genai eval --metrics nll` reports as `elbo` (with the sign
flipped, averaged over --iw-samples posterior samples; under the fitted prior genai samples from,
with the bound under training's N(0, I) beside it). Each side gets the machine to itself for
the same budget, start-up included:

  examples  `python main.py --epochs 100000` in the scratch folder, stopped at the budget; its score
            is the last test loss printed inside the budget.
  genai     `genai train --model vae --data fashion-mnist --max-time BUDGET --likelihood bernoulli
            --seed S`, then `genai eval -c R --metrics nll` on the 10k test images. The Bernoulli
            decoder is the examples' likelihood, so the two numbers share units; genai's default
            Gaussian decoder reports a likelihood of the 8-bit pixel values instead, which the
            examples' number (a Bernoulli on intensities) cannot be compared with.

pytorch/examples is not vendored (and cannot be downloaded here): pass a checkout's file.

    python benchmarks/bench_vae_examples.py --examples ~/src/examples/vae/main.py [--budget 300] [--budget 60]

Prints one JSON object per budget on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
TEST_LOSS = re.compile(r"====> Test set loss: ([0-9.]+)")


def fashion_mnist_raw(data_dir: Path) -> Path:
    raw = data_dir / "FashionMNIST" / "raw"
    missing = [name for name in IDX_FILES if not (raw / name).is_file()]
    if missing:
        sys.exit(f"{raw} lacks the decompressed {', '.join(missing)}: set GENAI_DATA_DIR to a folder holding FashionMNIST/raw")
    return raw


def examples_folder(script: Path, raw: Path, root: Path) -> Path:
    """root/vae/main.py with root/data/MNIST/raw holding Fashion-MNIST, as the script's '../data' expects."""
    mnist = root / "data" / "MNIST" / "raw"
    mnist.mkdir(parents=True)
    for name in IDX_FILES:
        (mnist / name).symlink_to(raw / name)
    work = root / "vae"
    (work / "results").mkdir(parents=True)
    shutil.copy(script, work / "main.py")
    return work


def run_examples(work: Path, budget: float, seed: int) -> dict:
    """Runs the script until the budget is spent; returns its last test loss inside the budget."""
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-u", "main.py", "--epochs", "100000", "--seed", str(seed)], cwd=work,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    curve: list[tuple[float, float]] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            elapsed = time.monotonic() - start
            if elapsed > budget:
                break
            match = TEST_LOSS.search(line)
            if match:
                curve.append((round(elapsed, 1), float(match.group(1))))
                print(f"examples: epoch {len(curve)} test loss {curve[-1][1]:.2f} at {elapsed:.0f} s", file=sys.stderr)
    finally:
        proc.kill()
        proc.wait()
    if not curve:
        sys.exit(f"pytorch/examples finished no epoch in {budget:g} s")
    return {"epochs": len(curve), "seconds": curve[-1][0], "test_elbo": -curve[-1][1], "curve": curve}


def run_genai(root: Path, budget: float, seed: int, iw_samples: int) -> dict:
    run = root / "genai-vae"
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "genai_cli", "train", "--model", "vae", "--data", "fashion-mnist",
                    "--max-time", f"{budget:g}s", "--likelihood", "bernoulli", "--seed", str(seed), "--out", str(run), "-q"], check=True)
    seconds = time.monotonic() - start
    proc = subprocess.run([sys.executable, "-m", "genai_cli", "eval", "-c", str(run), "--metrics", "nll",
                           "--iw-samples", str(iw_samples), "--json", "-q"], stdout=subprocess.PIPE, check=True)
    metrics = json.loads(proc.stdout)["metrics"]
    info = json.loads(subprocess.run([sys.executable, "-m", "genai_cli", "info", str(run), "--json"],
                                     stdout=subprocess.PIPE, check=True).stdout)
    train = info["config"]["train"]
    return {"seconds": round(seconds, 1), "steps": info["step"], "images": info["step"] * train["batch_size"],
            "test_elbo": metrics["elbo"], "test_nll": metrics["nll"], "test_nll_standard_prior": metrics.get("nll_standard_prior"),
            "iw_samples": iw_samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=Path, default=os.environ.get("PYTORCH_EXAMPLES_VAE"),
                        help="pytorch/examples' vae/main.py (default: $PYTORCH_EXAMPLES_VAE)")
    parser.add_argument("--budget", type=float, action="append", help="seconds per side; repeatable (default 300)")
    parser.add_argument("--seed", type=int, default=1, help="both sides (the examples script's own default is 1)")
    parser.add_argument("--iw-samples", type=int, default=64)
    args = parser.parse_args()
    if args.examples is None or not Path(args.examples).is_file():
        sys.exit("pass --examples PATH/TO/pytorch-examples/vae/main.py (or set PYTORCH_EXAMPLES_VAE): it is not vendored")
    raw = fashion_mnist_raw(Path(os.environ.get("GENAI_DATA_DIR") or SHARED_DATA))
    os.environ.setdefault("GENAI_DATA_DIR", str(raw.parents[1]))
    for budget in args.budget or [300.0]:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            examples = run_examples(examples_folder(Path(args.examples), raw, root), budget, args.seed)
            genai = run_genai(root, budget, args.seed, args.iw_samples)
        print(json.dumps({"budget_s": budget, "seed": args.seed, "examples": examples, "genai": genai}), flush=True)


if __name__ == "__main__":
    main()
