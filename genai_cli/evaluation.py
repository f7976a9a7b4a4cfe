"""`genai eval`: how close generated images are to the data, on published-comparable terms.

The engine gathers two image sets (generated or given, and a real reference split),
turns both into features with one extractor, computes the asked metrics, states the
protocol next to the numbers, and checks `--fail-if` gates. Which metrics exist, what each
computes and reports, and when it applies is one table, `METRICS`. Real-data features are
cached per dataset, split, count, image shape and extractor weights.
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

from genai_cli import checkpoint as ckpt
from genai_cli import console, metrics, pairs, resources, rundir, sampling, tboard
from genai_cli import features as feats
from genai_cli.config import Bound, check_range
from genai_cli.console import json_safe
from genai_cli.data import DATASETS, ImageSource, load_dataset
from genai_cli.errors import GenaiError, UsageError
from genai_cli.fileio import append_line
from genai_cli.models import GenerativeModel, VariationalModel
from genai_cli.objectives.elbo import log_likelihood
from genai_cli.runtime import pick_device, seed_everything

# What --ref-stats (the reference's feature mean and covariance, no features) is not enough for.
NEEDS_FEATURES = "the reference's features, which --ref-stats does not hold (only their mean and covariance)"
GATE = re.compile(r"^\s*([a-z_]+)\s*(<=|>=|<|>|==)\s*(-?[0-9.eE+-]+)\s*$")
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq,
}
MIN_N = Bound(2, math.inf)


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
    ref_stats: str | None = None  # an .npz of the reference's feature mean and covariance (pytorch-fid's layout)
    best_of: int | None = None  # cvae: candidates its classifier picks among; None: as trained


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
    try:
        threshold = float(match[3]) if match else math.nan
    except ValueError:  # "1.2.3" looks like a number to the pattern only
        threshold = math.nan
    if not match or not math.isfinite(threshold):
        raise UsageError(f"--fail-if {text!r} is not a gate; write a metric, <, <=, >, >= or == and a finite number, "
                         "e.g. \"fid>30\" or \"acc<0.9\"")
    if match[1] not in GATE_METRICS:
        raise UsageError(f"--fail-if {text!r}: unknown metric {match[1]!r}; choose from: {', '.join(GATE_METRICS)}")
    return Gate(match[1], match[2], threshold)


def check_gates_apply(gates: list[Gate], asked: list[str], unavailable: dict[str, str], scoring: str) -> None:
    """Before any work: a gate whose metric can never be computed here is a usage error, not a pass."""
    for gate in gates:
        source = GATE_SOURCES[gate.metric]
        if source in unavailable:
            raise UsageError(f"--fail-if {gate}: {gate.metric} never applies when scoring {scoring}; it needs "
                             f"{unavailable[source]}: remove the gate")
        if source not in asked:
            raise UsageError(f"--fail-if {gate}: {gate.metric} is not computed with --metrics {','.join(asked)}; "
                             f"add {source} to --metrics or remove the gate")


@dataclass
class Candidates:
    """The images being judged and what is known about them."""

    images: torch.Tensor  # uint8 N×C×H×W
    labels: torch.Tensor | None  # asked-for classes (conditional models) or true labels
    description: str


@dataclass
class Scoring:
    """What the metrics of one eval are computed from: the two image sets and, when an extractor ran,
    their features; a metric computable only in part says why in `not_computed`."""

    req: EvalRequest
    model: GenerativeModel | None
    candidates: Candidates
    reference: ImageSource | None  # None when --ref-stats stands in for it
    n_real: int
    dataset: str
    data_dir: str | None
    shape: tuple[int, int]
    device: torch.device
    real_f: torch.Tensor | metrics.Statistics | None = None
    fake_f: torch.Tensor | None = None
    fake_logits: torch.Tensor | None = None
    not_computed: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------- the engine


def run_eval(req: EvalRequest) -> dict[str, Any]:
    gates = [parse_gate(g) for g in req.gates]
    check_range("--n", req.n, MIN_N)
    check_range("--iw-samples", req.iw_samples)
    check_range("--seed", req.seed)
    check_range("--seed", req.seed + req.n - 1)  # image i uses seed + i
    if req.features not in ("classifier", "inception"):
        raise UsageError(f"--features must be 'classifier' or 'inception', got {req.features!r}")
    weights = str(feats.find_inception_weights(req.inception_weights)) if req.features == "inception" else None
    device = pick_device(req.device)
    seed_everything(req.seed)  # the VAE bounds sample latents
    started = time.perf_counter()
    model, loaded = (None, None) if req.real or req.images else ckpt.load_model(req.checkpoint, device)
    if req.best_of is not None and model is None:
        raise UsageError("--best-of picks among a model's samples; --real and --images score images as they are: drop it")
    if model is not None:
        sampling.choose_best_of(model, loaded.path, req.best_of)
    translates = model is not None and model.translates
    asked, unavailable = choose_metrics(req, model)
    unjudged = translates and req.features == "classifier" and (req.data or loaded.config.data.name) not in DATASETS
    if unjudged and req.metrics is None:  # pairs from a folder have no classes to train genai's classifier on
        asked = ["paired"]
    if req.ref_stats:
        asked, unavailable = stats_only(req, asked, unavailable)
    check_gates_apply(gates, asked, unavailable, f"a {model.config.kind}" if model else "images without a model")
    dataset, data_dir, shape = reference_facts(req, loaded)
    dim = feats.INCEPTION_DIM if req.features == "inception" else feats.CLASSIFIER_DIM
    if model is not None:  # a folder or a split holds what it holds; generated images are what --n asks for
        resources.require_memory(eval_bytes(req.n, shape, dim, model.latent_dim), f"{req.n} generated images with their features",
                                 "use a smaller --n")
    stats = feats.read_reference_stats(req.ref_stats, dim) if req.ref_stats else None
    reference = None
    if stats is None or translates or any(METRICS[m].images for m in asked):  # statistics alone stand in for features
        reference = (pairs.load_like(loaded.config, dataset, data_dir, req.split) if translates and loaded else
                     load_dataset(dataset, data_dir=data_dir, split=req.split, channels=shape[0], image_size=shape[1]))
    if {"acc", "cas"} & set(asked):
        check_classes(loaded, reference, dataset)
    candidates = gather_candidates(req, model, dataset, data_dir, shape, device, reference)
    n_real = stats.n if stats is not None else min(req.n, len(reference))
    scoring = Scoring(req, model, candidates, reference, n_real, dataset, data_dir, shape, device)
    extractor, classifier_info = None, None
    if any(METRICS[m].features for m in asked):  # the paired distances and the VAE bounds need none
        extractor, classifier_info = make_extractor(req.features, weights, dataset, data_dir, shape, device)
        scoring.real_f = stats if stats is not None else real_features(scoring, extractor)
        scoring.fake_f, scoring.fake_logits = candidate_features(req, candidates, dataset, extractor)
    elif unjudged:
        scoring.not_computed["fid"] = ("genai's classifier needs a labelled dataset, and pairs from a folder have none; "
                                       "add --features inception")
    results, how = score(asked, scoring)
    not_computed = scoring.not_computed
    if extractor is not None:
        warn_small_sets(asked, results, scoring)
    protocol = {
        "extractor": extractor and extractor.name, "weights": extractor and extractor.weights,
        "weights_sha256": extractor and extractor.weights_sha256, "preprocess": extractor and extractor.protocol,
        "candidates": candidates.description, "n_generated": len(candidates.images),
        "reference": f"statistics in {req.ref_stats}" if stats is not None else f"{dataset} {req.split}",
        "n_real": n_real or None, "seed": req.seed, **how,
    }
    if model is not None and (req.best_of is not None or sampling.picks_best_of(model)):
        protocol["best_of"] = model.config.best_of
    if classifier_info:
        protocol["classifier_test_accuracy"] = classifier_info["test_accuracy"]
    verdicts = check_gates(gates, results, not_computed)
    result = {
        "checkpoint": str(loaded.path) if loaded else None, "metrics": results, "not_computed": not_computed,
        "protocol": protocol, "gates": verdicts, "passed": all(v["passed"] for v in verdicts),
        "seconds": round(time.perf_counter() - started, 1),
    }
    if loaded is not None:
        try:
            append_line(loaded.path.parent / rundir.METRICS_FILE, json.dumps(json_safe({"step": loaded.step, "eval": result})))
            tboard.record_eval(loaded.path.parent, loaded.step, results)
        except GenaiError as err:  # the numbers are still worth printing
            console.warn(f"the result is not recorded in the run: {err}")
    return result


def eval_bytes(n: int, shape: tuple[int, int], dim: int, latent_dim: int) -> int:
    """Memory an eval of n images holds at once: both image sets (uint8), their float64 features and
    logits, and the latents; k-NN metrics work in chunks and add little."""
    channels, size = shape
    return n * (2 * channels * size * size + 2 * 2 * dim * 8 + latent_dim * 4)


def check_classes(loaded: ckpt.Checkpoint | None, reference: ImageSource, dataset: str) -> None:
    """Class-based metrics compare the class a model was asked for with the class the judge sees, by
    index: the reference must have the model's classes, or every number would be about other classes."""
    assert loaded is not None
    own = loaded.config.data.classes
    if reference.classes != own:
        raise UsageError(
            f"--data {dataset} has {len(reference.classes)} classes ({_preview(reference.classes)}) but the model was "
            f"trained on {len(own)} ({_preview(own)}); accuracy and intra-class FID need the model's classes: use its "
            "dataset, or ask only for class-free metrics with --metrics fid,kid,is,pr,dc")


