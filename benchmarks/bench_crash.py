"""Crash safety of `genai train` under SIGKILL: checkpoints stay loadable and resume continues.

Builds a tiny Fashion-MNIST (IDX files, torchvision's raw layout) in a temporary folder, starts

    python -m genai_cli train --model dcgan --data fashion-mnist --data-dir D --width 8
        --batch-size 16 --save-every 1 --sample-every 2 --log-every 1 --steps LARGE --out RUN -q

in a subprocess, waits until it has written a checkpoint, then a random time drawn from a seeded
RNG, and sends SIGKILL. With --save-every 1 a checkpoint is written every step, yet writes take a
small share of a step, so few purely random kills land inside one; an --aim share of the kills
(drawn from the same RNG) therefore wait on after the random time, spinning on the directory
listing, and strike the moment a temporary file appears. After each kill it checks that

  * model.safetensors and training_state.safetensors load (genai_cli.checkpoint's own loaders),
    and no temporary file is taken for a checkpoint (the run directory's *.safetensors are exactly
    those two files, and the model path resolved from the run directory is model.safetensors);
  * the step recorded in both files never goes backwards from one kill to the next;
  * how many steps the kill cost: the step of the last metrics.jsonl line at kill time minus the
    step of the surviving training state (what --resume restarts from);
  * whether the kill landed mid-write: a `.<name>.XXXXXXXX.tmp` file (fileio.atomic_write's temporary)
    appeared that the killed process never got to rename or remove. Such files are left behind
    for good; they are counted and reported.

Then it resumes with `genai train --resume RUN --steps LARGE`, and that process is the next one
killed, so N kills cost N + 1 process starts per run. After the last kill a final
`--resume RUN --steps S+3` (S: the surviving step) must exit 0 and reach step S+3, leaving a
metrics.jsonl with every step exactly once and readable sample grids. The kills are spread over
the model families of --families, one run directory each (two families: two more process starts).

A table goes to stderr and, with --json, one JSON object to stdout. Exit status 0 when every
checkpoint loaded, no step went backwards, every resume continued and every final resume
reached its step; 1 otherwise.

    python benchmarks/bench_crash.py [--kills 25] [--seed 0] [--families dcgan,vae]
        [--max-wait 1.0] [--aim 0.5] [--keep DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from idx import write_idx  # noqa: E402  (the tests' IDX writer; benchmarks run as scripts)

LARGE_STEPS = 1_000_000
START_TIMEOUT_S = 180.0  # a process start is a few seconds; generous for a loaded machine
FINAL_TIMEOUT_S = 300.0
TRAIN_FLAGS = ["--data", "fashion-mnist", "--width", "8", "--batch-size", "16", "--save-every", "1",
               "--sample-every", "2", "--log-every", "1"]


# ---------------------------------------------------------------- a tiny dataset


def make_dataset(root: Path, n_train: int = 64, size: int = 28, seed: int = 0) -> Path:
    """`<root>/FashionMNIST/raw/` with a train split of random images, labels 0..9 in turn."""
    rng = np.random.default_rng(seed)
    raw = root / "FashionMNIST" / "raw"
    write_idx(raw / "train-images-idx3-ubyte", rng.integers(0, 256, (n_train, size, size), dtype=np.uint8))
    write_idx(raw / "train-labels-idx1-ubyte", (np.arange(n_train) % 10).astype(np.uint8))
    return root


# ---------------------------------------------------------------- looking at a run directory


def state_step(run: Path) -> int | None:
    """The step in training_state.safetensors' header, or None while there is none (cheap: header only)."""
    from genai_cli import checkpoint as ckpt
    from genai_cli.errors import CheckpointError

    try:
        return int(ckpt.read_metadata(run / ckpt.STATE_FILE, ckpt.ROLE_STATE)["genai.step"])
    except (CheckpointError, KeyError, ValueError):
        return None


def metrics_steps(run: Path) -> list[int]:
    """Steps of metrics.jsonl's whole lines (a torn last line is skipped, as genai's readers do)."""
    path = run / "metrics.jsonl"
    steps = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                steps.append(int(json.loads(line)["step"]))
            except (ValueError, KeyError, TypeError):
                continue
    return steps


