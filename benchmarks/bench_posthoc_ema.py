"""Post-hoc moving averages of a GAN run's generator: which averaging horizon would the run have wanted?

`watch` copies the raw generator out of RUN/training_state.safetensors each time training saves it
(every --save-every steps; it looks every 3 s, so saves closer than that are missed) while `genai train` runs; `rebuild` turns those snapshots into model
files of other averages, each with standing BatchNorm statistics as training gives its saved model:
genai's own moving average (decay min(d, (1+t)/(10+t)), rebuilt as a check of the method) and the
power-function averages of Karras et al. 2024 (EDM2), profile over the steps so far proportional to
t^gamma, named by their relative width sigma_rel. Score each with `genai eval -c FILE`. Results:
benchmarks/RESULTS.md, "The moving average's horizon, chosen after the run".

    genai train --model dcgan --data fashion-mnist --steps 109473 --seed 0 --out R &
    python benchmarks/bench_posthoc_ema.py watch R SNAPS      # ends when R/model.safetensors says the run is done
    python benchmarks/bench_posthoc_ema.py rebuild SNAPS R OUT [--last-step N] [--sigma 0.05 0.09 ...]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from scipy.optimize import brentq

from genai_cli import checkpoint as ckpt
from genai_cli.objectives.base import standing_statistics

PREFIX = "model.generator."


def watch(run: Path, snapshots: Path, poll: float = 3.0) -> None:
    """One file per saved step, g-STEP.safetensors, holding the generator's raw weights and buffers."""
    snapshots.mkdir(parents=True, exist_ok=True)
    state, seen = run / ckpt.STATE_FILE, None
    while True:
        if state.exists() and state.stat().st_mtime != seen:
            seen = state.stat().st_mtime  # saves are atomic renames: a file seen is a whole one
            with safe_open(str(state), "pt") as f:
                step = int((f.metadata() or {})["genai.step"])
                weights = {k.removeprefix("model."): f.get_tensor(k) for k in f.keys() if k.startswith(PREFIX)}
            save_file(weights, str(snapshots / f"g-{step:07d}.safetensors"))
            print(f"snapshot at step {step}", flush=True)
            planned = ckpt.load_file(run / ckpt.MODEL_FILE).config.train.steps if (run / ckpt.MODEL_FILE).exists() else None
            if planned is not None and step >= planned:
                return
        time.sleep(poll)


def genai_average(decay: float, steps: int) -> np.ndarray:
    """Each step's weight in genai's moving average after `steps` updates (objectives.base.EMA)."""
    d = np.minimum(decay, (1 + np.arange(1, steps + 1)) / (10 + np.arange(1, steps + 1)))
    kept_after = np.concatenate([np.exp(np.cumsum(np.log(d[::-1]))[::-1][1:]), [1.0]])  # product of d over later steps
    return (1 - d) * kept_after


def power_average(sigma_rel: float, steps: int) -> np.ndarray:
    """EDM2's power profile t^gamma, gamma chosen so the average's relative width is sigma_rel (below 1/sqrt(12))."""
    gamma = brentq(lambda g: math.sqrt((g + 1) / ((g + 2) ** 2 * (g + 3))) - sigma_rel, 1e-3, 1e4)
    w = (np.arange(1, steps + 1) / steps) ** gamma
    return w / w.sum()


def save_generator(model, config, weights: dict[str, torch.Tensor], path: Path, step: int) -> None:
    """`model` (an unconditional GAN) with G's parameters from `weights`, saved with standing statistics
    measured on its own samples, as training saves its model file."""
    generator = model.generator
    with torch.no_grad():
        for key, p in generator.named_parameters():
            p.copy_(weights[key])
    latent = lambda draws, n: (torch.randn(n, model.latent_dim, generator=draws), None)  # noqa: E731
    measured = standing_statistics(generator, latent, model.config.image_size or 1)
    ckpt.save_model(path, type(model)(model.config, measured, model.discriminator), config, step, 0, "cpu")


def rebuild(snapshots: Path, run: Path, out: Path, last_step: int | None, sigmas: list[float]) -> None:
    taken = [(int(f.stem[2:]), f) for f in sorted(snapshots.glob("g-*.safetensors"))]
    taken = [(step, f) for step, f in taken if last_step is None or step <= last_step]
    steps, files = np.array([step for step, _ in taken]), [f for _, f in taken]
    total = int(steps[-1])
    model, loaded = ckpt.load_model(str(run), torch.device("cpu"))
    profiles = {"genai": genai_average(loaded.config.train.ema or 0.0, total)}
    profiles |= {f"sigma{s:g}": power_average(s, total) for s in sigmas}
    nearest = np.abs(np.arange(1, total + 1)[:, None] - steps[None, :]).argmin(1)  # each step's weight to its nearest snapshot
    snaps = [load_file(f) for f in files]
    out.mkdir(parents=True, exist_ok=True)
    for name, weights in profiles.items():
        share = np.bincount(nearest, weights=weights, minlength=len(steps))
        share /= share.sum()
        averaged = {key: sum(float(c) * s[f"generator.{key}"].float() for c, s in zip(share, snaps) if c > 1e-9)
                    for key, _ in model.generator.named_parameters()}
        save_generator(model, loaded.config, averaged, out / f"{name}.safetensors", total)
        print(f"{name}: share of the last 10% of steps {weights[int(0.9 * total):].sum():.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("watch")
    w.add_argument("run", type=Path)
    w.add_argument("snapshots", type=Path)
    r = sub.add_parser("rebuild")
    r.add_argument("snapshots", type=Path)
    r.add_argument("run", type=Path)
    r.add_argument("out", type=Path)
    r.add_argument("--last-step", type=int)
    r.add_argument("--sigma", type=float, nargs="*", default=[0.05, 0.07, 0.09, 0.11, 0.13, 0.16, 0.2])
    args = parser.parse_args()
    if args.command == "watch":
        watch(args.run, args.snapshots)
    else:
        rebuild(args.snapshots, args.run, args.out, args.last_step, args.sigma)


if __name__ == "__main__":
    main()
