"""Time to quality: DCGAN on Fashion-MNIST, genai's default recipe vs pytorch/examples' recipe.

Both recipes train genai's DCGAN (the example's architecture at 28x28) with `genai train`, in
chunks: after every --chunk images the run is resumed (bit-exact) and its checkpoint scored
with classifier-feature FID (`genai eval`, --n samples vs the test split). So each recipe gets
a curve of FID against images seen, which does not depend on how busy the machine is.
Images become seconds through training throughputs measured here in alternating rounds:

  examples  the pytorch/examples dcgan loop (bench_throughput.reference_loop: torchvision
            dataset + ToTensor/Normalize + DataLoader, per-step .item()) at its hyper-parameters:
            batch 64, Adam 2e-4 for G and D, betas (0.5, 0.999), BCE, no moving average.
            Its curve is trained by genai's engine with exactly those settings (the same update,
            as bench_throughput checks), and its time is images / the reference loop's images/s.
  examples_on_genai  the same curve (the same maths) at genai's engine throughput for that recipe:
            what a user of the example's recipe gains by switching tools.
  genai     `genai train --model dcgan` defaults (batch 32, Adam 2e-3, betas (0.5, 0.999),
            non-saturating BCE, EMA 0.9999 of G, R1 0.1, standing BatchNorm statistics, G's image
            from a 3x3 conv at full resolution) at genai's engine throughput.

Reported: both curves, the throughputs, and for each FID target the time each needed (linear
interpolation between evaluations) and the speed-up over the example. One JSON object on stdout.

    python benchmarks/bench_time_to_quality.py [--max-images 300000] [--chunk 25600] [--n 2000]
        [--targets 150,100,80] [--curves REPORT.json] [--out runs/ttq]

Training the curves is contention-proof and can run beside other work; measure the
throughputs on a quiet machine (a second call with --curves reuses the first call's curves).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from bench_throughput import fashion_mnist_root, genai_loop, normalise, reference_loop
from torchvision import datasets

from genai_cli import console, evaluation, training
from genai_cli.runtime import seed_everything

RECIPES: dict[str, dict[str, Any]] = {
    "examples": {"train.batch_size": 64, "train.lr": 2e-4, "train.lr_d": 2e-4, "train.beta1": 0.5,
                 "train.gan_loss": "bce", "train.ema": 0.0, "train.r1": 0.0,
                 "model.full_res_conv": False},  # the example's G: a transposed conv makes the image
    "genai": {},  # the defaults of `genai train --model dcgan`
}


def curve(name: str, root: str, args: argparse.Namespace) -> list[dict[str, float]]:
    """FID after every chunk of images, training one run by resuming it chunk by chunk."""
    run = Path(args.out) / name
    shutil.rmtree(run, ignore_errors=True)
    flags = {"model.kind": "dcgan", "data.name": "fashion-mnist", "data.data_dir": root,
             "train.log_every": 100, "train.sample_every": 10**9, "train.save_every": 10**9, **RECIPES[name]}
    batch = training.resolve(flags).train.batch_size
    points = []
    for images in range(args.chunk, args.max_images + 1, args.chunk):
        steps = images // batch
        if points:
            training.train({"train.steps": steps}, resume=str(run))
        else:
            training.train({**flags, "train.steps": steps}, out=str(run))
        scored = evaluation.run_eval(evaluation.EvalRequest(checkpoint=str(run), n=args.n, metrics=["fid"]))
        points.append({"images": steps * batch, "steps": steps, "fid": round(scored["metrics"]["fid"], 2)})
        print(f"{name}: {points[-1]}", file=sys.stderr, flush=True)
        if points[-1]["fid"] <= min(args.targets):
            break
    return points


def engine_loop(root: str, recipe: dict[str, Any]) -> tuple[Callable[[int], int], int]:
    """genai's engine as `genai train` runs it with a recipe's flags: (run n steps -> images, batch)."""
    plan = training.plan_run({"model.kind": "dcgan", "data.data_dir": root, **recipe}, None)
    return genai_loop(plan, plan.config.train.batch_size), plan.config.train.batch_size


def throughputs(root: str, rounds: int, images: int) -> dict[str, float]:
    """images/s, in alternating rounds of about `images` each: the example's loop at its batch,
    genai's engine on the example's recipe (the same update), and genai's engine on its defaults."""
    plan = training.plan_run({"model.kind": "dcgan", "data.data_dir": root, **RECIPES["examples"]}, None)
    seed_everything(0)
    reference_model = plan.spec.build(plan.config.model).to(plan.device)
    dataset = datasets.FashionMNIST(root, train=True, download=False, transform=normalise(1))
    loops = {"examples": (reference_loop(reference_model, dataset, 64, 2, plan.config.train, plan.device), 64),
             "examples_on_genai": engine_loop(root, RECIPES["examples"]), "genai": engine_loop(root, RECIPES["genai"])}
    for run, batch in loops.values():
        run(max(1, images // batch // 4))  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(rounds):
        for name, (run, batch) in loops.items():
            start = time.perf_counter()
            seen = run(images // batch)
            rates[name].append(seen / (time.perf_counter() - start))
    return {name: round(statistics.median(r), 1) for name, r in rates.items()}


def seconds_to(points: list[dict[str, float]], target: float, ips: float) -> float | None:
    """Training seconds until FID first reaches `target` (interpolated between evaluations)."""
    previous = {"images": 0, "fid": float("inf")}
    for point in points:
        if point["fid"] <= target:
            if previous["fid"] == float("inf"):
                return point["images"] / ips
            share = (previous["fid"] - target) / (previous["fid"] - point["fid"])
            return (previous["images"] + share * (point["images"] - previous["images"])) / ips
        previous = point
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-images", type=int, default=300_000, help="per recipe (5 epochs of Fashion-MNIST)")
    parser.add_argument("--chunk", type=int, default=25_600, help="images between evaluations")
    parser.add_argument("--n", type=int, default=2000, help="generated (and test) images per FID")
    parser.add_argument("--targets", default="150,100,80", help="classifier-FID thresholds")
    parser.add_argument("--curves", help="reuse the curves of an earlier report (JSON) instead of training")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="runs/time-to-quality")
    args = parser.parse_args(argv)
    args.targets = sorted((float(t) for t in args.targets.split(",")), reverse=True)
    root = fashion_mnist_root()
    if root is None:
        raise SystemExit("Fashion-MNIST not found: set GENAI_DATA_DIR (time to quality needs the real data)")
    console.configure(quiet=True)
    if args.curves:
        curves = json.loads(Path(args.curves).read_text())["curves"]
    else:
        curves = {name: curve(name, root, args) for name in RECIPES}
    ips = throughputs(root, args.rounds, images=6400)
    runs = {"examples": ("examples", "examples"), "examples_on_genai": ("examples", "examples_on_genai"),
            "genai": ("genai", "genai")}  # timing -> (curve, throughput)
    table = []
    for target in args.targets:
        times = {name: seconds_to(curves[curve], target, ips[rate]) for name, (curve, rate) in runs.items()}
        speedup = {name: round(times["examples"] / t, 2) if t and times["examples"] else None
                   for name, t in times.items() if name != "examples"}
        table.append({"fid": target, "seconds": {k: v and round(v, 1) for k, v in times.items()}, "speedup": speedup})
    report = {"recipes": RECIPES, "images_per_sec": ips, "n": args.n, "features": "classifier", "curves": curves,
              "time_to_fid": table, "threads": torch.get_num_threads()}
    print(f"images/s: examples loop {ips['examples']}, examples recipe on genai {ips['examples_on_genai']}, "
          f"genai defaults {ips['genai']}", file=sys.stderr)
    for row in table:
        s = row["seconds"]
        print(f"FID <= {row['fid']:g}: examples loop {s['examples']} s, examples recipe on genai {s['examples_on_genai']} s, "
              f"genai defaults {s['genai']} s; speed-up {row['speedup']}", file=sys.stderr)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
