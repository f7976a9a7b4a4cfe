"""`genai eval`: how close generated images are to the data, on published-comparable terms.

The engine gathers two image sets (generated or given, and a real reference split),
turns both into features with one extractor, computes the asked metrics, states the
protocol next to the numbers, and checks `--fail-if` gates. Real-data features are cached
per dataset, split, count, image shape and extractor weights.
"""

from __future__ import annotations

import functools
import json
import math
import operator
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from genai_cli import checkpoint as ckpt
from genai_cli import features as feats
from genai_cli import metrics, rundir, sampling
from genai_cli.console import json_safe
from genai_cli.data import ImageSource, load_dataset
from genai_cli.errors import UsageError
from genai_cli.fileio import append_line
from genai_cli.models import GenerativeModel, VariationalModel
from genai_cli.runtime import pick_device, seed_everything

DISTRIBUTION_METRICS = ("fid", "kid", "is", "pr", "dc")
ALL_METRICS = (*DISTRIBUTION_METRICS, "acc", "nll")
GATE_METRICS = ("fid", "kid", "is", "precision", "recall", "density", "coverage", "acc", "acc_ratio_min",
                "intra_fid", "elbo", "nll", "recon_mse")
GATE = re.compile(r"^\s*([a-z_]+)\s*(<=|>=|<|>|==)\s*(-?[0-9.eE+-]+)\s*$")
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq,
}


@dataclass
class EvalRequest:
    checkpoint: str | None = None
    n: int = 10_000
    metrics: list[str] | None = None  # None: every metric that applies
    features: str = "classifier"
    inception_weights: str | None = None
    real: bool = False  # score the train split against the reference split (the floor)
    images: str | None = None  # score a folder of images instead of a model
    data: str | None = None
    data_dir: str | None = None
    split: str = "test"
    seed: int = 0
    device: str = "auto"
    iw_samples: int = 64
    gates: list[str] = field(default_factory=list)


@dataclass
class Gate:
    metric: str
    op: str
    threshold: float

    def fails(self, value: float) -> bool:
        return OPERATORS[self.op](value, self.threshold)

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.threshold:g}"


def parse_gate(text: str) -> Gate:
    match = GATE.match(text)
    if not match:
        raise UsageError(f"--fail-if {text!r} is not a gate; write e.g. \"fid>30\" or \"acc<0.9\"")
    if match[1] not in GATE_METRICS:
        raise UsageError(f"--fail-if {text!r}: unknown metric {match[1]!r}; choose from: {', '.join(GATE_METRICS)}")
    return Gate(match[1], match[2], float(match[3]))


@dataclass
class Candidates:
    """The images being judged and what is known about them."""

    images: torch.Tensor  # uint8 N×C×H×W
    labels: torch.Tensor | None  # asked-for classes (conditional models) or true labels
    description: str
    model: GenerativeModel | None = None


# ---------------------------------------------------------------- the engine


def run_eval(req: EvalRequest) -> dict[str, Any]:
    gates = [parse_gate(g) for g in req.gates]
    if req.n < 2:
        raise UsageError(f"--n must be at least 2 to estimate statistics, got {req.n}")
    if req.features not in ("classifier", "inception"):
        raise UsageError(f"--features must be 'classifier' or 'inception', got {req.features!r}")
    device = pick_device(req.device)
    seed_everything(req.seed)  # the VAE bounds sample latents
    started = time.perf_counter()
    model, loaded = (None, None) if req.real or req.images else ckpt.load_model(req.checkpoint, device)
    dataset, data_dir, shape = reference_facts(req, loaded)
    reference = load_dataset(dataset, data_dir=data_dir, split=req.split, channels=shape[0], image_size=shape[1])
    candidates = gather_candidates(req, model, dataset, data_dir, shape, device)
    asked = choose_metrics(req, model)
    extractor, classifier_info = make_extractor(req.features, req.inception_weights, dataset, data_dir, shape, device)
    n_real = min(req.n, len(reference))
    real_images = reference.all_images()[:n_real]
    key = feats.features_key(dataset, req.split, real_images, extractor)
    real_f, _ = feats.cached_features(key, real_images, extractor, progress=f"{extractor.name} features of {dataset} {req.split}")
    fake_f, fake_logits = candidate_features(req, candidates, dataset, extractor)
    results = distribution_metrics(asked, real_f, fake_f, fake_logits, extractor)
    if "acc" in asked:
        results |= conditional_metrics(candidates, reference, n_real, real_f, fake_f, dataset, data_dir, shape, device)
    if "nll" in asked:
        results |= vae_metrics(model, reference.all_images()[:n_real], reference.all_labels(), req.iw_samples, device)
    protocol = {
        "extractor": extractor.name, "weights": extractor.weights, "weights_sha256": extractor.weights_sha256,
        "preprocess": extractor.protocol, "candidates": candidates.description, "n_generated": len(candidates.images),
        "reference": f"{dataset} {req.split}", "n_real": n_real, "seed": req.seed,
        "kid": "100 subsets of 1000, poly kernel", "pr_k": 3, "dc_k": 5, "is_splits": 10,
    }
    if classifier_info:
        protocol["classifier_test_accuracy"] = classifier_info["test_accuracy"]
    verdicts = check_gates(gates, results)
    result = {
        "checkpoint": str(loaded.path) if loaded else None, "metrics": results, "protocol": protocol,
        "gates": verdicts, "passed": all(v["passed"] for v in verdicts), "seconds": round(time.perf_counter() - started, 1),
    }
    if loaded is not None:
        append_line(loaded.path.parent / rundir.METRICS_FILE, json.dumps(json_safe({"step": loaded.step, "eval": result})))
    return result