def temp_files(run: Path, cwd: Path) -> set[Path]:
    """fileio.atomic_write's temporaries (`.<name>.XXXXXXXX.tmp`) under the run directory, and
    runs/.latest.PID.tmp links in the working directory."""
    found = set(run.rglob(".*.tmp")) if run.exists() else set()
    runs = cwd / "runs"
    return found | (set(runs.glob(".*.tmp")) if runs.exists() else set())


def temp_target(tmp: Path) -> str:
    """The file a temporary was going to become: `.model.safetensors.ab12cd34.tmp` -> model.safetensors."""
    stem = tmp.name.removeprefix(".").removesuffix(".tmp").rsplit(".", 1)[0]
    if tmp.parent.name == "runs" and stem == "latest":
        return "runs/latest"
    if tmp.parent.name == "samples":
        return "samples/*.png"
    return stem


@dataclass
class Loaded:
    """What the checkpoints of a run directory say right after a kill."""

    state_step: int | None = None
    model_step: int | None = None
    errors: list[str] = field(default_factory=list)
    mistaken: list[str] = field(default_factory=list)  # temporaries a loader or glob would take for a checkpoint


def check_checkpoints(run: Path) -> Loaded:
    """Load both files with genai's own loaders, as `--resume` and `genai sample` do."""
    import torch

    from genai_cli import checkpoint as ckpt
    from genai_cli import rundir

    out = Loaded()
    try:
        out.state_step = ckpt.load_training_state(run).checkpoint.step
    except Exception as err:  # any failure to load is the finding
        out.errors.append(f"{ckpt.STATE_FILE}: {type(err).__name__}: {err}")
    try:
        _, loaded = ckpt.load_model(str(run), torch.device("cpu"))
        out.model_step = loaded.step
    except Exception as err:
        out.errors.append(f"{ckpt.MODEL_FILE}: {type(err).__name__}: {err}")
    try:
        resolved = rundir.resolve_model_path(str(run))
        if resolved.resolve() != (run / ckpt.MODEL_FILE).resolve():
            out.mistaken.append(str(resolved))
    except Exception as err:
        out.errors.append(f"resolve_model_path: {type(err).__name__}: {err}")
    out.mistaken += sorted(p.name for p in run.glob("*.safetensors") if p.name not in (ckpt.MODEL_FILE, ckpt.STATE_FILE))
    return out


# ---------------------------------------------------------------- processes


@dataclass
class Kill:
    family: str
    index: int  # 1-based, over all kills
    process: str  # "start" or "resume"
    waited_s: float
    aimed: bool  # after the wait, killed the moment a temporary file appeared
    write_seen: bool | None  # aimed: whether one appeared within 3 s
    kill_step: int  # last metrics.jsonl step when the process died
    state_step: int | None
    model_step: int | None
    steps_lost: int | None
    mid_write: list[str]  # what the killed process was writing (from the temporaries it left)
    errors: list[str]


