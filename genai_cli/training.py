"""The one training loop for every family: setup -> steps -> checkpoints -> result.

`train` is the entry point: `plan_run` resolves flags (and a resumed checkpoint) into a `Plan`,
`start_session` builds the model and its objective and claims the run directory, `train_session`
runs `run_steps` and writes what a finished run holds. Everything about a family (losses, optimisers,
sample grids, health checks) comes from its objective.

Determinism is by construction, so `--resume` continues bit-for-bit on CPU: batch order
is a function of (seed, epoch), all other randomness comes from the global RNGs whose
states are saved with every checkpoint, and nothing in the loop depends on the total
number of steps.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import torch

from genai_cli import __version__, console, distributed, pairs, plots, report, resources, rundir, selection, tboard
from genai_cli import checkpoint as ckpt
from genai_cli import images as imgs
from genai_cli.augment import POLICIES
from genai_cli.config import Config, ModelConfig, validate_model, validate_train
from genai_cli.data import ImageSource, load_dataset
from genai_cli.distributed import SINGLE_PROCESS, World
from genai_cli.errors import CheckpointError, ExitCode, Interrupted, TrainingDiverged, UsageError
from genai_cli.fileio import append_line, atomic_write
from genai_cli.models import MODELS, GenerativeModel, ModelSpec
from genai_cli.models.blocks import NORMS
from genai_cli.models.vae import LIKELIHOODS
from genai_cli.objectives import (
    Health,
    Objective,
    SampleGrid,
    check_gan_loss,
    choose,
    lr_factor,
    make_objective,
    set_learning_rates,
)
from genai_cli.runtime import describe, pick_device, resolve_precision, seed_everything

# Flags that may change when a run is resumed; anything else would change the maths (the device and
# its precision do too, but a run must be able to move to another machine).
RESUMABLE = {"train.steps", "train.epochs", "train.device", "train.precision", "train.log_every", "train.sample_every",
             "train.save_every", "train.lr", "train.lr_d", "train.lr_decay_start", "train.keep", "data.data_dir"}
# A --max-time budget: steps BUDGET_WARMUP..BUDGET_PLAN_AT are timed, then the run's length is
# fixed to what fits in BUDGET_USE of the time left (the rest covers the final save). Twenty steps
# miss what later steps pay (grids, checkpoints), and a shared machine's load comes and goes, so the
# plan is revised at BUDGET_REVISE fractions of it from the speed of the steps since the last plan,
# until the rate starts to fall (a constant-rate family revises to the end).
BUDGET_WARMUP, BUDGET_PLAN_AT, BUDGET_PLAN_FRACTION, BUDGET_USE = 5, 25, 0.05, 0.95
BUDGET_REVISE = (0.1, 0.3, 0.5, 0.7, 0.9)
# The plan also keeps the time an objective's finish needs (the VAE's passes and EM); what it can cut short
# (EM) stops SAVE_SHARE of the budget before its end, which the last save takes (1-2 s for a VAE here).
SAVE_SHARE = 0.01
BUDGET_PROVISIONAL_STEPS = 10**9


@dataclass
class TrainResult:
    run_dir: str
    checkpoint: str
    step: int
    epoch: int
    losses: dict[str, float]
    images_per_sec: float
    seconds: float
    device: str
    processes: int = 1
    max_time_reached: bool = False
    kept_step: int | None = None  # the step model.safetensors holds (under --keep best, maybe before `step`)
    kept_score: float | None = None  # its judged FID (genai_cli.selection), under --keep best

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- configuration


def flag_name(key: str) -> str:
    """'train.batch_size' -> '--batch-size', for messages."""
    special = {"model.kind": "--model", "data.name": "--data"}
    return special.get(key, "--" + key.split(".")[1].replace("_", "-"))


def flag_text(key: str, value: Any) -> str:
    """('train.r1', 0.0) -> '--r1 0'; a switch as its own name: ('model.full_res_conv', False) -> '--no-full-res-conv'."""
    if isinstance(value, bool):
        return flag_name(key).replace("--", "--" if value else "--no-", 1)
    return f"{flag_name(key)} {value:g}"


def apply_flags(config: Config, flags: dict[str, Any], resuming: bool = False) -> Config:
    """Return a copy of `config` with 'section.field' -> value flags applied."""
    config = Config.from_dict(json.loads(config.to_json()))
    if flags.get("train.epochs") is not None and flags.get("train.steps") is None:
        config.train.steps = None  # --epochs on its own means epochs, even over a stored --steps
    for key, value in flags.items():
        section, name = key.split(".")
        if value is None or (resuming and getattr(getattr(config, section), name) == value):
            continue
        if resuming and key not in RESUMABLE:
            flag = flag_name(key)
            raise UsageError(f"{flag} cannot change when resuming (it would change the run); start a new run instead")
        setattr(getattr(config, section), name, value)
    return config


def resolve_config(config: Config, spec: ModelSpec, source: ImageSource) -> Config:
    """Fill family defaults and dataset facts so the stored config is complete."""
    model, data, train = config.model, config.data, config.train
    model.kind = spec.name
    if spec.shape.translates and model.latent_dim not in (None, spec.latent_dim):
        raise UsageError(f"--latent-dim does not apply to --model {spec.name}: it translates images and draws no latents; "
                         "drop --latent-dim")
    model.latent_dim = spec.latent_dim if model.latent_dim is None else model.latent_dim
    model.channels, model.image_size = source.channels, source.image_size
    model.in_channels = source.in_channels if isinstance(source, pairs.PairedSource) else None
    model.num_classes = len(source.classes) if spec.conditional else 0
    data.classes = list(source.classes)
    objective = choose(spec.shape, train.gan_loss)  # its paper's rates beat the family's
    train.lr = (objective.lr or spec.lr) if train.lr is None else train.lr
    train.batch_size = spec.batch_size if train.batch_size is None else train.batch_size
    train.lr_decay_start = spec.lr_decay_start if train.lr_decay_start is None else train.lr_decay_start
    train.beta1 = (spec.beta1 if objective.beta1 is None else objective.beta1) if train.beta1 is None else train.beta1
    train.beta2 = train.beta2 if objective.beta2 is None else objective.beta2
    train.ema = spec.ema if train.ema is None else train.ema
    if train.augment not in POLICIES:
        raise UsageError(f"--augment must be one of {', '.join(POLICIES)}, got {train.augment!r}")
    if train.augment != "none" and not objective.augments:
        raise UsageError(f"--augment transforms what a GAN's discriminator sees of images drawn from noise; "
                         f"{objective.description} has no such discriminator: drop --augment")
    train.r1 = (spec.r1 if objective.takes_r1 else 0.0) if train.r1 is None else train.r1
    if train.r1 and not objective.takes_r1:
        raise UsageError(f"--r1 penalises a bce or hinge discriminator's gradient at real images; {objective.description} "
                         "has no such discriminator: drop --r1")
    if train.class_loss and (spec.class_loss is None or not objective.takes_class_loss):
        raise UsageError(f"--class-loss teaches a conditional model's samples their class (cgan with bce or hinge, cvae); "
                         f"--model {spec.name} with {objective.description} has none: drop --class-loss")
    if train.class_loss is None:
        train.class_loss = (spec.class_loss or 0.0) if objective.takes_class_loss else 0.0
    if (model.best_of or 1) > 1 and not (spec.best_of and train.class_loss):
        raise UsageError(f"--best-of picks each sample with the classifier a cvae's --class-loss trains; --model {spec.name} "
                         f"{'with --class-loss 0 ' if spec.best_of else ''}has none: drop --best-of")
    model.best_of = (spec.best_of if train.class_loss and spec.best_of else 1) if model.best_of is None else model.best_of
    if train.warmup and objective.warmup is None:
        raise UsageError(f"--warmup applies to objectives with a warm-up (pix2pix's L1 phase); {objective.description} "
                         "has none: drop --warmup")
    train.warmup = (objective.warmup or 0.0) if train.warmup is None else train.warmup
    if spec.conditional and not source.labelled:
        raise UsageError(f"--model {spec.name} needs labelled data but {source.name} has no classes; "
                         "use class sub-folders or an unconditional model")
    resolve_decoding(model, spec)
    if model.class_norm and spec.class_norm is None:
        raise UsageError(f"--class-norm sets a conditional generator's normalisations from its labels; --model {spec.name} "
                         "has no such generator (cgan and cvae have): drop --class-norm")
    model.class_norm = bool(spec.class_norm) if model.class_norm is None else model.class_norm
    if model.full_res_conv and spec.full_res_conv is None:
        raise UsageError(f"--full-res-conv ends a convolutional GAN's generator in a 3x3 conv; --model {spec.name} "
                         "has no such generator (dcgan and cgan have): drop --full-res-conv")
    model.full_res_conv = bool(spec.full_res_conv) if model.full_res_conv is None else model.full_res_conv
    if model.minibatch_std and spec.minibatch_std is None:
        raise UsageError(f"--minibatch-std shows the MLP GAN's discriminator how much a group of images differs; --model {spec.name} "
                         "has no such discriminator (gan has): drop --minibatch-std")
    model.minibatch_std = (spec.minibatch_std or 0) if model.minibatch_std is None else model.minibatch_std
    if model.norm not in NORMS:
        raise UsageError(f"--norm must be one of {', '.join(NORMS)}, got {model.norm!r}")
    return config


def resolve_decoding(model: ModelConfig, spec: ModelSpec) -> None:
    """The prior latents are drawn from (its components) and a VAE decoder's likelihood: family
    defaults, and the combinations that cannot work refused."""
    model.prior = spec.prior if model.prior is None else model.prior
    if model.prior not in (spec.prior, "standard"):
        raise UsageError(f"--prior {model.prior!r} is not available for --model {spec.name}; it has: "
                         + ", ".join(dict.fromkeys(("standard", spec.prior))))
    if model.prior == "fitted":
        model.prior_components = model.prior_components or spec.prior_components
        if model.prior_components > 1 and model.latent_dim < 2:
            raise UsageError("a fitted prior of several components needs --latent-dim 2 or more; "
                             "add --prior-components 1")
    elif model.prior_components is not None:
        raise UsageError(f"--prior-components sizes a fitted prior, and --model {spec.name} draws its latents from "
                         "N(0, I) here: drop --prior-components")
    if model.likelihood is not None and spec.likelihood is None:
        raise UsageError(f"--likelihood sets a VAE decoder's; --model {spec.name} has none: drop --likelihood")
    model.likelihood = model.likelihood or spec.likelihood
    if spec.likelihood and model.likelihood not in LIKELIHOODS:  # a config file's; the flag takes only these
        raise UsageError(f"--likelihood must be one of {', '.join(LIKELIHOODS)}, got {model.likelihood!r}")


def load_source(config: Config, spec: ModelSpec) -> ImageSource:
    """The dataset, or for a model that translates images, its pairs (`--pairs`, a default chosen here)."""
    data, model = config.data, config.model
    if not spec.shape.translates:
        if data.pairs is not None or data.direction != "AtoB":
            raise UsageError(f"--pairs and --direction give pairs of images to a model that translates them (pix2pix); "
                             f"--model {spec.name} generates from noise: drop them")
        return load_dataset(data.name, data_dir=data.data_dir, split=data.split,
                            channels=model.channels, image_size=model.image_size)
    data.pairs = data.pairs or pairs.default_pairs(data.name)
    return pairs.load_pairs(data.name, data.pairs, data.direction, data_dir=data.data_dir, split=data.split,
                            channels=model.channels, image_size=model.image_size)


# ---------------------------------------------------------------- signals


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag checked at step boundaries, so a checkpoint is saved."""

    EXIT_CODES = {signal.SIGINT: ExitCode.SIGINT, signal.SIGTERM: ExitCode.SIGTERM}

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.EXIT_CODES:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # a second signal: stop now; atomic writes keep files whole
            raise KeyboardInterrupt
        self.signum = signum
        console.warn(f"{signal.Signals(signum).name} received: saving a checkpoint at the end of this step")

    def raise_if_requested(self, run_dir: Path, step: int) -> None:
        if self.signum is not None:
            name = signal.Signals(self.signum).name
            raise Interrupted(
                f"stopped by {name} at step {step}; checkpoint saved, continue with: genai train --resume {run_dir}",
                self.EXIT_CODES[signal.Signals(self.signum)],
            )