def _preview(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "") if names else "none"


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
                      shape: tuple[int, int], device: torch.device, reference: ImageSource | None) -> Candidates:
    if req.real:
        train = load_dataset(dataset, data_dir=data_dir, split="train", channels=shape[0], image_size=shape[1])
        n = min(req.n, len(train))
        return Candidates(train.all_images()[:n], _first(train.all_labels(), n), f"{dataset} train (first {n})")
    if req.images:
        folder = load_dataset(req.images, channels=shape[0], image_size=shape[1])
        return Candidates(folder.all_images()[: req.n], None, f"images in {req.images}")
    assert model is not None
    if isinstance(reference, pairs.PairedSource):  # a translating model: its outputs for the split's inputs
        n = min(req.n, len(reference))
        outputs = sampling.translate(model, reference.inputs[:n], device)
        return Candidates(outputs, None, f"translations of the first {n} {reference.pairs} inputs of {dataset} "
                          f"{req.split}")
    images, labels = seeded_samples(model, req.seed, req.n, device)
    return Candidates(images, labels, f"{req.n} samples of {model.config.kind} (seeds {req.seed}-{req.seed + req.n - 1})")


def seeded_samples(model: GenerativeModel, seed: int, n: int,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """n samples, image i from seed + i; a conditional model's classes in turn (and those labels)."""
    labels = torch.arange(n) % model.config.num_classes if model.conditional else None
    return sampling.generate(model, sampling.latents(range(seed, seed + n), model.latent_dim), labels, device), labels


def real_features(s: Scoring, extractor: feats.Extractor) -> torch.Tensor:
    """Features of the reference split's first n_real images."""
    assert s.reference is not None
    return split_features(s.reference, s.dataset, s.req.split, s.n_real, extractor)


def split_features(source: ImageSource, dataset: str, split: str, n: int, extractor: feats.Extractor) -> torch.Tensor:
    """Features of a split's first n images, cached per pixels and network (also `train --keep best`'s reference)."""
    images = source.all_images()[:n]
    key = feats.features_key(dataset, split, images, extractor)
    return feats.cached_features(key, images, extractor, progress=f"{extractor.name} features of {dataset} {split}")[0]


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


def choose_metrics(req: EvalRequest, model: GenerativeModel | None) -> tuple[list[str], dict[str, str]]:
    """(the metrics to compute, what each of the others needs that this eval does not have)."""
    unavailable = {m.name: m.needs for m in METRICS.values() if not m.applies(model)}
    if req.metrics is None:
        return [name for name, m in METRICS.items() if m.default and name not in unavailable], unavailable
    for name in req.metrics:
        if name not in METRICS:
            raise UsageError(f"unknown metric {name!r}; choose from: {', '.join(METRICS)}")
        if name in unavailable:
            raise UsageError(f"metric {name!r} does not apply here ({name} needs {unavailable[name]})")
    return req.metrics, unavailable


def stats_only(req: EvalRequest, asked: list[str], unavailable: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """With --ref-stats, the metrics that need no more than the reference's mean and covariance."""
    if req.metrics is not None and (needs := [m for m in asked if not METRICS[m].stats]):
        raise UsageError(f"--metrics {','.join(needs)} need {NEEDS_FEATURES}; drop --ref-stats, or ask for "
                         f"{','.join(m.name for m in METRICS.values() if m.stats and m.name not in unavailable)}")
    without = {m.name: NEEDS_FEATURES for m in METRICS.values() if not m.stats and m.name not in unavailable}
    return [m for m in asked if METRICS[m].stats], unavailable | without


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


# ---------------------------------------------------------------- the metrics


class NotComputed(Exception):
    """A metric that applies here but that these sets cannot give (too few images, no classifier head)."""


def _sets(s: Scoring, minimum: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sets' features, when each holds `minimum` images: a covariance needs 2, a k-NN radius k+1."""
    assert s.real_f is not None and s.fake_f is not None
    if min(len(s.real_f), len(s.fake_f)) < minimum:
        raise NotComputed(f"needs at least {minimum} images in each set, got {len(s.real_f)} and {len(s.fake_f)}")
    return s.real_f, s.fake_f  # type: ignore[return-value]  # Statistics reach FID alone (the table's `stats`)


def fid(s: Scoring) -> dict[str, float]:
    return {"fid": metrics.fid(*_sets(s, 2))}


def kid(s: Scoring) -> dict[str, float]:
    return dict(zip(("kid", "kid_std"), metrics.kid(*_sets(s, 2))))


def kid_protocol(s: Scoring) -> dict[str, str]:
    """Subsets of KID_SUBSET_SIZE images, or of every image of the smaller set when it has fewer: say which."""
    assert s.real_f is not None and s.fake_f is not None
    size = min(metrics.KID_SUBSET_SIZE, len(s.real_f), len(s.fake_f))
    shrunk = f", not {metrics.KID_SUBSET_SIZE}: the smaller set has {size} images" if size < metrics.KID_SUBSET_SIZE else ""
    return {"kid": f"{metrics.KID_SUBSETS} subsets of {size}{shrunk}; poly kernel"}


def inception_score(s: Scoring) -> dict[str, float]:
    assert s.fake_f is not None
    if len(s.fake_f) < metrics.IS_SPLITS:  # one image per split at least
        raise NotComputed(f"needs at least {metrics.IS_SPLITS} images, got {len(s.fake_f)}")
    if s.fake_logits is None:
        raise NotComputed("this Inception file has no classifier head")
    return dict(zip(("is", "is_std"), metrics.inception_score(s.fake_logits)))


def precision_recall(s: Scoring) -> dict[str, float]:
    return dict(zip(("precision", "recall"), metrics.precision_recall(*_sets(s, metrics.PR_K + 1))))


def density_coverage(s: Scoring) -> dict[str, float]:
    return dict(zip(("density", "coverage"), metrics.density_coverage(*_sets(s, metrics.DC_K + 1))))


def paired(s: Scoring) -> dict[str, float]:
    """A translating model's outputs against their own targets, pixel by pixel."""
    assert s.reference is not None
    out = metrics.paired(s.candidates.images, s.reference.all_images()[: len(s.candidates.images)])
    if math.isnan(out["ssim"]):
        s.not_computed["ssim"] = f"needs images of at least {metrics.SSIM_WINDOW} px, the side of its window"
    return out


def class_metrics(s: Scoring) -> dict[str, Any]:
    """Does each asked class come out as that class (judged by the classifier), and how well? Per-class
    numbers are keyed by class name (the index, as a string, where the dataset names none)."""
    assert s.reference is not None and s.fake_f is not None and s.real_f is not None
    judge, info = load_judge(s.dataset, s.data_dir, s.shape, s.device)
    _, logits = judge(s.candidates.images)
    assert logits is not None and s.candidates.labels is not None
    predicted = logits.argmax(dim=1)
    asked = s.candidates.labels
    num_classes = len(info["per_class_accuracy"])
    per_class = [float((predicted[asked == k] == k).float().mean()) if (asked == k).any() else math.nan
                 for k in range(num_classes)]
    ratios = [a / r for a, r in zip(per_class, info["per_class_accuracy"]) if r > 0 and not math.isnan(a)]
    real_labels = s.reference.all_labels()[: s.n_real]
    from_stats = isinstance(s.real_f, metrics.Statistics)
    intra = [] if from_stats else [
        metrics.fid(s.real_f[real_labels == k], s.fake_f[asked == k]) for k in range(num_classes)
        if (real_labels == k).sum() > 1 and (asked == k).sum() > 1]
    if from_stats:
        s.not_computed["intra_fid"] = f"needs {NEEDS_FEATURES}"
    elif not intra:
        s.not_computed["intra_fid"] = (f"needs 2 or more images of one class in each set; {len(asked)} generated and "
                                       f"{s.n_real} real images over {num_classes} classes have none: use a larger --n")
    if not ratios:
        s.not_computed["acc_ratio_min"] = "the classifier recognises none of the asked classes in the real test images"
    names = class_keys(s.reference.classes, num_classes)
    return {
        "acc": float((predicted == asked).float().mean()),
        "acc_per_class": dict(zip(names, per_class)),
        "acc_ratio_min": min(ratios, default=math.nan),  # worst class: sample accuracy / real accuracy
        "classifier_acc_per_class": dict(zip(names, info["per_class_accuracy"])),
        "intra_fid": sum(intra) / len(intra) if intra else math.nan,
    }


def classification_accuracy_score(s: Scoring) -> dict[str, Any]:
    """Ravuri & Vinyals 2019: does a classifier learn the real classes from samples alone? genai's
    classifier recipe trained on as many generated images as the judge saw real ones (classes in
    turn, seeds --seed..), tested on the reference split, beside the judge (trained on the real
    train split) on the same images. Samples that look right but lack the data's variety score low."""
    assert s.model is not None and s.reference is not None
    judge, info = load_judge(s.dataset, s.data_dir, s.shape, s.device)
    n, num_classes = info["train_images"], len(info["per_class_accuracy"])
    check_range("--seed", s.req.seed + n - 1)
    console.info(f"classification accuracy score: a classifier on {n} samples of {s.model.config.kind}")
    images, labels = seeded_samples(s.model, s.req.seed, n, s.device)
    assert labels is not None
    net = feats.train_classifier(images, labels, num_classes, s.device)
    test_x, test_y = s.reference.all_images(), s.reference.all_labels()
    _, real_logits = judge(test_x)
    assert real_logits is not None and test_y is not None
    return {"cas": float((feats.predict(net, test_x, s.device) == test_y).float().mean()),
            "cas_real": float((real_logits.argmax(1) == test_y).float().mean())}


def class_keys(classes: list[str], num_classes: int) -> list[str]:
    """The dataset's class names, or "0", "1", ... where it has none (or not one each)."""
    return list(classes) if len(set(classes)) == num_classes == len(classes) else [str(k) for k in range(num_classes)]


def likelihood(s: Scoring) -> dict[str, float]:
    """The VAE bounds on the reference split's first --n images."""
    assert s.reference is not None and s.model is not None
    return vae_metrics(s.model, s.reference.all_images()[: s.req.n], _first(s.reference.all_labels(), s.req.n), s.req.iw_samples,
                       s.device)


@torch.no_grad()
def vae_metrics(model: VariationalModel, images: torch.Tensor, labels: torch.Tensor | None, k: int,
                device: torch.device, batch: int = 100) -> dict[str, float]:
    """Test-set ELBO and the importance-weighted bound on -log p(x) (Burda et al. 2016), in nats
    per image, with the decoder's likelihood (a Gaussian's: of the 8-bit pixel values; a
    Bernoulli's: on [0, 1] intensities), under the prior `genai sample` draws from; with a fitted
    prior also the bound under N(0, I) that training optimised, so a better prior is never bought
    with a worse likelihood unseen. Plus reconstruction MSE."""
    model.eval()
    fitted = model.decoder.prior
    standard = torch.distributions.Normal(0, 1)
    elbo_sum = iw_sum = iw_standard_sum = mse_sum = 0.0
    for start in range(0, len(images), batch):
        x = images[start : start + batch].to(device).float() / 255
        y = labels[start : start + batch].to(device) if model.conditional and labels is not None else None
        mu, logvar = model.encoder(x * 2 - 1, y)
        std = torch.exp(0.5 * logvar)
        sampling_prior = fitted.distribution(y) if fitted is not None else None  # p(z), or p(z | y) per row
        log_w, log_w_standard = [], []
        for _ in range(k):
            z = mu + std * torch.randn_like(std)
            log_px = log_likelihood(model, model.decode_logits(z, y), x)
            log_qz = torch.distributions.Normal(mu, std).log_prob(z).sum(1)
            log_w_standard.append(log_px + standard.log_prob(z).sum(1) - log_qz)
            log_w.append(log_px + sampling_prior.log_prob(z) - log_qz if sampling_prior is not None else log_w_standard[-1])
        stacked = torch.stack(log_w)
        elbo_sum += float(stacked.mean(0).sum())
        iw_sum += float((torch.logsumexp(stacked, 0) - math.log(k)).sum())
        iw_standard_sum += float((torch.logsumexp(torch.stack(log_w_standard), 0) - math.log(k)).sum())
        recon = torch.sigmoid(model.decode_logits(mu, y))
        mse_sum += float(((recon - x) ** 2).flatten(1).mean(1).sum())
    n = len(images)
    out = {"elbo": elbo_sum / n, "nll": -iw_sum / n, "recon_mse": mse_sum / n, "iw_samples": k,
           "likelihood": model.config.likelihood}
    return out | ({"nll_standard_prior": -iw_standard_sum / n} if fitted is not None else {})


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Metric:
    """One `--metrics` name: how it is computed, the numbers it adds to a result, and when it applies."""

    name: str
    keys: tuple[str, ...]  # the numbers it adds to `metrics`; all but the *_std ones are --fail-if gates
    compute: Callable[[Scoring], dict[str, Any]]  # raises NotComputed when these sets cannot give it
    applies: Callable[[GenerativeModel | None], bool]  # to this model; None: images without a model
    needs: str  # what it needs where it does not apply
    features: bool = True  # compares the sets' features: an extractor runs
    images: bool = False  # reads the reference's images (or labels), which --ref-stats does not replace
    stats: bool = False  # computable with --ref-stats (the reference's feature mean and covariance alone)
    protocol: Callable[[Scoring], dict[str, Any]] | None = None  # how it was computed, stated beside the numbers
    default: bool = True  # computed when --metrics is not given; False for one that costs minutes

    @property
    def gates(self) -> tuple[str, ...]:
        return tuple(key for key in self.keys if not key.endswith("_std"))


def _samples_noise(model: GenerativeModel | None) -> bool:
    return model is None or not model.translates


def _model_has(name: str) -> Callable[[GenerativeModel | None], bool]:
    """A metric the model declares (`GenerativeModel.metrics`): its encoder's likelihood bound, its paired targets."""
    return lambda model: model is not None and name in model.metrics


NOISE = "a model that samples from noise; a translating model has fid and paired"
METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("fid", ("fid",), fid, lambda model: True, "", stats=True),
    Metric("kid", ("kid", "kid_std"), kid, _samples_noise, NOISE, protocol=kid_protocol),
    Metric("is", ("is", "is_std"), inception_score, _samples_noise, NOISE, stats=True,
           protocol=lambda s: {"is_splits": metrics.IS_SPLITS}),
    Metric("pr", ("precision", "recall"), precision_recall, _samples_noise, NOISE, protocol=lambda s: {"pr_k": metrics.PR_K}),
    Metric("dc", ("density", "coverage"), density_coverage, _samples_noise, NOISE, protocol=lambda s: {"dc_k": metrics.DC_K}),
    Metric("acc", ("acc", "acc_ratio_min", "intra_fid"), class_metrics, lambda model: model is not None and model.conditional,
           "a conditional model (cgan, cvae)", images=True, stats=True),
    Metric("cas", ("cas", "cas_real"), classification_accuracy_score, lambda model: model is not None and model.conditional,
           "a conditional model (cgan, cvae)", features=False, images=True, default=False,
           protocol=lambda s: {"cas": f"genai's classifier ({feats.CLASSIFIER_EPOCHS} epochs) trained on as many samples "
                                      f"as {s.dataset} train has images, tested on {s.dataset} {s.req.split}"}),
    Metric("nll", ("elbo", "nll", "recon_mse"), likelihood, _model_has("nll"), "a VAE (vae, cvae)", features=False,
           images=True, stats=True),
    Metric("paired", ("l1", "psnr", "ssim"), paired, _model_has("paired"), "a translating model (pix2pix)",
           features=False, images=True),
)}
GATE_SOURCES = {key: metric.name for metric in METRICS.values() for key in metric.gates}  # gate metric -> --metrics name
GATE_METRICS = tuple(GATE_SOURCES)


def score(asked: list[str], s: Scoring) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the asked metrics' numbers, how each was computed): one these sets cannot give is NaN, its reason in
    `s.not_computed`."""
    results: dict[str, Any] = {}
    protocol: dict[str, Any] = {}
    for metric in (m for m in METRICS.values() if m.name in asked):
        try:
            results |= metric.compute(s)
        except NotComputed as why:
            results |= {key: math.nan for key in metric.keys}
            s.not_computed |= {key: str(why) for key in metric.gates}
            continue
        if metric.protocol:
            protocol |= metric.protocol(s)
    return results, protocol


def warn_small_sets(asked: list[str], results: dict[str, Any], s: Scoring) -> None:
    """One line each: FID from no more images than feature dimensions (a singular covariance), and what was not computed."""
    assert s.real_f is not None and s.fake_f is not None
    dim = s.real_f.shape[1]
    sizes = {"FID": min(len(s.real_f), len(s.fake_f))} if "fid" in asked and "fid" not in s.not_computed else {}
    if isinstance(results.get("intra_fid"), float) and math.isfinite(results["intra_fid"]):
        sizes["intra-class FID"] = smallest_class_sets(s)
    for name, smallest in sizes.items():
        if smallest <= dim:
            console.warn(f"{name} from {smallest} images per set of {dim}-dimensional features is unreliable: a "
                         f"singular covariance makes it biased and comparable only at the same --n (above {dim} is reliable)")
    if s.not_computed:
        console.warn("not computed: " + "; ".join(f"{name} ({reason})" for name, reason in s.not_computed.items()))


def smallest_class_sets(s: Scoring) -> int:
    """The fewest images of one class in either set, over the classes intra-class FID averages."""
    assert s.reference is not None and s.candidates.labels is not None
    real, asked = s.reference.all_labels()[: s.n_real], s.candidates.labels
    counts = [min(int((real == k).sum()), int((asked == k).sum())) for k in asked.unique().tolist()]
    return min((c for c in counts if c > 1), default=0)


def check_gates(gates: list[Gate], results: dict[str, Any], not_computed: dict[str, str]) -> list[dict[str, Any]]:
    """A gate passes only on a number that clears it: a metric that is missing, null or NaN fails it, with the reason."""
    verdicts = []
    for gate in gates:
        value = results.get(gate.metric)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            verdicts.append({"gate": str(gate), "value": value, "passed": not gate.fails(value)})
        else:
            reason = not_computed.get(gate.metric, "the metric has no finite value")
            verdicts.append({"gate": str(gate), "value": None, "passed": False, "reason": f"not computed: {reason}"})
    return verdicts
