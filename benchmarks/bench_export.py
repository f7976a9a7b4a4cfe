"""What `genai export` costs and delivers, per model family and format, on this CPU.

For every family it trains a real-sized model (default width 64, Fashion-MNIST 28x28) for a
few steps through `genai train`'s engine, or takes the run directories given with
--checkpoint, then exports it to ONNX, pt2 and safetensors folders (float32, float16,
bfloat16) with the parity check on, and times generation at one batch size: onnxruntime
(ONNX), the torch.export program (pt2) and PyTorch eager (the genai model itself). Prints a
table on stderr and one JSON object on stdout. Throughput is the best of several interleaved
rounds after warm-up (the least disturbed by other load on a shared machine). Needs the export extra (pip install -e '.[export]').

    python benchmarks/bench_export.py [--families gan,dcgan] [--steps 20] [--batch 64] [--checkpoint RUN_DIR ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import onnxruntime
import torch
from bench_train import data_dir

from genai_cli import checkpoint as ckpt
from genai_cli import console, export, training
from genai_cli.errors import ExportCheckFailed

VARIANTS = {  # table row -> (format, dtype)
    "onnx": ("onnx", "float32"),
    "pt2": ("pt2", "float32"),
    "safetensors": ("safetensors", "float32"),
    "safetensors-f16": ("safetensors", "float16"),
    "safetensors-bf16": ("safetensors", "bfloat16"),
}


def train_tiny_but_real(kind: str, steps: int, root: str | None, out: Path) -> str:
    """A default-width model after a few optimisation steps: real weights, real BatchNorm statistics."""
    flags = {"model.kind": kind, "data.data_dir": root, "train.steps": steps, "train.batch_size": 64,
             "train.log_every": steps, "train.sample_every": 10 * steps, "train.save_every": 10 * steps}
    return training.train(flags, out=str(out / kind)).run_dir


def images_per_sec(runners: dict[str, Callable[..., object]], inputs: tuple[torch.Tensor, ...], rounds: int,
                   repeats: int = 10) -> dict[str, float]:
    """Best images/s of `rounds` rounds per runner, rounds interleaved so that load from other
    processes on a shared CPU hits every runner alike rather than whichever ran at that moment."""
    batch = inputs[0].shape[0]
    for run in runners.values():
        for _ in range(3):  # warm-up: allocator, kernel selection, ORT's first-run planning
            run(*inputs)
    best = dict.fromkeys(runners, 0.0)
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            for _ in range(repeats):
                run(*inputs)
            best[name] = max(best[name], repeats * batch / (time.perf_counter() - start))
    return {name: round(speed, 1) for name, speed in best.items()}


@torch.no_grad()
def bench_checkpoint(run_dir: str, work: Path, batch: int, rounds: int) -> tuple[str, dict, float]:
    """(kind, {row: figures}, eager images/s) for one trained model."""
    model, _ = ckpt.load_model(run_dir, torch.device("cpu"))
    kind = model.config.kind
    rows, runners = {}, {"eager": export.exported_module(model)}
    for row, (fmt, dtype) in VARIANTS.items():
        out = work / f"{kind}-{row}" / ("generator." + fmt if fmt != "safetensors" else "slim")
        request = export.ExportRequest(out=str(out), format=fmt, checkpoint=run_dir, dtype=dtype, check=True)
        try:
            result = export.run_export(request)
        except ExportCheckFailed as err:  # reported in the table, not fatal: the point is to measure
            result = err.result
        diffs = list(result["max_abs_diff"].values())
        rows[row] = {"bytes": result["bytes"], "export_seconds": result["seconds"],
                     "max_abs_diff": None if None in diffs else max(diffs), "tolerance": result["tolerance"],
                     "passed": result["passed"], "images_per_sec": None}
        if result["passed"] and fmt in ("onnx", "pt2"):
            runners[row] = export.RUNNERS[fmt](out)
    speeds = images_per_sec(runners, export.example_inputs(model, batch), rounds)
    for row in runners.keys() - {"eager"}:
        rows[row]["images_per_sec"] = speeds[row]
    return kind, rows, speeds["eager"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="gan,dcgan,cgan,vae,cvae")
    parser.add_argument("--steps", type=int, default=20, help="training steps per family before exporting")
    parser.add_argument("--batch", type=int, default=64, help="batch size for the throughput columns")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--checkpoint", action="append", default=[], help="a run directory to export instead of training (repeatable)")
    args = parser.parse_args()
    console.configure(quiet=True)
    run_dirs = [str(Path(c).resolve()) for c in args.checkpoint]
    work = Path(tempfile.mkdtemp(prefix="genai-bench-export-"))
    os.chdir(work)  # training points ./runs/latest at its run: keep that out of the checkout
    if not run_dirs:
        root = data_dir()
        run_dirs = [train_tiny_but_real(kind, args.steps, root, work / "runs") for kind in args.families.split(",")]
    results, eager = {}, {}
    for run_dir in run_dirs:
        kind, rows, eager[kind] = bench_checkpoint(run_dir, work / "exports", args.batch, args.rounds)
        results[kind] = rows
    header = f"{'family':<7} {'format':<17} {'MB':>6} {'export s':>9} {'max|diff|':>10} {'img/s':>9} {'eager img/s':>12}"
    print(header + f"   (batch {args.batch}, {torch.get_num_threads()} threads)", file=sys.stderr)
    for kind, rows in results.items():
        for row, r in rows.items():
            speed = f"{r['images_per_sec']:>9.0f}" if r["images_per_sec"] is not None else f"{'-':>9}"
            diff = ("nan" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.2g}") + ("" if r["passed"] else " FAIL")
            print(f"{kind:<7} {row:<17} {r['bytes'] / 1e6:>6.2f} {r['export_seconds']:>9.2f} {diff:>10} "
                  f"{speed} {eager[kind]:>12.0f}", file=sys.stderr)
    print(json.dumps({"results": results, "eager_images_per_sec": eager, "batch": args.batch,
                      "threads": torch.get_num_threads(), "torch": torch.__version__,
                      "onnxruntime": onnxruntime.__version__, "checkpoints": run_dirs}))


if __name__ == "__main__":
    main()
