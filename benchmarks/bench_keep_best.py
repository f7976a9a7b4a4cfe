"""`--keep best` against the last model of the same run: what a budget's judged choice buys.

Trains `genai train --model M --data fashion-mnist --max-time T --seed 0` (a budget of 10 minutes or
more keeps the best-judged checkpoint by default), rebuilds the run's last sampling model from
training_state.safetensors (its moving-average weights with standing statistics, as training saves
them), and scores both with `genai eval` (classifier features, --n samples against the test split).
One JSON line goes to stdout.

    python benchmarks/bench_keep_best.py --model gan --max-time 30m [--n 10000] [--out runs/keep-best]
    python benchmarks/bench_keep_best.py --model gan --train-args "--steps 600 --keep best" --n 2000
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
from pathlib import Path

import torch
from genai_json import genai

from genai_cli import checkpoint as ckpt
from genai_cli import training
from genai_cli.models import MODELS
from genai_cli.objectives import make_objective

SHARED = Path(__file__).resolve().parents[2] / "shared"


def last_model(run: Path) -> Path:
    """The model the run would have kept under --keep last, rebuilt from its training state."""
    state = ckpt.load_training_state(run)
    config = state.checkpoint.config
    model = MODELS.get(config.model.kind).build(config.model)
    objective = make_objective(model, config.train, torch.device("cpu"))
    training.restore(model, objective, state)
    path = run.parent / f"{run.name}-last.safetensors"
    ckpt.save_model(path, objective.sampling_model(None), config, state.checkpoint.step, int(state.checkpoint.metadata.get("genai.epoch", 0)), "cpu")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gan")
    parser.add_argument("--max-time", default="30m")
    parser.add_argument("--train-args", default="", help="flags for genai train instead of --max-time")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=Path("runs/keep-best"))
    args = parser.parse_args()
    os.environ.setdefault("GENAI_DATA_DIR", str(SHARED / "data"))
    run = args.out / args.model
    length = shlex.split(args.train_args) if args.train_args else ["--max-time", args.max_time]
    trained = genai("train", "--model", args.model, "--data", "fashion-mnist", "--seed", "0", "--out", str(run),
                    "--force", *length)
    scores = {}
    for name, path in (("kept", run / ckpt.MODEL_FILE), ("last", last_model(run))):
        result = genai("eval", "-c", str(path), "--n", str(args.n), "--metrics", "fid,pr")
        scores[name] = {"step": ckpt.load_file(path).step, **{k: result["metrics"][k] for k in ("fid", "precision", "recall")}}
    judged = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "judge" in r]
    print(json.dumps({"model": args.model, "train": length, "steps": trained["step"], "images_per_sec":
                      round(trained["images_per_sec"]), "judged": len(judged), "n": args.n, **scores}), flush=True)


if __name__ == "__main__":
    main()