def reference_facts(req: EvalRequest, loaded: ckpt.Checkpoint | None) -> tuple[str, str | None, tuple[int, int]]:
    """Dataset name, data root and (channels, size) that the comparison happens at."""
    if loaded is not None:
        data = loaded.config.data
        model = loaded.config.model
        assert model.channels and model.image_size
        return req.data or data.name, req.data_dir or data.data_dir, (model.channels, model.image_size)
    if not req.data:
        raise UsageError("--real and --images need --data NAME to know the reference dataset")
    probe = load_dataset(req.data, data_dir=req.data_dir, split=req.split)
    return req.data, req.data_dir, (probe.channels, probe.image_size)


def gather_candidates(req: EvalRequest, model: GenerativeModel | None, dataset: str, data_dir: str | None,
                      shape: tuple[int, int], device: torch.device) -> Candidates:
    if req.real:
        train = load_dataset(dataset, data_dir=data_dir, split="train", channels=shape[0], image_size=shape[1])
        n = min(req.n, len(train))
        return Candidates(train.all_images()[:n], _first(train.all_labels(), n), f"{dataset} train (first {n})")
    if req.images:
        folder = load_dataset(req.images, channels=shape[0], image_size=shape[1])
        return Candidates(folder.all_images()[: req.n], None, f"images in {req.images}")
    assert model is not None
    seeds = list(range(req.seed, req.seed + req.n))
    labels = torch.arange(req.n) % model.config.num_classes if model.conditional else None
    images = sampling.generate(model, sampling.latents(seeds, model.latent_dim), labels, device)
    return Candidates(images, labels, f"{req.n} samples of {model.config.kind} (seeds {seeds[0]}-{seeds[-1]})", model)


