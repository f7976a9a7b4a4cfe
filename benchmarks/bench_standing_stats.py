"""Standing BatchNorm statistics: what measuring G's statistics afresh does to a checkpoint's FID.

For each checkpoint, `genai eval` scores it twice: with the BatchNorm statistics its file holds,
and after `objectives.base.standing_statistics` measured them on 500 of G's own inputs (as
training now does at every save; latents, or a pix2pix model's training inputs). A checkpoint
saved before that change holds training's running averages, so the pair is the lever's ablation
on the same weights; one saved since gives about the same number twice. One JSON line per
checkpoint goes to stdout.

    python benchmarks/bench_standing_stats.py RUN [RUN ...] [--n 10000] [--metrics fid,paired]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from genai_cli import checkpoint as ckpt
from genai_cli import pairs
from genai_cli.objectives import make_objective

SHARED = Path(__file__).resolve().parents[2] / "shared"


def genai_eval(checkpoint: Path, args: argparse.Namespace) -> dict:
    proc = subprocess.run([sys.executable, "-m", "genai_cli", "eval", "-c", str(checkpoint), "--n", str(args.n),
                           "--metrics", args.metrics, "--json", "-q"], stdout=subprocess.PIPE, check=True)
    return {k: v for k, v in json.loads(proc.stdout)["metrics"].items() if isinstance(v, float)}


def with_standing_statistics(run: str, out: Path) -> Path:
    """The checkpoint's model with G's statistics measured afresh, saved as a model file in `out`."""
    model, loaded = ckpt.load_model(run, torch.device("cpu"))
    config = loaded.config
    no_average = dataclasses.replace(config.train, ema=0.0)  # the file's G is already the averaged one
    objective = make_objective(model, no_average, torch.device("cpu"))
    data = config.data
    source = pairs.load_like(config, data.name, data.data_dir, "train") if model.translates else None
    path = out / f"{Path(run).name}-standing.safetensors"
    ckpt.save_model(path, objective.sampling_model(source), config, loaded.step, 0, "cpu")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories or model files")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--metrics", default="fid")
    parser.add_argument("--out", type=Path, default=Path("runs/standing-bench"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("GENAI_DATA_DIR", str(SHARED / "data"))
    for run in args.runs:
        measured = with_standing_statistics(run, args.out)
        row = {"checkpoint": run, "n": args.n, "in_file": genai_eval(Path(run), args), "standing": genai_eval(measured, args)}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
