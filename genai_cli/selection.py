"""Which model a run ends with: `--keep last`, or `--keep best` by the judge's FID at each checkpoint.

A GAN's samples need not improve to the end of a run: the MLP GAN on Fashion-MNIST scores
classifier FID 49 after 1M images and 99 after an hour, as it drops classes (benchmarks/RESULTS.md).
A `--max-time` budget promises its best model, so where a family's samples can be judged, up to
`JUDGEMENTS` checkpoints a run score the model users would sample (`JUDGE_SAMPLES` seeded samples,
genai's classifier features, against the test split) and model.safetensors is replaced only by a
better one; its metadata holds the score. training_state.safetensors always holds the newest step, so `--resume`
continues the run, not the kept model. The judge never draws from the global RNGs, so a run trains
bit for bit the same with either choice.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from genai_cli import checkpoint as ckpt
from genai_cli import console, metrics
from genai_cli import features as feats
from genai_cli.config import Config
from genai_cli.errors import CheckpointError, GenaiError, UsageError
from genai_cli.models import GenerativeModel

KEEPS = ("best", "last")
JUDGE_SAMPLES = 2000  # enough to rank checkpoints (FID at 2,000 is biased upward, alike for each): 2-3 s on 1 CPU thread
JUDGEMENTS = 30  # checkpoints judged at most per run: about 2% of an hour on this 2-core CPU
# Budgets from this long keep the best by default. Shorter ones improve to their end in every family
# measured (the MLP GAN peaks near 1M images, about 11 minutes here), and the judge's fixed costs (its
# classifier's one-time training, ~3 min; 2-3 s a score) would take a visible share of them.
BEST_BY_DEFAULT = 600.0
JUDGE_REFERENCE = 10_000  # real images of the reference split, features cached once per dataset


@dataclass
class Judge:
    """Scores a sampling model: classifier FID of seeded samples against the reference split."""

    extractor: feats.Extractor
    reference: metrics.Statistics
    device: torch.device

    def score(self, model: GenerativeModel) -> float:
        from genai_cli.evaluation import seeded_samples  # evaluation builds on checkpoints and training's modules

        images, _ = seeded_samples(model, 0, JUDGE_SAMPLES, self.device)  # the same latents at every checkpoint
        features, _ = self.extractor(images)
        return metrics.fid(self.reference, features)


def check_keep(keep: str | None, judged: bool, why_not: str) -> None:
    """`--keep` is best or last, and best only where samples can be judged (`why_not` says why not)."""
    if keep is not None and keep not in KEEPS:
        raise UsageError(f"--keep must be one of {', '.join(KEEPS)}, got {keep!r}")
    if keep == "best" and not judged:
        raise UsageError(f"--keep best needs {why_not}; use --keep last")


def make_judge(config: Config, device: torch.device) -> Judge:
    """genai's classifier for the run's dataset (trained and cached on first use, as `genai eval` does)
    and the statistics of the reference split's first JUDGE_REFERENCE images. The global RNGs are left
    as they were: the classifier's training seeds its own."""
    from genai_cli.data import load_dataset
    from genai_cli.evaluation import load_judge, split_features

    data, model = config.data, config.model
    assert model.channels and model.image_size
    shape = (model.channels, model.image_size)
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if device.type == "cuda" else []):
        extractor, _ = load_judge(data.name, data.data_dir, shape, device)
        reference = load_dataset(data.name, data_dir=data.data_dir, split="test", channels=shape[0], image_size=shape[1])
        features = split_features(reference, data.name, "test", JUDGE_REFERENCE, extractor)
    return Judge(extractor, metrics.Statistics(*metrics.mean_cov(features), len(features)), device)


def try_judge(config: Config, device: torch.device, asked: bool) -> Judge | None:
    """The judge of a `--keep best` run; if it cannot be built (no test split, say), an error when
    best was asked for (or is a resumed run's), else a warning and the last model is kept."""
    try:
        return make_judge(config, device)
    except GenaiError as err:
        if asked:
            raise UsageError(f"--keep best cannot judge samples: {err}; use --keep last") from err
        console.warn(f"keeping the last model, not the best: samples cannot be judged ({err})")
        config.train.keep = "last"
        return None


def judgement(score: float) -> dict[str, object]:
    """What the judge said, as metrics.jsonl and the kept model's metadata record it."""
    return {"fid": round(score, 4), "features": "classifier", "samples": JUDGE_SAMPLES}


def kept_metadata(score: float) -> dict[str, str]:
    return {ckpt.KEPT_KEY: json.dumps(judgement(score))}


def kept_in(path: Path) -> tuple[int | None, float]:
    """(step, judged score) of the model a resumed run kept; score inf when the file holds none (it
    was kept as the last, or is missing or damaged): any judged model replaces it."""
    try:
        metadata = ckpt.read_metadata(path)  # the header alone: the weights are not needed
        step = int(metadata.get("genai.step", 0))
    except (CheckpointError, ValueError):
        return None, math.inf
    judged = ckpt.kept_judgement(metadata)
    return (step, float(judged["fid"])) if judged else (None, math.inf)
