"""benchmarks/bench_throughput.py in --quick mode: well-formed numbers, never a timing assertion."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_throughput.py"


def positive(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_quick_benchmark_reports_both_loops_for_every_row() -> None:
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--random-data", "--width", "8", "--workers", "0"],
                          capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # exactly one JSON object on stdout
    assert "ratio" in proc.stderr  # the readable table went to stderr

    assert [(r["shape"], r["batch"]) for r in report["rows"]] == [("28x28x1", 64), ("32x32x3", 64)]
    for row in report["rows"]:
        ref, gen = row["reference"], row["genai"]
        for side in (ref, gen):
            assert all(positive(side[k]) for k in ("images_per_sec", "gflop_per_image", "gflops", "share_of_matmul"))
        assert row["ratio"] == round(gen["images_per_sec"] / ref["images_per_sec"], 3)
        # Same networks and update: genai only skips D's weight gradients in the G step.
        assert 0.8 < gen["gflop_per_image"] / ref["gflop_per_image"] <= 1.0
    assert [s["shape"] for s in report["sampling"]] == ["28x28x1", "32x32x3"]
    assert all(positive(s["images_per_sec"]) for s in report["sampling"])
    assert positive(report["matmul"]["gflops"]) and positive(report["memory"]["peak_rss_mib"])