# ---------------------------------------------------------------- training health


@dataclass
class CollapseWatch:
    """Warns once when the objective's health loss stays below its floor (e.g. D has won, so G
    gets no gradient to learn from); a single quiet window is not enough."""

    health: Health
    since: int | None = None
    warned: bool = False

    def update(self, step: int, window_steps: int, value: float) -> str | None:
        h = self.health
        if value >= h.floor:
            self.since = None
            return None
        self.since = step - window_steps if self.since is None else self.since
        if self.warned or step - self.since < h.steps:
            return None
        self.warned = True
        return f"{h.problem}: {h.loss} has stayed below {h.floor} since step {self.since}, {h.advice}"


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """One host sync for any number of tensors."""
    return bool(torch.stack([t.isfinite().all() for t in tensors]).all()) if tensors else True


# ---------------------------------------------------------------- the loop


@dataclass
class Session:
    """Everything a run holds while training."""

    config: Config
    run_dir: Path
    device: torch.device
    source: ImageSource
    model: GenerativeModel
    objective: Objective
    world: World
    step: int = 0
    saved_step: int | None = None  # the newest checkpoint on disk
    deadline: float | None = None  # time.monotonic() at which --max-time ends the run
    budget: float | None = None  # the seconds of --max-time
    out_of_time: bool = False
    budgeted: bool = False  # --max-time alone: the length is planned (and revised) from the steps' speed
    budget_timer: float = 0.0  # time.monotonic() at step budget_from
    budget_from: int = BUDGET_WARMUP  # the first timed step: steps before it (or before a warm-up ended) cost otherwise
    next_plan: int = BUDGET_PLAN_AT  # the step at which a budgeted run (re)plans its length
    revisions: list[int] = field(default_factory=list)  # later steps to revise it at, from the first plan
    tensorboard: tboard.Log | None = None  # --tensorboard, on rank 0
    judge: selection.Judge | None = None  # --keep best, on rank 0
    kept_step: int | None = None  # the step model.safetensors holds
    kept_score: float = math.inf  # and the judge's score of it
    judged_step: int = 0  # the last step the judge scored (or the step a resumed run starts at)
    collapse: CollapseWatch | None = field(init=False)

    def __post_init__(self) -> None:
        self.collapse = CollapseWatch(self.objective.health) if self.objective.health else None

    @property
    def rank_batch_size(self) -> int:
        """--batch-size is the global batch; each rank takes an equal slice of it."""
        return self.config.train.batch_size // self.world.size

    @property
    def steps_per_epoch(self) -> int:
        return self.source.batches_per_epoch(self.rank_batch_size, self.world.size)

    @property
    def total_steps(self) -> int:
        t = self.config.train
        return t.steps if t.steps is not None else t.epochs * self.steps_per_epoch

    @property
    def warmup_steps(self) -> int:
        """Steps the objective's warm-up takes; all of a --max-time run's until its first plan fixes them."""
        t = self.config.train
        if t.warmup_steps is not None:
            return t.warmup_steps
        return BUDGET_PROVISIONAL_STEPS if t.warmup else 0

    def save(self, ends_run: bool = False) -> Path:
        """Rank 0 writes the checkpoint (every rank holds the same weights); never non-finite weights.
        Under --keep best the model file is replaced only by a better-judged model."""
        epoch = self.step // self.steps_per_epoch
        model_path = self.run_dir / ckpt.MODEL_FILE
        if not all_finite([*self.model.parameters(), *self.model.buffers()]):
            raise self.diverged("the weights hold NaN or infinite values")
        self.saved_step = self.step
        if not self.world.is_main:
            return model_path
        judging = self.judge is not None
        # The model users would sample: first, so the two files are written back to back; under --keep best
        # only at a checkpoint that is judged, as no other may replace the kept model.
        sampled = self.objective.sampling_model(self.source) if not judging or ends_run or self.judging_due() else None
        score = self.judge_samples(sampled) if judging and sampled is not None else None
        ckpt.save_training_state(self.run_dir / ckpt.STATE_FILE, self.model, self.objective.optimizers,
                                 self.config, self.step, epoch, str(self.device), companions(self.objective))
        if sampled is not None and (score is None or score < self.kept_score):
            extra = selection.kept_metadata(score) if score is not None else {}
            ckpt.save_model(model_path, sampled, self.config, self.step, epoch, str(self.device), extra)
            self.kept_step, self.kept_score = self.step, math.inf if score is None else score
        return model_path

    def judging_due(self) -> bool:
        """At most selection.JUDGEMENTS checkpoints of a run are judged: the first past each share of its length."""
        every = max(1, self.total_steps // selection.JUDGEMENTS)
        return self.step // every > self.judged_step // every

    def judge_samples(self, sampled: GenerativeModel) -> float:
        """The judge's score of the model users would sample now, logged to metrics.jsonl."""
        assert self.judge is not None
        score = self.judge.score(sampled)
        row = {"step": self.step, "judge": {**selection.judgement(score), "kept": score < self.kept_score}}
        append_line(self.run_dir / rundir.METRICS_FILE, json.dumps(row))
        self.judged_step = self.step
        return score

    def diverged(self, what: str) -> TrainingDiverged:
        """The error for NaN/inf: which step, what is kept, and the knob to turn."""
        lr = self.config.train.lr or 0.0
        if self.saved_step is None:
            keep = f"no checkpoint was written before it; train again with a lower --lr (now {lr:g}), e.g. --lr {lr / 2:g}"
        else:
            keep = (f"the checkpoint of step {self.saved_step} in {self.run_dir} is the last good one and unchanged; "
                    f"continue it with a lower learning rate: genai train --resume {self.run_dir} --lr {lr / 2:g}")
        return TrainingDiverged(f"training diverged at step {self.step}: {what}; {keep}")

    def finish_by(self) -> float | None:
        """time.monotonic() by which the objective's finish ends, leaving time for the last save."""
        return None if self.deadline is None or self.budget is None else self.deadline - SAVE_SHARE * self.budget

    def past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline


@dataclass
class Plan:
    """A run resolved from flags (and a checkpoint when resuming), before any model exists."""

    config: Config
    spec: ModelSpec
    device: torch.device
    source: ImageSource
    state: ckpt.TrainingState | None
    world: World
    keep_asked: bool = False  # --keep given: a judge that cannot be built is an error, not a warning


def plan_run(flags: dict[str, Any], resume: str | None, world: World = SINGLE_PROCESS, budget: float | None = None) -> Plan:
    """`budget`: the seconds of a --max-time given alone, for which a family may have a recipe."""
    state = ckpt.load_training_state(rundir.real_run_dir(resume)) if resume else None
    base = state.checkpoint.config if state else Config()
    config = apply_flags(base, flags, resuming=state is not None)
    spec = MODELS.get(config.model.kind)
    if budget is not None and spec.short_budget and budget <= spec.short_budget[0]:
        if recipe := {k: v for k, v in spec.short_budget[1].items() if flags.get(k) is None}:
            config = apply_flags(config, recipe)
            console.info(f"a {budget:g} s budget: " + ", ".join(flag_text(k, v) for k, v in recipe.items())
                         + " (the family's recipe for a short run)")
    validate_model(config.model, latent=not spec.shape.translates)  # a translating model's is 0: it has none
    validate_train(config.train)
    check_gan_loss(config.train.gan_loss)
    device = pick_device(config.train.device)
    config.train.precision = resolve_precision(config.train.precision, device)
    source = load_source(config, spec)
    config = resolve_config(config, spec, source)
    resolve_keep(config, spec, source, budget)
    batch = config.train.batch_size
    if batch % world.size:
        raise UsageError(f"--batch-size {batch} does not split evenly over {world.size} processes; "
                         f"use a multiple of {world.size}")
    source.batches_per_epoch(batch // world.size, world.size)  # raises when the batch exceeds the data
    resources.require_training_fits(spec, config.model, batch // world.size, device)
    return Plan(config, spec, device, source, state, world, keep_asked=flags.get("train.keep") is not None)


def resolve_keep(config: Config, spec: ModelSpec, source: ImageSource, budget: float | None) -> None:
    """--keep: best where samples can be judged and a long --max-time budget promises its best model; else last."""
    train = config.train
    objective = choose(spec.shape, train.gan_loss)
    why_not = (f"a model whose samples genai judges (gan, dcgan, cgan), not {objective.description}"
               if not objective.judged else f"labelled data (genai's classifier judges the samples), and {source.name} has no classes")
    judged = objective.judged and source.labelled
    selection.check_keep(train.keep, judged, why_not)
    if train.keep is None:
        train.keep = "best" if budget is not None and budget >= selection.BEST_BY_DEFAULT and judged else "last"


def resolve(flags: dict[str, Any], resume: str | None = None, world: World = SINGLE_PROCESS,
            max_time: float | None = None) -> Config:
    """The complete config a `train` call would use (for --dry-run, and checked by the torchrun launcher)."""
    return plan_run(flags, resume, world, budget_of(flags, resume, max_time)).config


def budget_of(flags: dict[str, Any], resume: str | None, max_time: float | None) -> float | None:
    """The seconds of a --max-time given alone (no --steps/--epochs, not a resume): a budget the run plans for."""
    alone = not resume and flags.get("train.steps") is None and flags.get("train.epochs") is None
    return max_time if alone else None


def build_model(plan: Plan, device: torch.device) -> GenerativeModel:
    """The family's model on the device in channels-last layout (+21% images/s for a 28x28 DCGAN
    on CPU, measured; the usual win on GPUs); BatchNorm synchronised across GPU ranks under DDP."""
    model = plan.spec.build(plan.config.model)
    for name, child in model.named_children():
        setattr(model, name, distributed.sync_batchnorm(child, plan.world, device))
    return model.to(device, memory_format=torch.channels_last)


def prepare_batch(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> [-1, 1] floats in the models' channels-last layout, on the batch's device."""
    return imgs.from_uint8(images).contiguous(memory_format=torch.channels_last)


def prepare_condition(labels: torch.Tensor | None) -> torch.Tensor | None:
    """Class labels as they are; a paired source's input images (uint8) like the images."""
    return prepare_batch(labels) if labels is not None and labels.dtype == torch.uint8 else labels


def start_session(plan: Plan, out: str | None, resume: str | None, force: bool, holds: ExitStack) -> Session:
    """Every rank seeds alike (identical initial weights and noise streams; see distributed.global_slice).

    Rank 0 claims the run directory (`rundir`: locked, and never over a user's files) for as long as
    `holds` lasts; the other ranks learn its name from rank 0.
    """
    config, state, world = plan.config, plan.state, plan.world
    device = distributed.start(world, plan.device)
    seed_everything(config.train.seed)
    model = build_model(plan, device)
    objective = make_objective(model, config.train, device, world)
    if state is None:
        run_dir = holds.enter_context(rundir.claim_new(out, config, force)) if world.is_main else Path()
        run_dir = Path(distributed.broadcast_text(str(run_dir), world))
        return Session(config, run_dir, device, plan.source, model, objective, world)
    run_dir = rundir.real_run_dir(resume)
    restore(model, objective, state)
    if world.is_main:
        holds.enter_context(rundir.claim_existing(run_dir))
        rundir.remove_stale_temporaries(run_dir)
        rundir.trim_metrics(run_dir / rundir.METRICS_FILE, state.checkpoint.step)
    step = state.checkpoint.step
    return Session(config, run_dir, device, plan.source, model, objective, world, step, saved_step=step)


def start_judging(session: Session, plan: Plan) -> None:
    """--keep best: the judge (on rank 0), and on resume the score of the kept model it must beat."""
    if not session.world.is_main or session.config.train.keep != "best":
        return
    # A resumed run's kept model is never replaced unjudged: a judge it cannot build is an error.
    session.judge = selection.try_judge(session.config, session.device, plan.keep_asked or plan.state is not None)
    if plan.state is not None:
        session.kept_step, session.kept_score = selection.kept_in(session.run_dir / ckpt.MODEL_FILE)
        session.judged_step = session.step


def restore(model: GenerativeModel, objective: Objective, state: ckpt.TrainingState) -> None:
    """Weights, optimiser moments, EMA and RNGs. Learning rates come from the config before every
    step (`lr_factor`), so a --lr given on resume applies, whatever rate the state stored."""
    ckpt.load_weights_into(model, state.model_weights, state.checkpoint.path)
    try:
        for name, optimizer in objective.optimizers.items():
            optimizer.load_state_dict(state.optimizers[name])
            match_layouts(optimizer)
        ckpt.restore_rng_state(state.rng)
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{state.checkpoint.path} holds a damaged optimiser or RNG state ({type(err).__name__}); "
                              "it cannot be resumed: start a new run, or sample from its model.safetensors") from err
    for name, module in companions(objective).items():
        ckpt.load_weights_into(module, state.companions.get(name, {}), state.checkpoint.path)
    if objective.ema is not None:
        objective.ema.updates = state.checkpoint.step  # one update per step


def companions(objective: Objective) -> dict[str, torch.nn.Module]:
    """What the training state keeps beside the model: the moving average, and the objective's own modules."""
    return ({"ema": objective.ema.shadow} if objective.ema is not None else {}) | objective.companions


def match_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Loaded moments come back contiguous; give them their parameter's (channels-last) layout,
    which a run that never stopped has, so a resumed run computes bit for bit the same."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            moments = optimizer.state.get(param, {})
            for key, value in moments.items():
                if isinstance(value, torch.Tensor) and value.shape == param.shape:
                    moments[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def train(flags: dict[str, Any], out: str | None = None, resume: str | None = None, force: bool = False,
          max_time: float | None = None, tensorboard: bool = False) -> TrainResult:
    """Train from CLI-style flags ('section.field' -> value; None means not given).

    `force` replaces an existing run in `out`; `max_time` (seconds) ends training cleanly,
    with a checkpoint, once that much time has passed; `tensorboard` also writes TensorBoard
    events into the run. Under torchrun every process calls this; rank 0 alone logs and writes files.
    """
    deadline = time.monotonic() + max_time if max_time is not None else None
    if tensorboard:
        tboard.require()
    if out and resume:
        raise UsageError("--out and --resume both name the run directory; give only --resume")
    budget = budget_of(flags, resume, max_time)
    budgeted = budget is not None
    if budgeted:
        flags = {**flags, "train.steps": BUDGET_PROVISIONAL_STEPS}  # until planned; the schedule is flat that early
    world = distributed.current_world()
    if not world.is_main:
        console.configure(quiet=True)
    try:
        with ExitStack() as holds:
            plan = plan_run(flags, resume, world, budget)
            session = start_session(plan, out, resume, force, holds)
            session.deadline, session.budgeted = deadline, budgeted
            session.budget = max_time
            start_judging(session, plan)
            if not budgeted and session.config.train.warmup_steps is None:  # a new run: its length is known
                session.config.train.warmup_steps = int(session.config.train.warmup * session.total_steps)
            if tensorboard and world.is_main:
                session.tensorboard = holds.enter_context(tboard.Log(session.run_dir, session.step))
            result = train_session(session, resumed=bool(resume))
        distributed.finish(world)
        return result
    finally:
        distributed.stop()


def train_session(session: Session, resumed: bool) -> TrainResult:
    cfg, run_dir, main = session.config, session.run_dir, session.world.is_main
    if main:
        ckpt.save_config(run_dir, cfg)
        rundir.point_latest(run_dir)
    processes = f" × {session.world.size} processes" if session.world.distributed else ""
    console.info(f"genai {__version__}: training {cfg.model.kind} on {session.source.name} "
                 f"({len(session.source)} images, {session.source.location}) on {describe(session.device)}{processes}, "
                 + ("bf16 mixed precision" if cfg.train.precision == "bf16" else "float32"))
    length = "as many steps as --max-time allows" if session.budgeted else f"{session.total_steps} steps"
    console.info(f"run directory {run_dir}; {length} of batch {cfg.train.batch_size}"
                 + (f", resuming at step {session.step}" if resumed else ""))
    grid = session.objective.sample_grid(session.source)  # the same inputs at every step
    started = time.perf_counter()
    start_step = session.step
    try:
        with StopRequest() as stop, console.step_progress(session.total_steps, session.step) as progress:
            final_losses = run_steps(session, stop, progress, grid)
    except Interrupted:  # its checkpoint is saved: summarise what the run holds, then stop
        if main:
            write_summaries(session)
        raise
    seconds = time.perf_counter() - started
    session.objective.finish(session.source, session.finish_by())
    model_path = session.save(ends_run=True)
    if main:
        write_sample_grid(session, grid)
        for name, png in session.objective.extra_pictures(session.source, cfg.train.seed).items():
            atomic_write(run_dir / name, png)
        write_summaries(session)
    if main and session.judge is not None and session.kept_step != session.step:
        console.info(f"{ckpt.MODEL_FILE} keeps step {session.kept_step}, the best judged (classifier FID "
                     f"{session.kept_score:.2f} on {selection.JUDGE_SAMPLES} samples); {ckpt.STATE_FILE} holds step "
                     f"{session.step} for --resume")
    done = session.step - start_step
    kept_score = session.kept_score if math.isfinite(session.kept_score) else None
    return TrainResult(
        run_dir=str(run_dir), checkpoint=str(model_path), step=session.step,
        epoch=session.step // session.steps_per_epoch, losses=final_losses,
        images_per_sec=done * cfg.train.batch_size / seconds if seconds > 0 else 0.0,
        seconds=seconds, device=str(session.device), processes=session.world.size,
        max_time_reached=session.out_of_time, kept_step=session.kept_step, kept_score=kept_score,
    )


def run_steps(session: Session, stop: StopRequest, progress: console.StepProgress, grid: SampleGrid) -> dict[str, float]:
    cfg = session.config.train
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}  # steps that reported each loss: R1 is measured on every 16th step only
    last: dict[str, float] = {}
    window_steps, window_start = 0, time.perf_counter()
    world = session.world
    while session.step < session.total_steps and not session.out_of_time:
        epoch, start_batch = divmod(session.step, session.steps_per_epoch)
        batches = session.source.epoch_batches(epoch, session.rank_batch_size, cfg.seed, session.device,
                                               start_batch, world.rank, world.size)
        for images, labels in batches:
            set_learning_rates(session.objective.optimizers, session.objective.base_lrs,
                               lr_factor(session.step, session.total_steps, cfg.lr_decay_start))
            warming = session.step < session.warmup_steps  # only objectives with a warmup_step have warm-up steps
            update = session.objective.warmup_step if warming else session.objective.step  # type: ignore[attr-defined]
            session.objective.step_index = session.step
            losses = update(prepare_batch(images), prepare_condition(labels))
            for k, v in losses.items():
                sums[k] = sums[k] + v if k in sums else v.clone()
                counts[k] = counts.get(k, 0) + 1
            session.step += 1
            window_steps += 1
            if session.budgeted:
                plan_budget(session, progress)
            progress.advance(session.step)
            step, finished = session.step, session.step >= session.total_steps
            at_log = step % cfg.log_every == 0 or finished or (warming and step == session.warmup_steps)
            signalled, session.out_of_time = stop_requests(session, stop, at_log)
            if at_log or signalled or session.out_of_time:
                last = log_window(session, progress, sums, counts, window_steps, time.perf_counter() - window_start)
                sums, counts, window_steps, window_start = {}, {}, 0, time.perf_counter()
            if step % cfg.sample_every == 0 and world.is_main:
                write_sample_grid(session, grid)
            if signalled:
                session.save(ends_run=True)
                stop.raise_if_requested(session.run_dir, step)
            if session.out_of_time:
                console.info(f"--max-time reached at step {step}; saving a checkpoint, "
                             f"continue with: genai train --resume {session.run_dir}")
                break
            if step % cfg.save_every == 0 and not finished:
                session.save()
            if finished:
                break
    return last


def plan_budget(session: Session, progress: console.StepProgress) -> None:
    """Under --max-time alone, time the steps after BUDGET_WARMUP, then fix the run's length (stored in
    config.json and every checkpoint, so --resume follows the schedule the checkpoint holds).

    - The first plan comes at step BUDGET_PLAN_AT, or for one process after 5% of the budget if that
      is sooner; every rank takes rank 0's plan. It also fixes where an objective's warm-up ends,
      pricing its steps against the full ones by the objective's `warmup_cost`.
    - Revisions come at BUDGET_REVISE of the first plan, at steps every rank derives from it, from the
      speed of the steps since the previous plan (so a machine whose other jobs end mid-run still
      fills its budget), and once more 20 steps after a warm-up ends, from the dearer steps after it.
      Each comes only while the learning rate is flat: until it falls, the rate is the same under any
      plan, so a revision never changes a step already taken.
    """
    step, now, train = session.step, time.monotonic(), session.config.train
    warmup_ended = step == session.warmup_steps > 0
    if step == BUDGET_WARMUP or warmup_ended:
        session.budget_from, session.budget_timer = step, now
    if warmup_ended:
        replan = step + BUDGET_PLAN_AT - BUDGET_WARMUP
        flat = replan < train.lr_decay_start * session.total_steps
        session.next_plan, session.budgeted = (replan, True) if flat else (0, False)
    if step <= session.budget_from or session.deadline is None:
        return
    timed, first = now - session.budget_timer, train.steps == BUDGET_PROVISIONAL_STEPS
    early = first and not session.world.distributed and timed >= BUDGET_PLAN_FRACTION * (session.deadline - session.budget_timer)
    if step != session.next_plan and not early:
        return
    rate = (step - session.budget_from) / max(timed, 1e-9)  # steps a second, of the kind running now
    finish = session.objective.plan_finish(session.source, rate * session.rank_batch_size, session.budget or 0.0)
    left = max(max(session.deadline - now, 0.0) * BUDGET_USE - finish, 0.0)
    cost = choose(type(session.model), train.gan_loss).warmup_cost
    if first and train.warmup:  # a length P whose first warmup*P steps cost `cost` of the others fills what is left
        total = (rate * left + step) / (train.warmup + (1 - train.warmup) / cost)
        train.warmup_steps = int(distributed.broadcast_text(str(max(step, int(train.warmup * total))), session.world))
    warm_left = max(session.warmup_steps - step, 0)
    full_rate = rate * cost if warm_left else rate
    planned = session.warmup_steps if warm_left else step
    planned += max(1, int(full_rate * max(left - warm_left / rate, 0.0)))
    planned = train.steps = int(distributed.broadcast_text(str(planned), session.world))
    if first:
        session.revisions = [int(f * planned) for f in BUDGET_REVISE]
    session.next_plan = next((s for s in session.revisions if step < s < train.lr_decay_start * planned), 0)
    session.budgeted = session.next_plan > 0 or step < session.warmup_steps
    if session.world.is_main:
        ckpt.save_config(session.run_dir, session.config)
    progress.set_total(planned)
    session.budget_from, session.budget_timer = step, now  # the next revision times the steps from here
    warm = f", the first {session.warmup_steps} a warm-up" if first and train.warmup else ""
    console.info(f"--max-time: {'planned' if first else 'revised to'} {planned} steps{warm} "
                 f"({rate * train.batch_size:.0f} images/s)" + ("; the learning-rate schedule ends there" if first else ""))


def stop_requests(session: Session, stop: StopRequest, at_log: bool) -> tuple[bool, bool]:
    """(signalled, out of --max-time) after this step: checked every step on one process;
    several processes agree at log steps (one tiny all-reduce), so no rank waits on a stopped peer."""
    signalled, late = stop.signum is not None, session.past_deadline()
    if not session.world.distributed:
        return signalled, late
    if not at_log:
        return False, False
    signalled, late = distributed.any_rank([signalled, late], session.world, session.device)
    if signalled:
        stop.signum = stop.signum or signal.SIGTERM  # a peer was signalled: this rank stops with it
    return signalled, late


def log_window(session: Session, progress: console.StepProgress, sums: dict[str, torch.Tensor],
               counts: dict[str, int], steps: int, seconds: float) -> dict[str, float]:
    """Average the window's losses over the steps that reported each (the only host sync) and append one metrics line."""
    names = list(sums)
    means = torch.stack([sums[k].float() / counts[k] for k in names]).tolist() if names else []
    losses = dict(zip(names, means))
    bad = [name for name, value in losses.items() if not math.isfinite(value)]
    if distributed.any_rank([bool(bad)], session.world, session.device)[0]:
        raise session.diverged(f"{', '.join(bad) or 'a loss on another process'} became NaN or infinite")
    watch = session.collapse
    if watch and watch.health.loss in losses and (warning := watch.update(session.step, steps, losses[watch.health.loss])):
        console.warn(warning)
    row = {
        "step": session.step,
        "epoch": round(session.step / session.steps_per_epoch, 4),
        **losses,
        "images_per_sec": round(steps * session.config.train.batch_size / max(seconds, 1e-9), 2),
        "time": round(time.time(), 3),
    }
    if session.world.is_main:
        append_line(session.run_dir / rundir.METRICS_FILE, json.dumps(row))
    if session.tensorboard:
        lrs = {f"lr/{name}": opt.param_groups[0]["lr"] for name, opt in session.objective.optimizers.items()}
        session.tensorboard.scalars(session.step, {**{f"loss/{k}": v for k, v in losses.items()},
                                                   "images_per_sec": row["images_per_sec"], **lrs})
    progress.report(session.step, {k: v for k, v in row.items() if k not in ("time", "step")})
    return losses


# ---------------------------------------------------------------- pictures


def write_sample_grid(session: Session, grid: SampleGrid) -> None:
    """samples/step_NNNNNN.png (and TensorBoard's image), drawn by the model users would sample at this step."""
    pixels = grid(session.objective.sampling_model(session.source), session.device)
    atomic_write(session.run_dir / "samples" / f"step_{session.step:06d}.png", imgs.png_bytes(pixels))
    if session.tensorboard:
        session.tensorboard.grid(session.step, pixels)


def write_summaries(session: Session) -> None:
    """loss.svg and report.html from what the run folder holds now. The checkpoint is already saved,
    so nothing here may fail or lose the run: whatever goes wrong is one warning."""
    try:
        write_loss_curve(session.run_dir, session.objective.loss_keys)
        report.write_report(str(session.run_dir))
    except Exception as err:
        console.warn(f"{rundir.LOSS_FILE} and {rundir.REPORT_FILE} were not all written ({type(err).__name__}: {err}); "
                     f"the checkpoint is safe; try `genai report {session.run_dir}`")


def write_loss_curve(run_dir: Path, loss_keys: tuple[str, ...]) -> None:
    """loss.svg: one panel per loss of the objective over the run, as metrics.jsonl logged them."""
    rows = rundir.loss_rows(rundir.read_metrics(run_dir / rundir.METRICS_FILE))
    if keys := [k for k in loss_keys if any(k in r for r in rows)]:
        atomic_write(run_dir / rundir.LOSS_FILE, plots.side_by_side(plots.loss_panels(rows, keys)).encode())
