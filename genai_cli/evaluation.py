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
from genai_cli import console, metrics, pairs, resources, rundir, sampling, tboard
from genai_cli import features as feats
from genai_cli.config import Bound, check_range
from genai_cli.console import json_safe
from genai_cli.data import DATASETS, ImageSource, load_dataset
from genai_cli.errors import GenaiError, UsageError
from genai_cli.fileio import append_line
from genai_cli.models import GenerativeModel, VariationalModel
from genai_cli.runtime import pick_device, seed_everything

DISTRIBUTION_METRICS = ("fid", "kid", "is", "pr", "dc")
ALL_METRICS = (*DISTRIBUTION_METRICS, "acc", "nll", "paired")
# Gate metric -> the --metrics group that computes it.
GATE_SOURCES = {"fid": "fid", "kid": "kid", "is": "is", "precision": "pr", "recall": "pr", "density": "dc",
                "coverage": "dc", "acc": "acc", "acc_ratio_min": "acc", "intra_fid": "acc", "elbo": "nll", "nll": "nll",
                "recon_mse": "nll", "l1": "paired", "psnr": "paired", "ssim": "paired"}
GATE_METRICS = tuple(GATE_SOURCES)
NEEDS = {"acc": "a conditional model (cgan, cvae)", "nll": "a VAE (vae, cvae)", "paired": "a translating model (pix2pix)"}
# What --ref-stats (the reference's feature mean and covariance, no features) is enough for.
STATS_METRICS = ("fid", "is", "acc", "nll")
NEEDS_FEATURES = "the reference's features, which --ref-stats does not hold (only their mean and covariance)"
# The fewest images in each set a metric is defined for: a covariance needs 2, a k-NN radius k+1
# points, the Inception Score one image per split. Below it the metric is reported as not computed.
MINIMUM = {"fid": 2, "kid": 2, "is": metrics.IS_SPLITS, "pr": metrics.PR_K + 1, "dc": metrics.DC_K + 1}
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


def check_gates_apply(gates: list[Gate], asked: list[str], applicable: list[str], scoring: str) -> None:
    """Before any work: a gate whose metric can never be computed here is a usage error, not a pass."""
    for gate in gates:
        source = GATE_SOURCES[gate.metric]
        if source not in applicable:
            raise UsageError(f"--fail-if {gate}: {gate.metric} never applies when scoring {scoring}; it needs "
                             f"{NEEDS.get(source, NEEDS_FEATURES)}: remove the gate")
        if source not in asked:
            raise UsageError(f"--fail-if {gate}: {gate.metric} is not computed with --metrics {','.join(asked)}; "
                             f"add {source} to --metrics or remove the gate")


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
    translates = model is not None and model.translates
    asked, applicable = choose_metrics(req, model)
    unjudged = translates and req.features == "classifier" and (req.data or loaded.config.data.name) not in DATASETS
    if unjudged and req.metrics is None:  # pairs from a folder have no classes to train genai's classifier on
        asked = ["paired"]
    if req.ref_stats:
        asked, applicable = stats_only(req, asked, applicable)
    check_gates_apply(gates, asked, applicable, f"a {model.config.kind}" if model else "images without a model")
    dataset, data_dir, shape = reference_facts(req, loaded)
    dim = feats.INCEPTION_DIM if req.features == "inception" else feats.CLASSIFIER_DIM
    if model is not None:  # a folder or a split holds what it holds; generated images are what --n asks for
        resources.require_memory(eval_bytes(req.n, shape, dim, model.latent_dim), f"{req.n} generated images with their features",
                                 "use a smaller --n")
    stats = feats.read_reference_stats(req.ref_stats, dim) if req.ref_stats else None
    reference = None
    if stats is None or "acc" in asked or "nll" in asked or translates:  # statistics alone stand in for the reference's features
        reference = (pairs.load_like(loaded.config, dataset, data_dir, req.split) if translates and loaded else
                     load_dataset(dataset, data_dir=data_dir, split=req.split, channels=shape[0], image_size=shape[1]))
    if "acc" in asked:
        check_classes(loaded, reference, dataset)
    candidates = gather_candidates(req, model, dataset, data_dir, shape, device, reference)
    n_real = stats.n if stats is not None else min(req.n, len(reference))
    results: dict[str, Any] = {}
    not_computed: dict[str, str] = {}
    extractor, classifier_info = None, None
    if asked != ["paired"]:  # the paired distances alone compare pixels, not features
        extractor, classifier_info = make_extractor(req.features, weights, dataset, data_dir, shape, device)
        if stats is not None:
            real_f = stats
        else:
            real_images = reference.all_images()[:n_real]
            key = feats.features_key(dataset, req.split, real_images, extractor)
            real_f, _ = feats.cached_features(key, real_images, extractor, progress=f"{extractor.name} features of {dataset} {req.split}")
        fake_f, fake_logits = candidate_features(req, candidates, dataset, extractor)
        results, not_computed = distribution_metrics(asked, real_f, fake_f, fake_logits)
    elif unjudged:
        not_computed["fid"] = "genai's classifier needs a labelled dataset, and pairs from a folder have none; add --features inception"
    if "acc" in asked:
        results |= conditional_metrics(candidates, reference, n_real, real_f, fake_f, dataset, data_dir, shape, device,
                                       not_computed)
    if "paired" in asked:
        results |= metrics.paired(candidates.images, reference.all_images()[: len(candidates.images)])
        if math.isnan(results["ssim"]):
            not_computed["ssim"] = f"needs images of at least {metrics.SSIM_WINDOW} px, the side of its window"
    if "nll" in asked:
        results |= vae_metrics(model, reference.all_images()[: req.n], reference.all_labels(), req.iw_samples, device)
    if extractor is not None:
        warn_small_sets(asked, results, real_f, fake_f, not_computed)
    protocol = {
        "extractor": extractor and extractor.name, "weights": extractor and extractor.weights,
        "weights_sha256": extractor and extractor.weights_sha256, "preprocess": extractor and extractor.protocol,
        "candidates": candidates.description, "n_generated": len(candidates.images),
        "reference": f"statistics in {req.ref_stats}" if stats is not None else f"{dataset} {req.split}",
        "n_real": n_real or None, "seed": req.seed,
        "kid": "100 subsets of 1000, poly kernel", "pr_k": metrics.PR_K, "dc_k": metrics.DC_K, "is_splits": metrics.IS_SPLITS,
    }
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
                          f"{req.split}", model)
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


