"""benchmarks/bench_crash.py with a few kills: SIGKILL never leaves an unreadable checkpoint, and
every resume continues where the surviving checkpoint stopped. Never a timing assertion."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_crash.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_crash", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_sigkill_leaves_loadable_checkpoints_and_resume_continues(capsys: pytest.CaptureFixture[str]) -> None:
    # 4 kills over two families (dcgan, vae): 6 process starts in all, the killed process of each
    # kill being the resume of the previous one; half the kills aim at a write in progress.
    code = load_bench().main(["--kills", "4", "--seed", "0", "--families", "dcgan,vae", "--max-wait", "0.5",
                              "--aim", "0.5", "--json"])
    out, err = capsys.readouterr()
    report = json.loads(out)  # exactly one JSON object on stdout
    assert "at_step" in err and "unreadable checkpoints 0" in err  # the table went to stderr
    assert report["failures"] == [], report["failures"]
    assert code == 0 and report["ok"]

    assert report["kills"] == 4
    assert report["unreadable_checkpoints"] == 0
    assert report["step_regressions"] == 0
    assert report["temp_files_mistaken_for_checkpoints"] == 0
    assert report["process_starts"] == 4 + 2  # N kills cost N + 1 starts per run
    assert report["resumes"] == report["resumes_continued"] == 4  # 2 killed resumes + 2 final ones
    for kill in report["kills_detail"]:
        assert kill["errors"] == [] and kill["state_step"] >= 1 and kill["model_step"] >= 1
        assert 0 <= kill["steps_lost"] <= 2  # a checkpoint every step: at most the step in flight is lost
        assert kill["model_step"] <= kill["state_step"]  # the state is written first, then the model
    steps = [(k["family"], k["state_step"]) for k in report["kills_detail"]]
    for family in ("dcgan", "vae"):
        mine = [s for f, s in steps if f == family]
        assert mine == sorted(mine)  # never backwards from one kill to the next
    assert [f["family"] for f in report["final"]] == ["dcgan", "vae"]
    for final in report["final"]:
        assert final["exit_code"] == 0
        assert final["reported_step"] == final["state_step"] == final["model_step"] == final["resumed_at"] + 3
        assert final["metrics_every_step_once"] and final["samples_readable"]
    # A kill mid-write leaves a temporary file; the next resume removes it, so none survive the run.
    assert report["kills_mid_write"] >= 1 and report["leftover_temp_files"] == 0
