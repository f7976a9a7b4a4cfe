"""Learning-rate schedules and --max-time budgets: the run plans its length, the rate ends at zero
inside it, and a stopped run resumes onto the same curve bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import FakeClock, budget_plans
from safetensors.torch import load_file
from test_training import as_older_schema, bars_root, flags  # noqa: F401  (bars_root is a fixture)

from genai_cli import checkpoint as ckpt
from genai_cli import training
from genai_cli.config import SCHEMA_VERSION, Config
from genai_cli.errors import UsageError
from genai_cli.models import MODELS
from genai_cli.objectives import lr_factor


@pytest.mark.parametrize("step,total,start,factor", [
    (0, 10, 0.5, 1.0), (4, 10, 0.5, 1.0), (5, 10, 0.5, 1.0), (6, 10, 0.5, 0.8), (9, 10, 0.5, 0.2),
    (0, 10, 0.0, 1.0), (5, 10, 0.0, 0.5), (9, 10, 1.0, 1.0), (10**6, 10, 1.0, 1.0),
])
def test_lr_factor_is_flat_then_linear_to_zero(step: int, total: int, start: float, factor: float) -> None:
    assert lr_factor(step, total, start) == pytest.approx(factor)


def final_lrs(run_dir: str) -> list[float]:
    state = ckpt.load_training_state(Path(run_dir))
    return [group["lr"] for opt in state.optimizers.values() for group in opt["param_groups"]]


def test_the_rate_decays_over_the_runs_tail(bars_root: Path, tmp_path: Path) -> None:  # noqa: F811
    run = training.train(flags(bars_root, "dcgan", **{"train.steps": 8, "train.lr_decay_start": 0.5, "train.lr": 2e-4}),
                         out=str(tmp_path / "r"))
    assert final_lrs(run.run_dir) == pytest.approx([2e-4 * 0.25] * 2)  # the last step (index 7) ran at (8-7)/(8-4)
    constant = training.train(flags(bars_root, "dcgan", **{"train.steps": 8, "train.lr": 2e-4}), out=str(tmp_path / "c"))
    assert final_lrs(constant.run_dir) == pytest.approx([2e-4] * 2)


def test_a_stopped_scheduled_run_resumes_bit_for_bit(bars_root: Path, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    scheduled = flags(bars_root, "dcgan", **{"train.steps": 7, "train.lr_decay_start": 0.3})
    straight = training.train(scheduled, out=str(tmp_path / "straight"))
    with monkeypatch.context() as patch:  # stop at step 3 as --max-time would, the schedule still planned for 7
        patch.setattr(training.Session, "past_deadline", lambda self: self.step == 3)
        first = training.train(scheduled, out=str(tmp_path / "split"))
    assert first.step == 3 and first.max_time_reached
    resumed = training.train({}, resume=first.run_dir)
    a, b = (load_file(Path(r.run_dir) / ckpt.STATE_FILE) for r in (straight, resumed))
    assert resumed.step == 7 and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("rng")), [k for k in a if not torch.equal(a[k], b[k])]


def test_max_time_alone_plans_the_length_and_ends_the_schedule_inside_it(bars_root: Path, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    """On a clock that ticks 1 ms per reading, so a busy machine cannot change what is tested."""
    monkeypatch.setattr(training.time, "monotonic", FakeClock(0.001))
    run = training.train(flags(bars_root, "dcgan", **{"train.lr_decay_start": 0.5}), out=str(tmp_path / "r"), max_time=4.0)
    planned = Config.from_json((Path(run.run_dir) / ckpt.CONFIG_FILE).read_text()).train.steps
    assert training.BUDGET_PLAN_AT <= planned < training.BUDGET_PROVISIONAL_STEPS
    assert run.step == planned and not run.max_time_reached  # the plan, not the deadline, ended it
    assert ckpt.load_training_state(Path(run.run_dir)).checkpoint.config.train.steps == planned
    base = ckpt.load_training_state(Path(run.run_dir)).checkpoint.config.train.lr
    assert max(final_lrs(run.run_dir)) < base * 2 / planned * 1.01 + 1e-12  # the last step ran near zero


def test_a_budget_that_slows_down_is_replanned_and_still_ends_by_its_plan(bars_root: Path, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    """The clock runs 1 ms a reading while the first plan is made, then 3 ms: the steps got dearer
    (grids, checkpoints, a busier machine), so the revisions shorten the plan and the schedule still ends."""
    plans = budget_plans(monkeypatch, FakeClock(0.001), then_tick=0.003)
    run = training.train(flags(bars_root, "dcgan", **{"train.lr_decay_start": 0.5}), out=str(tmp_path / "r"), max_time=2.0)
    # the plan, then a revision at 10% of it; the one at 30% would come after the shorter plan's decay began
    assert len(plans) == 2 and plans[1] < plans[0]
    assert run.step == plans[-1] and not run.max_time_reached
    assert ckpt.load_training_state(Path(run.run_dir)).checkpoint.config.train.steps == plans[-1]


def test_a_budget_that_speeds_up_late_is_replanned_to_use_it(bars_root: Path, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    """The clock runs 2 ms a reading until the third plan (the revision at 30%), then 1 ms: another job
    on the machine ended. A constant-rate run keeps revising, each time from the speed since the last
    plan, so it trains on for the time it now has instead of stopping at the length planned while slow."""
    clock = FakeClock(0.002)
    plans = budget_plans(monkeypatch, clock)
    record = training.ckpt.save_config

    def quieter_after_the_third_plan(run_dir, config) -> None:
        record(run_dir, config)
        clock.tick = 0.001 if len(plans) >= 3 else clock.tick
    monkeypatch.setattr(training.ckpt, "save_config", quieter_after_the_third_plan)
    run = training.train(flags(bars_root, "dcgan", **{"train.lr_decay_start": 1.0}), out=str(tmp_path / "r"), max_time=2.0)
    assert len(plans) == 1 + len(training.BUDGET_REVISE) and plans == sorted(plans)
    assert plans[-1] > 1.5 * plans[2]  # about twice the steps fit in what was left at the third plan
    assert run.step == plans[-1] and not run.max_time_reached  # the plan, not the deadline, ended it


def test_max_time_with_steps_is_only_a_deadline(bars_root: Path, tmp_path: Path) -> None:  # noqa: F811
    run = training.train(flags(bars_root, "vae", **{"train.steps": 5}), out=str(tmp_path / "r"), max_time=600.0)
    assert Config.from_json((Path(run.run_dir) / ckpt.CONFIG_FILE).read_text()).train.steps == 5


def test_version_1_configs_load_and_keep_what_their_runs_did() -> None:
    raw = Config().to_dict()
    raw["schema"] = 1
    del raw["train"]["lr_decay_start"]
    del raw["model"]["prior"]
    old = Config.from_dict(raw)
    assert old.train.lr_decay_start == 1.0 and old.model.prior == "standard"
    for schema in (0, SCHEMA_VERSION + 1, "3", True):
        with pytest.raises(ValueError, match="schema"):
            Config.from_dict({**raw, "schema": schema})


@pytest.mark.parametrize("kind,dropout", [("gan", 0.3), ("dcgan", 0.0)])
def test_runs_from_before_schema_6_keep_the_discriminator_they_trained(bars_root: Path, tmp_path: Path, kind: str,  # noqa: F811
                                                                        dropout: float) -> None:
    """An MLP GAN written before schema 6 had dropout 0.3 in D (its weights are numbered around those
    layers); it loads (as `sample` does) and resumes with it. Other families never had any."""
    run = Path(training.train(flags(bars_root, kind, **{"train.steps": 2, "model.dropout": dropout}),
                              out=str(tmp_path / "r")).run_dir)
    as_older_schema(run, 5, "model", "dropout")
    model, _ = ckpt.load_model(str(run), torch.device("cpu"))
    assert model.config.dropout == dropout
    assert any(isinstance(m, torch.nn.Dropout) for m in model.discriminator.modules()) == (dropout > 0)
    resumed = training.train({"train.steps": 4}, resume=str(run))
    assert resumed.step == 4
    assert ckpt.load_training_state(run).checkpoint.config.model.dropout == dropout


def test_a_dropout_edited_out_of_range_is_refused_before_training(bars_root: Path) -> None:  # noqa: F811
    with pytest.raises(UsageError, match=r"model\.dropout must be in \[0, 1\), got 5"):
        training.resolve(flags(bars_root, "gan", **{"model.dropout": 5.0}))


@pytest.mark.parametrize("kind", [name for name in MODELS.names() if MODELS.get(name).short_budget])
def test_a_short_budget_uses_the_familys_short_recipe_unless_flags_say_otherwise(bars_root: Path, kind: str) -> None:  # noqa: F811
    seconds, recipe = MODELS.get(kind).short_budget

    def chosen(config: Config) -> dict:
        return {key: getattr(getattr(config, key.split(".")[0]), key.split(".")[1]) for key in recipe}

    unset = {key: None for key in recipe}
    short = training.plan_run(flags(bars_root, kind, **unset), None, budget=seconds).config
    assert chosen(short) == recipe
    mine = training.plan_run(flags(bars_root, kind, **{**unset, "model.width": 8}), None, budget=seconds).config
    assert mine.model.width == 8  # a flag the user gave wins
    given = {"train.batch_size": 16} if "train.batch_size" in recipe else {}  # the family's 128 exceeds this dataset
    long = chosen(training.plan_run(flags(bars_root, kind, **{**unset, **given}), None, budget=seconds * 2).config)
    assert all(long[key] != value for key, value in recipe.items() if key not in given)  # a longer budget keeps the family's defaults