def candidate_features(req: EvalRequest, candidates: Candidates, dataset: str,
                       extractor: feats.Extractor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Features of the judged images; a real split's are cached like the reference's."""
    progress = f"{extractor.name} features of {candidates.description}"
    if req.real:
        key = feats.features_key(dataset, "train", candidates.images, extractor)
        return feats.cached_features(key, candidates.images, extractor, progress)
    return extractor(candidates.images, progress=progress)


def _first(labels: torch.Tensor | None, n: int) -> torch.Tensor | None:
    return labels[:n] if labels is not None else None


def choose_metrics(req: EvalRequest, model: GenerativeModel | None) -> list[str]:
    applicable = list(DISTRIBUTION_METRICS)
    if model is not None and model.conditional:
        applicable.append("acc")
    if isinstance(model, VariationalModel):
        applicable.append("nll")
    if req.metrics is None:
        return applicable
    for name in req.metrics:
        if name not in ALL_METRICS:
            raise UsageError(f"unknown metric {name!r}; choose from: {', '.join(ALL_METRICS)}")
        if name not in applicable:
            raise UsageError(f"metric {name!r} does not apply here ({'acc needs a conditional model' if name == 'acc' else 'nll needs a VAE'})")
    return req.metrics


def make_extractor(kind: str, inception_weights: str | None, dataset: str, data_dir: str | None,
                   shape: tuple[int, int], device: torch.device) -> tuple[feats.Extractor, dict | None]:
    if kind == "inception":
        return feats.load_inception(inception_weights, device), None
    return load_judge(dataset, data_dir, shape, device)


@functools.lru_cache(maxsize=4)  # one eval asks for it twice: as extractor and as judge of classes
def load_judge(dataset: str, data_dir: str | None, shape: tuple[int, int],
               device: torch.device) -> tuple[feats.Extractor, dict]:
    """genai's classifier for this dataset, trained on its train split on first use."""
    train, test = (load_dataset(dataset, data_dir=data_dir, split=split, channels=shape[0], image_size=shape[1])
                   for split in ("train", "test"))
    train_y, test_y = train.all_labels(), test.all_labels()
    if train_y is None or test_y is None:
        raise UsageError(f"--features classifier needs a labelled dataset; {dataset} has no classes: use --features inception")
    splits = (train.all_images(), train_y, test.all_images(), test_y)
    return feats.load_classifier(dataset, device, len(train.classes), splits)


# ---------------------------------------------------------------- metric groups


def distribution_metrics(asked: list[str], real: torch.Tensor, fake: torch.Tensor,
                         fake_logits: torch.Tensor | None, extractor: feats.Extractor) -> dict[str, float]:
    out: dict[str, float] = {}
    if "fid" in asked:
        out["fid"] = metrics.fid(real, fake)
    if "kid" in asked:
        out["kid"], out["kid_std"] = metrics.kid(real, fake)
    if "is" in asked:
        if fake_logits is None:
            out["is"] = math.nan  # this network file has no classifier head
        else:
            out["is"], out["is_std"] = metrics.inception_score(fake_logits)
    if "pr" in asked:
        out["precision"], out["recall"] = metrics.precision_recall(real, fake)
    if "dc" in asked:
        out["density"], out["coverage"] = metrics.density_coverage(real, fake)
    return out


def conditional_metrics(candidates: Candidates, reference: ImageSource, n_real: int, real_f: torch.Tensor,
                        fake_f: torch.Tensor, dataset: str, data_dir: str | None, shape: tuple[int, int],
                        device: torch.device) -> dict[str, Any]:
    """Does each asked class come out as that class (judged by the classifier), and how well?"""
    judge, info = load_judge(dataset, data_dir, shape, device)
    _, logits = judge(candidates.images)
    assert logits is not None and candidates.labels is not None
    predicted = logits.argmax(dim=1)
    asked = candidates.labels
    num_classes = len(info["per_class_accuracy"])
    per_class = [float((predicted[asked == k] == k).float().mean()) if (asked == k).any() else math.nan
                 for k in range(num_classes)]
    ratios = [s / r for s, r in zip(per_class, info["per_class_accuracy"]) if r > 0 and not math.isnan(s)]
    real_labels = reference.all_labels()[:n_real]
    intra = [metrics.fid(real_f[real_labels == k], fake_f[asked == k]) for k in range(num_classes)
             if (real_labels == k).sum() > 1 and (asked == k).sum() > 1]
    return {
        "acc": float((predicted == asked).float().mean()),
        "acc_per_class": per_class,
        "acc_ratio_min": min(ratios, default=math.nan),  # worst class: sample accuracy / real accuracy
        "classifier_acc_per_class": info["per_class_accuracy"],
        "intra_fid": sum(intra) / len(intra) if intra else math.nan,
    }


@torch.no_grad()
def vae_metrics(model: VariationalModel, images: torch.Tensor, labels: torch.Tensor | None, k: int,
                device: torch.device, batch: int = 100) -> dict[str, float]:
    """Test-set ELBO and the importance-weighted bound on -log p(x) (Burda et al. 2016), in nats
    per image, with the Bernoulli decoder on [0, 1] intensities; plus reconstruction MSE."""
    model.eval()
    elbo_sum = iw_sum = mse_sum = 0.0
    for start in range(0, len(images), batch):
        x = images[start : start + batch].to(device).float() / 255
        y = labels[start : start + batch].to(device) if model.conditional and labels is not None else None
        mu, logvar = model.encoder(x * 2 - 1, y)
        std = torch.exp(0.5 * logvar)
        log_w = []
        for _ in range(k):
            z = mu + std * torch.randn_like(std)
            log_px = -F.binary_cross_entropy_with_logits(model.decode_logits(z, y), x, reduction="none").flatten(1).sum(1)
            log_pz = torch.distributions.Normal(0, 1).log_prob(z).sum(1)
            log_qz = torch.distributions.Normal(mu, std).log_prob(z).sum(1)
            log_w.append(log_px + log_pz - log_qz)
        stacked = torch.stack(log_w)
        elbo_sum += float(stacked.mean(0).sum())
        iw_sum += float((torch.logsumexp(stacked, 0) - math.log(k)).sum())
        recon = torch.sigmoid(model.decode_logits(mu, y))
        mse_sum += float(((recon - x) ** 2).flatten(1).mean(1).sum())
    n = len(images)
    return {"elbo": elbo_sum / n, "nll": -iw_sum / n, "recon_mse": mse_sum / n, "iw_samples": k}


def check_gates(gates: list[Gate], results: dict[str, Any]) -> list[dict[str, Any]]:
    verdicts = []
    for gate in gates:
        value = results.get(gate.metric)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            names = ", ".join(k for k, v in results.items() if isinstance(v, float))
            raise UsageError(f"--fail-if {gate}: metric {gate.metric!r} was not computed; computed: {names}")
        verdicts.append({"gate": str(gate), "value": value, "passed": not gate.fails(value)})
    return verdicts
