"""--precision: bf16 mixed precision where the device computes it natively, what it changes in a step,
and that every family trains and resumes bit for bit under it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_training import as_older_schema, bars_root, flags, resumes_bit_for_bit_with  # noqa: F401  (bars_root is a fixture)

from genai_cli import checkpoint as ckpt
from genai_cli import runtime, training
from genai_cli.errors import UsageError
from genai_cli.models import MODELS
from genai_cli.objectives import make_objective


@pytest.mark.parametrize("native", [True, False])
def test_the_default_is_bf16_on_cuda_and_on_cpus_that_compute_it_natively(monkeypatch, native: bool) -> None:
    monkeypatch.setattr(runtime, "_native_cpu_bf16", lambda: native)
    assert runtime.resolve_precision(None, torch.device("cpu")) == ("bf16" if native else "fp32")
    assert runtime.resolve_precision(None, torch.device("cuda")) == "bf16"
    assert runtime.resolve_precision(None, torch.device("mps")) == "fp32"
    assert runtime.resolve_precision("fp32", torch.device("cuda")) == "fp32"  # asked for: kept
    assert runtime.resolve_precision("bf16", torch.device("cpu")) == "bf16"  # emulated without native support: slower, same maths


def test_a_precision_the_device_cannot_run_is_refused() -> None:
    with pytest.raises(UsageError, match="use --precision fp32"):
        runtime.resolve_precision("bf16", torch.device("mps"))
    with pytest.raises(UsageError, match="--precision must be one of bf16, fp32"):
        runtime.resolve_precision("fp16", torch.device("cpu"))


def conv_output_dtypes(root: Path, kind: str, precision: str) -> set[torch.dtype]:
    """The dtypes D's first convolution returns during one training step."""
    plan = training.plan_run(flags(root, kind, **{"train.precision": precision}), None)
    model = training.build_model(plan, torch.device("cpu"))
    objective = make_objective(model, plan.config.train, torch.device("cpu"))
    conv = next(m for m in model.discriminator.modules() if isinstance(m, torch.nn.Conv2d))
    seen: set[torch.dtype] = set()
    conv.register_forward_hook(lambda module, args, out: seen.add(out.dtype))
    losses = objective.step(torch.rand(16, 1, 16, 16) * 2 - 1, None)
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())  # losses stay float32
    assert all(p.dtype == torch.float32 for p in model.parameters())  # and so do the weights
    return seen


def test_bf16_runs_the_convolutions_in_bfloat16_and_fp32_does_not(bars_root: Path) -> None:  # noqa: F811
    assert conv_output_dtypes(bars_root, "dcgan", "bf16") == {torch.bfloat16}
    assert conv_output_dtypes(bars_root, "dcgan", "fp32") == {torch.float32}


@pytest.mark.parametrize("kind", MODELS.names())
def test_every_family_trains_under_bf16_and_resumes_bit_for_bit(bars_root: Path, tmp_path: Path, kind: str) -> None:  # noqa: F811
    """Against the same steps in float32 (flags' default here): bf16 changes the numbers, and a resumed
    bf16 run ends exactly where one straight run does."""
    # No warm-up: pix2pix fixes its end from the first length it is given, which differs between the two runs.
    setting = {"train.precision": "bf16", "train.warmup": 0.0}
    resumed, _ = resumes_bit_for_bit_with(bars_root, tmp_path, kind, setting, steps=4, split=2)
    assert resumed["precision"] == "bf16"


@pytest.mark.parametrize("native", [True, False])
def test_runs_from_before_schema_13_choose_their_precision_where_they_resume(bars_root: Path, tmp_path: Path,  # noqa: F811
                                                                            monkeypatch, native: bool) -> None:
    """bf16 had been CUDA's alone, so an older CPU run trained in float32; resumed, it takes today's choice."""
    run = Path(training.train(flags(bars_root, "dcgan", **{"train.steps": 2}), out=str(tmp_path / "r")).run_dir)
    as_older_schema(run, 12, "train", "precision")
    assert ckpt.load_training_state(run).checkpoint.config.train.precision is None
    monkeypatch.setattr(runtime, "_native_cpu_bf16", lambda: native)
    assert training.train({"train.steps": 3}, resume=str(run)).step == 3
    assert ckpt.load_training_state(run).checkpoint.config.train.precision == ("bf16" if native else "fp32")


def test_a_resume_may_change_the_precision_as_it_may_the_device(bars_root: Path, tmp_path: Path) -> None:  # noqa: F811
    """A bf16 run moved to a device without bf16 (MPS) must be able to go on in float32."""
    run = training.train(flags(bars_root, "dcgan", **{"train.steps": 2, "train.precision": "bf16"}), out=str(tmp_path / "r")).run_dir
    assert training.train({"train.steps": 3, "train.precision": "fp32"}, resume=run).step == 3
    assert ckpt.load_training_state(Path(run)).checkpoint.config.train.precision == "fp32"
