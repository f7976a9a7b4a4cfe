"""`--keep best`: model.safetensors holds the best-judged checkpoint, training_state the newest, and a
budget keeps the best by default where samples can be judged."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import make_idx_dataset
from safetensors.torch import load_file
from test_training import flags, metrics, read_metadata

from genai_cli import checkpoint as ckpt
from genai_cli import info, report, selection, training
from genai_cli.config import Config
from genai_cli.errors import UsageError


class ScriptedJudge:
    """Scores checkpoints from a list, in order: which checkpoint is best is up to the test."""

    def __init__(self, scores: list[float]) -> None:
        self.scores = list(scores)

    def score(self, model) -> float:
        return self.scores.pop(0)


@pytest.fixture
def judged_root(tmp_path: Path) -> Path:
    """A FashionMNIST IDX root with both splits (the judge compares samples with the test split)."""
    make_idx_dataset(tmp_path / "data", n_train=64, n_test=32, size=16)
    return tmp_path / "data"


def scripted(monkeypatch: pytest.MonkeyPatch, scores: list[float]) -> None:
    monkeypatch.setattr(selection, "make_judge", lambda config, device: ScriptedJudge(scores))


def test_keep_best_keeps_the_best_judged_checkpoint_and_resume_continues_from_the_newest(
        judged_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scripted(monkeypatch, [5.0, 3.0, 9.0, 7.0])  # steps 2, 4, 6, 8: step 4 is the best
    run = training.train(flags(judged_root, "gan", **{"train.steps": 8, "train.save_every": 2, "train.keep": "best"}),
                         out=str(tmp_path / "r"))
    model = Path(run.run_dir) / ckpt.MODEL_FILE
    assert (run.step, run.kept_step, run.kept_score) == (8, 4, 3.0)
    assert read_metadata(model)["genai.step"] == "4" and json.loads(read_metadata(model)["genai.kept"])["fid"] == 3.0
    assert ckpt.load_training_state(Path(run.run_dir)).checkpoint.step == 8
    judged = [(r["step"], r["judge"]["fid"], r["judge"]["kept"]) for r in metrics(run.run_dir) if "judge" in r]
    assert judged == [(2, 5.0, True), (4, 3.0, True), (6, 9.0, False), (8, 7.0, False)]
    assert "Kept model" in (Path(run.run_dir) / "report.html").read_text()
    assert info.describe(run.run_dir)["kept"]["fid"] == 3.0 and info.describe(str(model.parent / ckpt.STATE_FILE))["kept"] is None

    scripted(monkeypatch, [4.0, 6.0])  # worse than the kept 3.0: the resumed run must remember it
    resumed = training.train({"train.steps": 12}, resume=run.run_dir)
    assert (resumed.step, resumed.kept_step) == (12, 4) and read_metadata(model)["genai.step"] == "4"
    assert ckpt.load_training_state(Path(run.run_dir)).checkpoint.step == 12

    scripted(monkeypatch, [2.5])
    assert training.train({"train.steps": 14}, resume=run.run_dir).kept_step == 14  # a better one replaces it


def test_a_long_run_judges_at_most_judgements_checkpoints_and_only_those_replace_the_model(
        judged_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scores = [10.0] * selection.JUDGEMENTS
    scores[1] = 1.0  # the second judged checkpoint, step 6
    scripted(monkeypatch, scores)
    steps = 3 * selection.JUDGEMENTS
    run = training.train(flags(judged_root, "gan", **{"train.steps": steps, "train.save_every": 1, "train.keep": "best"}),
                         out=str(tmp_path / "r"))
    judged = [r["step"] for r in metrics(run.run_dir) if "judge" in r]
    assert judged == list(range(3, steps + 1, 3))  # every third save of ninety
    assert run.kept_step == 6 and read_metadata(Path(run.run_dir) / ckpt.MODEL_FILE)["genai.step"] == "6"


def test_the_judge_changes_nothing_that_trains(judged_root: Path, tmp_path: Path) -> None:
    """The real judge trains its classifier (seeding its own RNG) and samples at every checkpoint: the
    training state must come out bit for bit as without it, and the kept model carries its score."""
    runs = {keep: training.train(flags(judged_root, "dcgan", **{"train.steps": 4, "train.save_every": 2, "train.keep": keep}),
                                 out=str(tmp_path / keep)) for keep in ("best", "last")}
    a, b = (load_file(Path(runs[keep].run_dir) / ckpt.STATE_FILE) for keep in ("best", "last"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    kept = json.loads(read_metadata(Path(runs["best"].run_dir) / ckpt.MODEL_FILE)["genai.kept"])
    assert math.isfinite(kept["fid"]) and kept["fid"] > 0 and kept["samples"] == selection.JUDGE_SAMPLES
    assert runs["best"].kept_score == pytest.approx(kept["fid"], abs=1e-3)
    assert "genai.kept" not in read_metadata(Path(runs["last"].run_dir) / ckpt.MODEL_FILE)
    assert not any("judge" in r for r in metrics(runs["last"].run_dir))


@pytest.mark.parametrize("kind,budget,given,kept", [
    ("dcgan", 3600.0, None, "best"),  # a budget promises its best model
    ("cgan", selection.BEST_BY_DEFAULT, None, "best"),
    ("gan", 60.0, None, "last"),  # a short budget improves to its end, and judging would cost a share of it
    ("dcgan", None, None, "last"),  # --steps/--epochs: the run the user asked for
    ("vae", 3600.0, None, "last"),  # the ELBO rises to the end; its prior is fitted only then
    ("pix2pix", 3600.0, None, "last"),
    ("dcgan", 3600.0, "last", "last"),
    ("gan", None, "best", "best"),
])
def test_what_a_run_keeps(judged_root: Path, kind: str, budget: float | None, given: str | None, kept: str) -> None:
    plan = training.plan_run({**flags(judged_root, kind), "train.keep": given}, None, budget=budget)
    assert plan.config.train.keep == kept


def test_keep_best_is_refused_where_samples_cannot_be_judged(judged_root: Path, flat_folder: Path) -> None:
    with pytest.raises(UsageError, match="--keep best needs a model whose samples genai judges"):
        training.resolve({**flags(judged_root, "vae"), "train.keep": "best"})
    with pytest.raises(UsageError, match="--keep best needs labelled data"):
        training.resolve({**flags(judged_root, "gan"), "data.name": str(flat_folder), "train.keep": "best"})
    with pytest.raises(UsageError, match="--keep must be one of best, last"):
        training.resolve({**flags(judged_root, "gan"), "train.keep": "first"})


def test_a_judge_that_cannot_be_built_is_a_warning_for_a_budget_and_an_error_when_asked(tmp_path: Path, capsys) -> None:
    make_idx_dataset(tmp_path / "data", n_train=64, n_test=0, size=16)  # no test split to judge against
    config = training.plan_run(flags(tmp_path / "data", "dcgan"), None, budget=3600.0).config
    assert config.train.keep == "best"
    assert selection.try_judge(config, torch.device("cpu"), asked=False) is None
    assert config.train.keep == "last" and "warning: keeping the last model, not the best" in capsys.readouterr().err
    with pytest.raises(UsageError, match="--keep best cannot judge samples: .*test split"):
        training.train(flags(tmp_path / "data", "dcgan", **{"train.steps": 2, "train.keep": "best"}), out=str(tmp_path / "b"))


def test_a_resumed_run_never_replaces_its_kept_model_unjudged(judged_root: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    scripted(monkeypatch, [1.0])
    run = training.train(flags(judged_root, "gan", **{"train.steps": 2, "train.keep": "best"}), out=str(tmp_path / "r"))
    model = Path(run.run_dir) / ckpt.MODEL_FILE
    before = model.read_bytes()

    def no_test_split(config, device):
        raise UsageError("dataset fashion-mnist (test split) not found")

    monkeypatch.setattr(selection, "make_judge", no_test_split)
    with pytest.raises(UsageError, match="--keep best cannot judge samples"):
        training.train({"train.steps": 4}, resume=run.run_dir)
    assert model.read_bytes() == before


def test_runs_before_keep_existed_kept_their_last_model() -> None:
    assert Config.from_dict({"schema": 6, "train": {}}).train.keep == "last"


def test_the_report_of_a_judged_run_marks_the_kept_step(tmp_path: Path) -> None:
    rows = [{"step": s, "judge": {"fid": f, "features": "classifier", "samples": 2000, "kept": k}}
            for s, f, k in ((100, 50.0, True), (200, 40.0, True), (300, 60.0, False))]
    section = report.kept_section(rows, {"genai.step": "200"})
    assert "step 200" in section and "step 300" in section and section.count("<circle") >= 3
    assert report.kept_section([], {"genai.step": "200"}) == ""
