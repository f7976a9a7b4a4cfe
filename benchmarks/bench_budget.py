"""Does `--max-time` hold? The wall time of whole `genai train` commands against their budget, with
what the budget bought.

For each model and budget: `genai train --model M --data fashion-mnist --max-time T --seed S`,
timed from the command's start to its exit (start-up, data loading, training, the family's finish,
the last save and the report), then `genai eval -c R --n N --metrics fid,pr` (classifier features,
seeds 0..N-1, against the test split). One JSON line per run on stdout.

    python benchmarks/bench_budget.py [--model vae --model cvae] [--max-time 60s] [--n 10000] [--out runs/budget]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from genai_json import genai


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help="repeatable; default vae and cvae")
    parser.add_argument("--max-time", action="append", help="repeatable; default 60s")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/budget"))
    args = parser.parse_args()
    for model in args.model or ["vae", "cvae"]:
        for budget in args.max_time or ["60s"]:
            run = args.out / f"{model}-{budget}"
            started = time.perf_counter()
            trained = genai("train", "--model", model, "--data", "fashion-mnist", "--max-time", budget,
                            "--seed", str(args.seed), "--out", str(run), "--force")
            wall = time.perf_counter() - started
            scores = genai("eval", "-c", str(run), "--n", str(args.n), "--metrics", "fid,pr")["metrics"]
            print(json.dumps({"model": model, "max_time": budget, "wall_seconds": round(wall, 1),
                              "steps": trained["step"], "images_per_sec": round(trained["images_per_sec"]),
                              "classifier_fid": round(scores["fid"], 2), "precision": round(scores["precision"], 3),
                              "recall": round(scores["recall"], 3), "command": f"genai train --model {model} --data "
                              f"fashion-mnist --max-time {budget} --seed {args.seed}"}), flush=True)


if __name__ == "__main__":
    main()