def choose_metrics(req: EvalRequest, model: GenerativeModel | None) -> tuple[list[str], list[str]]:
    """(the metrics to compute, every metric that applies here)."""
    # a translating model: FID of its outputs against the targets (plus its own paired distances)
    applicable = ["fid"] if model is not None and model.translates else list(DISTRIBUTION_METRICS)
    if model is not None and model.conditional:
        applicable.append("acc")
    if model is not None:
        applicable.extend(model.metrics)
    if req.metrics is None:
        return applicable, applicable
    for name in req.metrics:
        if name not in ALL_METRICS:
            raise UsageError(f"unknown metric {name!r}; choose from: {', '.join(ALL_METRICS)}")
        if name not in applicable:
            raise UsageError(f"metric {name!r} does not apply here ({name} needs "
                             f"{NEEDS.get(name, 'a model that samples from noise; a translating model has fid and paired')})")
    return req.metrics, applicable


def stats_only(req: EvalRequest, asked: list[str], applicable: list[str]) -> tuple[list[str], list[str]]:
    """With --ref-stats, the metrics that need no more than the reference's mean and covariance."""
    if req.metrics is not None and (needs := [m for m in asked if m not in STATS_METRICS]):
        raise UsageError(f"--metrics {','.join(needs)} need {NEEDS_FEATURES}; drop --ref-stats, or ask for "
                         f"{','.join(m for m in STATS_METRICS if m in applicable)}")
    return [m for m in asked if m in STATS_METRICS], [m for m in applicable if m in STATS_METRICS]


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


GROUP_NAMES = {"fid": ("fid",), "kid": ("kid", "kid_std"), "is": ("is", "is_std"), "pr": ("precision", "recall"),
               "dc": ("density", "coverage")}


def distribution_metrics(asked: list[str], real: torch.Tensor, fake: torch.Tensor,
                         fake_logits: torch.Tensor | None) -> tuple[dict[str, float], dict[str, str]]:
    """(values, why each missing one was not computed): a metric the sets are too small for is NaN with a reason."""
    out: dict[str, float] = {}
    why: dict[str, str] = {}
    for group in (g for g in asked if g in DISTRIBUTION_METRICS):
        sizes = (len(fake),) if group == "is" else (len(real), len(fake))
        reason = None
        if min(sizes) < MINIMUM[group]:
            sets = "images" if group == "is" else "images in each set"
            reason = f"needs at least {MINIMUM[group]} {sets}, got {' and '.join(map(str, sizes))}"
        elif group == "is" and fake_logits is None:
            reason = "this Inception file has no classifier head"
        if reason:
            out |= {name: math.nan for name in GROUP_NAMES[group]}
            why |= {name: reason for name in GROUP_NAMES[group] if not name.endswith("_std")}
        else:
            out |= dict(zip(GROUP_NAMES[group], _distribution_metric(group, real, fake, fake_logits)))
    return out, why


