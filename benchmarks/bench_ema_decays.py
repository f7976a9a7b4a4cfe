"""Several moving averages of one unconditional GAN run's generator, side by side: which `--ema` would the run have wanted?

Runs `genai train ARGS` with extra averages of G kept beside the run's own. An average does not feed
back into training, so each is what `--ema D` would have given from the same steps. At each --at
step every average (the run's own too) and the raw G are written as OUT/DECAY-STEP.safetensors
(raw-STEP for the raw G): model files of the run's config with standing statistics, as training
saves its own. Score each with `genai eval -c FILE`. Results: benchmarks/RESULTS.md, "The moving
average's decay over an hour" (DCGAN) and "The MLP GAN's moving average over the hour".

    python benchmarks/bench_ema_decays.py OUT --decays 0.998 0.9995 0.9999 --at 15600 125000 -- \\
        train --model gan --data fashion-mnist --steps 125000 --seed 0 --out R
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from bench_posthoc_ema import save_generator  # this folder: scripts run from it
from safetensors.torch import load_file, save_file

from genai_cli import checkpoint as ckpt
from genai_cli.objectives import adversarial, base


def keep_averages(out: Path, decays: list[float], at: set[int]) -> None:
    """Make the adversarial objective's EMA one that also keeps `decays` and dumps G's weights at `at`."""

    class SideBySide(base.EMA):
        def __init__(self, module: torch.nn.Module, decay: float) -> None:
            super().__init__(module, decay)
            self.extras = [base.EMA(module, d) for d in decays]

        def update(self, module: torch.nn.Module) -> None:
            super().update(module)
            for extra in self.extras:
                extra.update(module)
            if self.updates in at:
                for name, weights in [(f"{e.decay:g}", e.shadow) for e in [self, *self.extras]] + [("raw", module)]:
                    state = {k: v.detach().float().clone() for k, v in weights.state_dict().items()}
                    save_file(state, str(out / f"{name}-{self.updates:07d}.raw.safetensors"))

    adversarial.EMA = SideBySide


def to_model_files(out: Path, run: Path) -> None:
    """Each dumped generator as a model file of `run`, with BatchNorm statistics measured on its own samples."""
    model, loaded = ckpt.load_model(str(run), torch.device("cpu"))
    for dump in sorted(out.glob("*.raw.safetensors")):
        step = int(dump.name.split(".raw")[0].rsplit("-", 1)[1])
        target = out / dump.name.replace(".raw.safetensors", ".safetensors")
        save_generator(model, loaded.config, load_file(dump), target, step)
        dump.unlink()
        print(target, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--decays", type=float, nargs="+", required=True)
    parser.add_argument("--at", type=int, nargs="+", required=True, help="steps at which to write every average")
    split = sys.argv.index("--") if "--" in sys.argv else len(sys.argv)
    args, command = parser.parse_args(sys.argv[1:split]), sys.argv[split + 1:]
    if command[:1] != ["train"] or "--out" not in command:
        parser.error("give the training command after --: train ... --out RUN")
    run = Path(command[command.index("--out") + 1])
    args.out.mkdir(parents=True, exist_ok=True)
    keep_averages(args.out, args.decays, set(args.at))
    from genai_cli.cli import main as genai

    sys.argv = ["genai", *command]
    try:
        genai()
    except SystemExit as done:
        if done.code:
            raise
    to_model_files(args.out, run)


if __name__ == "__main__":
    main()
