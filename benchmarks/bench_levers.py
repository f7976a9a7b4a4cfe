"""Ablation of training levers at a fixed budget: what each one does to sample quality.

Each variant is `genai train --model M --data fashion-mnist --max-time BUDGET [its flags]`
(the budget plans the run's length, so every variant gets the same time) or, with `--images N`,
`--steps N/batch` (the same images for every variant, whatever else shares the CPU), then
`genai eval` of its checkpoint: classifier features by default (minutes), Inception with
`--inception` (Protocol A: 10k generated images against the Fashion-MNIST test statistics in
`--ref-stats`). One JSON line per variant goes to OUT/levers.jsonl and stdout.

    python benchmarks/bench_levers.py --model dcgan --budget 60s \\
        --variant base= --variant b64="--batch-size 64" --variant lr1e-3="--lr 1e-3"
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

from genai_json import genai

from genai_cli.models import MODELS

SHARED = Path(__file__).resolve().parents[2] / "shared"


def run_variant(name: str, flags: str, args: argparse.Namespace) -> dict:
    run = args.out / f"{args.model}-{name}"
    flag_list = shlex.split(flags)
    if args.images:
        batch = int(flag_list[flag_list.index("--batch-size") + 1]) if "--batch-size" in flag_list else MODELS.get(args.model).batch_size
        length = ["--steps", str(args.images // batch)]
    else:
        length = ["--max-time", args.budget]
    started = time.perf_counter()
    trained = genai("train", "--model", args.model, "--data", "fashion-mnist", *length,
                    "--out", str(run), "--force", "--seed", str(args.seed), *flag_list)
    seconds = time.perf_counter() - started
    evaluation = ["--features", "inception", "--ref-stats", str(args.ref_stats)] if args.inception else []
    scored = genai("eval", "--checkpoint", str(run), "--n", str(args.n), *evaluation)
    return {"variant": name, "flags": flags, "model": args.model, "budget": f"{args.images} images" if args.images else args.budget,
            "seed": args.seed,
            "steps": trained["step"], "images_seen": trained["step"] * json.loads((run / "config.json").read_text())["train"]["batch_size"],
            "train_seconds": round(seconds, 1), "images_per_sec": round(trained["images_per_sec"]),
            "features": "inception" if args.inception else "classifier", "n": args.n,
            "metrics": {k: scored["metrics"].get(k) for k in ("fid", "kid", "precision", "recall", "acc_mean")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dcgan")
    parser.add_argument("--budget", default="60s", help="--max-time of every variant")
    parser.add_argument("--variant", action="append", required=True, help='NAME="FLAGS" (FLAGS may be empty)')
    parser.add_argument("--images", type=int, help="train on this many images instead of --budget's time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=10_000, help="generated images per eval")
    parser.add_argument("--inception", action="store_true", help="Protocol A instead of classifier features")
    parser.add_argument("--ref-stats", type=Path, default=SHARED / "stats" / "fashion-mnist-test-inception-2015-12-05.npz")
    parser.add_argument("--out", type=Path, default=Path("runs/levers"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for spec in args.variant:
        name, _, flags = spec.partition("=")
        row = run_variant(name, flags, args)
        line = json.dumps(row)
        print(line, flush=True)
        with (args.out / "levers.jsonl").open("a") as handle:
            handle.write(line + "\n")


if __name__ == "__main__":
    main()