def _distribution_metric(group: str, real: torch.Tensor, fake: torch.Tensor,
                         fake_logits: torch.Tensor | None) -> tuple[float, ...]:
    if group == "fid":
        return (metrics.fid(real, fake),)
    if group == "kid":
        return metrics.kid(real, fake)
    if group == "is":
        assert fake_logits is not None
        return metrics.inception_score(fake_logits)
    if group == "pr":
        return metrics.precision_recall(real, fake)
    return metrics.density_coverage(real, fake)


def warn_small_sets(asked: list[str], results: dict[str, Any], real: torch.Tensor, fake: torch.Tensor,
                    not_computed: dict[str, str]) -> None:
    """One line each: FID from fewer images than feature dimensions (a singular covariance), and what was not computed."""
    dim = real.shape[1]
    smallest = min(len(real), len(fake))
    if "fid" in asked and "fid" not in not_computed and smallest <= dim or "intra_fid" in results:
        console.warn(f"FID from {smallest if 'fid' in asked else 'a few'} images per set of {dim}-dimensional features "
                     f"has a singular covariance: it is biased and comparable only at the same --n (above {dim} is reliable)")
    if not_computed:
        console.warn("not computed: " + "; ".join(f"{name} ({reason})" for name, reason in not_computed.items()))


def conditional_metrics(candidates: Candidates, reference: ImageSource, n_real: int, real_f: torch.Tensor | metrics.Statistics,
                        fake_f: torch.Tensor, dataset: str, data_dir: str | None, shape: tuple[int, int],
                        device: torch.device, not_computed: dict[str, str]) -> dict[str, Any]:
    """Does each asked class come out as that class (judged by the classifier), and how well?
    Adds to `not_computed` why a summary could not be computed (too few images per class)."""
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
    intra = [] if isinstance(real_f, metrics.Statistics) else [
        metrics.fid(real_f[real_labels == k], fake_f[asked == k]) for k in range(num_classes)
        if (real_labels == k).sum() > 1 and (asked == k).sum() > 1]
    if isinstance(real_f, metrics.Statistics):
        not_computed["intra_fid"] = f"needs {NEEDS_FEATURES}"
    elif not intra:
        not_computed["intra_fid"] = (f"needs 2 or more images of one class in each set; {len(asked)} generated and "
                                     f"{n_real} real images over {num_classes} classes have none: use a larger --n")
    if not ratios:
        not_computed["acc_ratio_min"] = "the classifier recognises none of the asked classes in the real test images"
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
    per image, with the Bernoulli decoder on [0, 1] intensities, under the prior `genai sample`
    draws from; with a fitted prior also the bound under N(0, I) that training optimised, so a
    better prior is never bought with a worse likelihood unseen. Plus reconstruction MSE."""
    model.eval()
    fitted = model.decoder.prior
    standard = torch.distributions.Normal(0, 1)
    sampling_prior = (torch.distributions.MultivariateNormal(fitted.mean, scale_tril=fitted.scale_tril)
                      if fitted is not None else None)
    elbo_sum = iw_sum = iw_standard_sum = mse_sum = 0.0
    for start in range(0, len(images), batch):
        x = images[start : start + batch].to(device).float() / 255
        y = labels[start : start + batch].to(device) if model.conditional and labels is not None else None
        mu, logvar = model.encoder(x * 2 - 1, y)
        std = torch.exp(0.5 * logvar)
        log_w, log_w_standard = [], []
        for _ in range(k):
            z = mu + std * torch.randn_like(std)
            log_px = -F.binary_cross_entropy_with_logits(model.decode_logits(z, y), x, reduction="none").flatten(1).sum(1)
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
    out = {"elbo": elbo_sum / n, "nll": -iw_sum / n, "recon_mse": mse_sum / n, "iw_samples": k}
    return out | ({"nll_standard_prior": -iw_standard_sum / n} if fitted is not None else {})


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