class Chain:
    """One run directory of one model family: a start, N kills and resumes, a final resume."""

    def __init__(self, family: str, work: Path, data: Path, logs: Path) -> None:
        self.family, self.work, self.data, self.logs = family, work, data, logs
        self.run = work / f"run-{family}"
        self.starts = 0

    def env(self) -> dict[str, str]:
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        return {**os.environ, "GENAI_OFFLINE": "1", "NO_COLOR": "1", "PYTHONPATH": path}

    def popen(self, args: list[str], stdout: Any = subprocess.DEVNULL) -> tuple[subprocess.Popen, Path]:
        self.starts += 1
        log = self.logs / f"{self.family}-{self.starts:03d}.stderr"
        cmd = [sys.executable, "-m", "genai_cli", "train", *args]
        with log.open("wb") as err:
            proc = subprocess.Popen(cmd, cwd=self.work, env=self.env(), stdout=stdout, stderr=err)
        return proc, log

    def start(self) -> tuple[subprocess.Popen, Path]:
        return self.popen(["--model", self.family, "--data-dir", str(self.data), *TRAIN_FLAGS,
                           "--steps", str(LARGE_STEPS), "--out", str(self.run), "-q"])

    def resume(self, steps: int, stdout: Any = subprocess.DEVNULL) -> tuple[subprocess.Popen, Path]:
        return self.popen(["--resume", str(self.run), "--steps", str(steps), "-q", "--json"], stdout=stdout)

    def wait_for_checkpoint_past(self, proc: subprocess.Popen, log: Path, step: int) -> str | None:
        """Poll until training_state.safetensors holds a step above `step`; an error text if the process died."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            current = state_step(self.run)
            if current is not None and current > step:
                return None
            if proc.poll() is not None:
                return f"exited {proc.returncode} before a checkpoint past step {step}: {tail(log)}"
            if time.monotonic() > deadline:
                return f"no checkpoint past step {step} within {START_TIMEOUT_S:.0f} s: {tail(log)}"
            time.sleep(0.02)


def wait_for_write(run: Path, leftovers: set[Path], proc: subprocess.Popen, timeout: float = 3.0) -> bool:
    """Spin until a temporary file of a write in progress shows up (then the caller kills at once).

    True when one was seen; the kill may still land just after its rename."""
    old = {p.name for p in leftovers}
    folders = [run, run / "samples"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for folder in folders:
            try:
                with os.scandir(folder) as entries:
                    if any(e.name.endswith(".tmp") and e.name not in old for e in entries):
                        return True
            except OSError:
                continue
    return False


def tail(log: Path, lines: int = 5) -> str:
    text = log.read_text(encoding="utf-8", errors="replace").strip().splitlines() if log.exists() else []
    return " | ".join(text[-lines:]) or "(no stderr)"


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


# ---------------------------------------------------------------- the benchmark


def run_chain(chain: Chain, kills: int, first_index: int, rng: random.Random, max_wait: float, aim: float,
              report: dict[str, Any]) -> None:
    """Start, then `kills` times: wait for a fresh checkpoint, sleep, SIGKILL, check, resume."""
    cwd = chain.work
    leftovers = temp_files(chain.run, cwd)
    proc, log = chain.start()
    kind, resume_from = "start", 0
    prev_state = prev_model = 0
    try:
        for k in range(kills):
            problem = chain.wait_for_checkpoint_past(proc, log, resume_from)
            if kind == "resume":
                report["resumes_continued"] += problem is None
            if problem is not None:
                report["failures"].append(f"{chain.family} {kind} #{chain.starts}: {problem}")
                return
            waited, aimed = rng.uniform(0.0, max_wait), rng.random() < aim
            time.sleep(waited)
            seen = wait_for_write(chain.run, leftovers, proc) if aimed else None
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            if proc.returncode != -signal.SIGKILL:  # it ended on its own before the signal landed
                report["failures"].append(f"{chain.family} {kind} #{chain.starts}: exited {proc.returncode} "
                                          f"before SIGKILL: {tail(log)}")
                return
            now = temp_files(chain.run, cwd)
            new, leftovers = now - leftovers, now
            kill_step = max(metrics_steps(chain.run), default=0)
            loaded = check_checkpoints(chain.run)
            errors = list(loaded.errors)
            if loaded.mistaken:
                report["temp_files_mistaken_for_checkpoints"] += len(loaded.mistaken)
                errors.append(f"taken for a checkpoint: {loaded.mistaken}")
            if loaded.state_step is not None and loaded.state_step < prev_state:
                errors.append(f"training state went back from step {prev_state} to {loaded.state_step}")
                report["step_regressions"] += 1
            if loaded.model_step is not None and loaded.model_step < prev_model:
                errors.append(f"model file went back from step {prev_model} to {loaded.model_step}")
                report["step_regressions"] += 1
            prev_state = loaded.state_step if loaded.state_step is not None else prev_state
            prev_model = loaded.model_step if loaded.model_step is not None else prev_model
            report["unreadable_checkpoints"] += len(loaded.errors)
            lost = kill_step - loaded.state_step if loaded.state_step is not None else None
            report["kills_detail"].append(asdict(Kill(
                chain.family, first_index + k, kind, round(waited, 3), aimed, seen, kill_step, loaded.state_step,
                loaded.model_step, lost, sorted(temp_target(p) for p in new), errors)))
            if loaded.state_step is None:
                report["failures"].append(f"{chain.family}: no loadable training state after kill {first_index + k}")
                return
            resume_from = loaded.state_step
            if k + 1 < kills:
                proc, log = chain.resume(LARGE_STEPS)
                kind = "resume"
                report["resumes"] += 1
        final_resume(chain, resume_from, report)
    finally:
        stop(proc)


def final_resume(chain: Chain, step: int, report: dict[str, Any]) -> None:
    """`--resume RUN --steps S+3` must exit 0 at S+3 with a consistent run directory."""
    target = step + 3
    out_path = chain.logs / f"{chain.family}-final.json"
    with out_path.open("wb") as out:
        proc, log = chain.resume(target, stdout=out)
        report["resumes"] += 1
        try:
            code = proc.wait(timeout=FINAL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            stop(proc)
            code = None
    try:
        result = json.loads(out_path.read_text(encoding="utf-8"))
    except ValueError:
        result = {}
    loaded = check_checkpoints(chain.run)
    steps = metrics_steps(chain.run)
    samples_ok = all(readable_png(p) for p in (chain.run / "samples").glob("step_*.png"))
    final = {
        "family": chain.family, "resumed_at": step, "target": target, "exit_code": code,
        "reported_step": result.get("step"), "state_step": loaded.state_step, "model_step": loaded.model_step,
        "metrics_every_step_once": steps == list(range(1, target + 1)), "samples_readable": samples_ok,
        "process_starts": chain.starts,
    }
    final["ok"] = (code == 0 and final["reported_step"] == target == loaded.state_step == loaded.model_step
                   and not loaded.errors and final["metrics_every_step_once"] and samples_ok)
    report["resumes_continued"] += bool(code == 0 and loaded.state_step == target)
    report["unreadable_checkpoints"] += len(loaded.errors)
    report["final"].append(final)
    if not final["ok"]:
        report["failures"].append(f"{chain.family} final resume: {final} {loaded.errors} {tail(log)}")


def readable_png(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
        return True
    except Exception:
        return False


def split_kills(kills: int, families: list[str]) -> list[tuple[str, int]]:
    """Kills spread over the families as evenly as possible, first families first."""
    base, extra = divmod(kills, len(families))
    return [(f, base + (i < extra)) for i, f in enumerate(families) if base + (i < extra) > 0]


def run_benchmark(kills: int, seed: int, families: list[str], max_wait: float, aim: float = 0.5,
                  keep: Path | None = None) -> dict[str, Any]:
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="genai-crash-")) if keep is None else keep
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    data = make_dataset(work / "data", seed=seed)
    report: dict[str, Any] = {
        "kills": 0, "kills_mid_write": 0, "mid_write_files": {}, "resumes": 0, "resumes_continued": 0,
        "unreadable_checkpoints": 0, "step_regressions": 0, "temp_files_mistaken_for_checkpoints": 0,
        "kills_detail": [], "final": [], "failures": [],
    }
    started = time.perf_counter()
    chains = []
    try:
        index = 1
        for family, n in split_kills(kills, families):
            chain = Chain(family, work, data, logs)
            chains.append(chain)
            run_chain(chain, n, index, rng, max_wait, aim, report)
            index += n
        return summarise(report, chains, work, seed, families, max_wait, aim, time.perf_counter() - started)
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)


def summarise(report: dict[str, Any], chains: list[Chain], work: Path, seed: int, families: list[str],
              max_wait: float, aim: float, seconds: float) -> dict[str, Any]:
    detail = report["kills_detail"]
    lost = [k["steps_lost"] for k in detail if k["steps_lost"] is not None]
    mid = Counter(name for k in detail for name in k["mid_write"])
    leftovers = set().union(*(temp_files(c.run, work) for c in chains))
    report.update(
        kills=len(detail),
        kills_mid_write=sum(bool(k["mid_write"]) for k in detail),
        kills_aimed=sum(k["aimed"] for k in detail),
        kills_mid_write_unaimed=sum(bool(k["mid_write"]) and not k["aimed"] for k in detail),
        mid_write_files=dict(sorted(mid.items())),
        steps_lost={"max": max(lost, default=None), "mean": round(statistics.fmean(lost), 3) if lost else None,
                    "per_kill": lost},
        model_file_behind_state=sum(1 for k in detail if k["model_step"] is not None and k["state_step"] is not None
                                    and k["model_step"] < k["state_step"]),
        leftover_temp_files=len(leftovers),
        leftover_temp_bytes=sum(p.stat().st_size for p in leftovers if p.exists()),
        leftover_temp_targets=dict(sorted(Counter(temp_target(p) for p in leftovers).items())),
        process_starts=sum(c.starts for c in chains),
        families=families, seed=seed, max_wait_s=max_wait, aim=aim, seconds=round(seconds, 1),
    )
    report["ok"] = (not report["failures"] and report["unreadable_checkpoints"] == 0 and report["step_regressions"] == 0
                    and report["temp_files_mistaken_for_checkpoints"] == 0
                    and report["resumes_continued"] == report["resumes"] and all(f["ok"] for f in report["final"]))
    order = ["ok", "kills", "kills_mid_write", "kills_aimed", "kills_mid_write_unaimed", "mid_write_files", "resumes", "resumes_continued",
             "unreadable_checkpoints", "step_regressions", "temp_files_mistaken_for_checkpoints", "steps_lost",
             "model_file_behind_state", "leftover_temp_files", "leftover_temp_bytes", "leftover_temp_targets",
             "process_starts", "families", "seed", "max_wait_s", "aim", "seconds", "final", "failures", "kills_detail"]
    return {k: report[k] for k in order}


def print_table(report: dict[str, Any]) -> None:
    err = sys.stderr
    print(f"{'kill':>4} {'family':<6} {'process':<7} {'wait_s':>6} {'aimed':>5} {'at_step':>7} {'state':>5} {'model':>5} "
          f"{'lost':>4}  mid-write", file=err)
    for k in report["kills_detail"]:
        cells = [k["state_step"], k["model_step"], k["steps_lost"]]
        state, model, lost = ("-" if v is None else v for v in cells)
        print(f"{k['index']:>4} {k['family']:<6} {k['process']:<7} {k['waited_s']:>6.3f} {'yes' if k['aimed'] else 'no':>5} {k['kill_step']:>7} "
              f"{state:>5} {model:>5} {lost:>4}  {', '.join(k['mid_write']) or '-'}"
              + (f"  ERROR {k['errors']}" if k["errors"] else ""), file=err)
    for f in report["final"]:
        print(f"final {f['family']}: resume at {f['resumed_at']} -> --steps {f['target']}: exit {f['exit_code']}, "
              f"step {f['state_step']}, metrics ok {f['metrics_every_step_once']}, "
              f"samples ok {f['samples_readable']}", file=err)
    lost = report["steps_lost"]
    print(f"kills {report['kills']} ({report['kills_aimed']} aimed at writes), mid-write {report['kills_mid_write']} "
          f"({report['kills_mid_write_unaimed']} unaimed) {report['mid_write_files']}, "
          f"resumes {report['resumes_continued']}/{report['resumes']} continued, "
          f"unreadable checkpoints {report['unreadable_checkpoints']}, step regressions {report['step_regressions']}, "
          f"steps lost max {lost['max']} mean {lost['mean']}, leftover temp files {report['leftover_temp_files']} "
          f"({report['leftover_temp_bytes']} bytes), process starts {report['process_starts']}, "
          f"{report['seconds']} s", file=err)
    for failure in report["failures"]:
        print(f"FAILURE: {failure}", file=err)
    print("OK" if report["ok"] else "NOT OK", file=err)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=25, help="SIGKILLs in all (default 25)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times and the dataset")
    parser.add_argument("--families", default="dcgan,vae", help="model families, one run each (default dcgan,vae)")
    parser.add_argument("--max-wait", type=float, default=1.0,
                        help="a kill comes uniformly 0..this many seconds after the process's first checkpoint")
    parser.add_argument("--aim", type=float, default=0.5,
                        help="share of kills that, after the wait, strike the moment a temporary file appears (default 0.5)")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (run directories, logs)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args(argv)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    if args.kills < 1 or not families or args.max_wait < 0 or not 0 <= args.aim <= 1:
        parser.error("--kills must be at least 1, --families non-empty, --max-wait not negative, --aim in 0..1")
    report = run_benchmark(args.kills, args.seed, families, args.max_wait, args.aim, args.keep)
    print_table(report)
    if args.json:
        print(json.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
