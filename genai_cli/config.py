"""One typed configuration that flows from flags to engine to checkpoint and back.

`Config` is what `genai train` resolves from its flags, what the training loop reads, and
what every checkpoint stores as JSON; `Config.from_json(checkpoint metadata)` is enough to
rebuild the model. Fields left as None are filled from the model family's defaults and the
dataset by `training.resolve_config`, so a stored config is always complete.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from genai_cli.errors import UsageError

SCHEMA_VERSION = 16  # 2: train.lr_decay_start; 3: model.prior; 4: paired data (pix2pix); 5: train.warmup; 6: model.dropout; 7: train.keep;
# 8: model.likelihood and model.prior_components; 9: train.augment; 10: train.r1; 11: model.class_norm;
# 12: train.class_loss; 13: train.precision; 14: model.best_of; 15: model.full_res_conv; 16: model.minibatch_std.
# Older configs load with what their runs did (precision aside: see UPGRADES).
MAX_IMAGE_SIZE = 1024  # far above what these models train well at; bounds what data or a config can ask for
# What torch.Generator.manual_seed takes; it also takes negatives, but -s is the same state as 2^64 - s.
SEED_RANGE = (0, 2**64 - 1)


@dataclass
class ModelConfig:
    """Everything needed to rebuild the network; nothing about how it was trained."""

    kind: str = "dcgan"
    latent_dim: int | None = None  # family default (100 for GANs, 32 for VAEs)
    channels: int | None = None  # from the dataset
    image_size: int | None = None  # from the dataset
    num_classes: int = 0  # > 0 only for conditional families
    width: int = 64  # base channel count (ngf/ndf) for conv models
    beta: float = 1.0  # VAE: weight of the KL term (beta-VAE)
    norm: str = "batch"  # "batch", "group" or "none" (see models.blocks.norm_layer)
    prior: str | None = None  # latents: "standard" N(0, I) or "fitted" to the codes (VAEs); family default
    prior_components: int | None = None  # Gaussians in a fitted prior (per class for cvae); family default
    likelihood: str | None = None  # the VAE decoder's p(x | z): "gaussian" or "bernoulli"; family default
    in_channels: int | None = None  # channels of the input image, for models that translate one (pix2pix)
    dropout: float = 0.0  # dropout after each hidden layer of the MLP GAN's discriminator (0.3 before schema 6)
    class_norm: bool | None = None  # labels set the scale and shift of each normalisation in G (cgan) or the decoder (cvae); family default
    best_of: int | None = None  # cvae with a class loss: candidates per sample, the one its classifier is surest of kept; 1 = off; family default
    full_res_conv: bool | None = None  # dcgan, cgan: a 3x3 conv at full resolution makes G's image (models.blocks.ConvGenerator); family default
    minibatch_std: int | None = None  # gan: D sees its features' spread over groups of this many images (models.gan.MinibatchStd); 0 = off; family default


@dataclass
class DataConfig:
    name: str = "fashion-mnist"  # registered name or an image folder path
    data_dir: str | None = None
    split: str = "train"
    classes: list[str] = field(default_factory=list)  # filled from the dataset
    pairs: str | None = None  # paired data (pix2pix): "folder", or inputs derived from the images: "edges", ...
    direction: str = "AtoB"  # which side of a paired folder is the input


@dataclass
class TrainConfig:
    epochs: int = 5
    steps: int | None = None  # total optimisation steps; overrides epochs when set
    batch_size: int | None = None  # images per step, all processes together; family default (128)
    lr: float | None = None  # family default
    lr_d: float | None = None  # discriminator lr (TTUR); defaults to lr
    lr_decay_start: float | None = None  # fraction of the run after which lr falls linearly to 0; 1 = constant
    warmup: float | None = None  # fraction of the run spent on the objective's warm-up step first; objective default
    warmup_steps: int | None = None  # where the warm-up ends: fixed once the run's length is first known, kept on resume
    beta1: float | None = None  # Adam betas; family default
    beta2: float = 0.999
    gan_loss: str = "bce"  # picks the adversarial objective: "bce" (non-saturating), "hinge", ... (genai_cli.objectives)
    ema: float | None = None  # decay of the generator's moving average; 0 = off; family default
    augment: str = "none"  # DiffAugment's transforms of what a GAN's discriminator sees (genai_cli.augment)
    r1: float | None = None  # weight (gamma) of the R1 penalty on D's gradient at real images; 0 = off; family default
    class_loss: float | None = None  # weight of the auxiliary class loss (cgan: its projection D read as a classifier); 0 = off
    seed: int = 0
    device: str = "auto"
    precision: str | None = None  # "bf16" (mixed) or "fp32"; None: bf16 where the device computes it natively, fixed at plan
    log_every: int = 50
    sample_every: int = 500
    save_every: int = 1000
    keep: str | None = None  # what model.safetensors holds: "last" or "best" (judged, genai_cli.selection); None: chosen at plan


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, **dataclasses.asdict(self)}

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Config:
        """Strict: an unknown key or a wrong type is an error, not a silent default."""
        if not isinstance(raw, dict):
            raise ValueError("config must be a JSON object")
        schema = raw.get("schema", SCHEMA_VERSION)
        if not isinstance(schema, int) or isinstance(schema, bool) or not 1 <= schema <= SCHEMA_VERSION:
            raise ValueError(f"config schema {schema} is not supported (expected {SCHEMA_VERSION})")
        raw = _upgrade(raw, schema)
        sections = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
        unknown = set(raw) - set(sections) - {"schema"}
        if unknown:
            raise ValueError(f"unknown config section(s): {', '.join(sorted(unknown))}")
        return cls(**{name: _build_section(kind, raw.get(name, {})) for name, kind in sections.items()})

    @classmethod
    def from_json(cls, text: str) -> Config:
        return cls.from_dict(json.loads(text))


# What each schema added, and the value that reproduces how runs of older schemas trained and sample.
# A value may be a function of the raw config, for a field whose old value depended on the family.
UPGRADES: dict[int, tuple[tuple[str, str, Any], ...]] = {
    2: (("train", "lr_decay_start", 1.0),),
    3: (("model", "prior", "standard"),),
    4: (("model", "in_channels", None), ("data", "pairs", None), ("data", "direction", "AtoB")),
    5: (("train", "warmup", 0.0), ("train", "warmup_steps", 0)),
    6: (("model", "dropout", lambda raw: 0.3 if raw["model"].get("kind") == "gan" else 0.0),),
    7: (("train", "keep", "last"),),
    8: (("model", "prior_components", lambda raw: 1 if raw["model"].get("prior") == "fitted" else None),
        ("model", "likelihood", lambda raw: "bernoulli" if raw["model"].get("kind") in ("vae", "cvae") else None)),
    9: (("train", "augment", "none"),),
    10: (("train", "r1", 0.0),),
    11: (("model", "class_norm", False),),
    12: (("train", "class_loss", 0.0),),
    13: (("train", "precision", None),),  # bf16 had been CUDA's only, so older runs choose again where they resume
    14: (("model", "best_of", 1),),
    15: (("model", "full_res_conv", False),),
    16: (("model", "minibatch_std", 0),),
}


def _upgrade(raw: dict[str, Any], schema: int) -> dict[str, Any]:
    """An older config with the fields later schemas added, set to what its run did."""
    for version, fields in UPGRADES.items():
        for section, name, value in fields:
            if schema < version and isinstance(raw.get(section), dict):
                raw = {**raw, section: {name: value(raw) if callable(value) else value, **raw[section]}}
    return raw


def _build_section(kind: type, raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise ValueError(f"config section {kind.__name__} must be a JSON object")
    fields = {f.name: f for f in dataclasses.fields(kind)}
    unknown = set(raw) - set(fields)
    if unknown:
        raise ValueError(f"unknown {kind.__name__} field(s): {', '.join(sorted(unknown))}")
    for name, value in raw.items():
        _check_type(kind.__name__, name, fields[name].type, value)
    return kind(**raw)


_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "list[str]": (list,),
    "bool": (bool,),
}


def _check_type(section: str, name: str, annotation: str, value: Any) -> None:
    optional = annotation.endswith("| None")
    base = annotation.removesuffix("| None").strip()
    if value is None and optional:
        return
    ok = isinstance(value, _TYPES[base]) and (base == "bool") == isinstance(value, bool)
    if base == "list[str]":
        ok = ok and all(isinstance(v, str) for v in value)
    if not ok:
        raise ValueError(f"{section}.{name} must be {annotation}, got {value!r}")


@dataclass(frozen=True)
class Bound:
    """The values a flag takes: low..high, an open end excluding that end. NaN and inf never pass."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def lower(self) -> str:
        if self.low_open:
            return "positive" if self.low == 0 else f"above {_number(self.low)}"
        return f"at least {_number(self.low)}"

    def __str__(self) -> str:
        if self.high == math.inf:
            return self.lower()
        return f"in {'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}{')' if self.high_open else ']'}"


def _number(x: float) -> str:
    """4096, not 4096.0 or 4.096e+03; 2^64 - 1 in full."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 2**65 else f"{x:g}"


UNIT_OPEN = Bound(0, 1, low_open=True, high_open=True)
DECAY = Bound(0, 1, high_open=True)  # Adam's beta1 and the EMA decay: 0 is allowed, 1 never forgets
COUNT = Bound(1, math.inf)
DROPOUT = Bound(0, 1, high_open=True)
# Every numeric flag's range, in one place. Upper bounds keep a value from reaching the engine where
# it could only fail late or allocate without end: a latent of 4096 and a width of 1024 are far beyond
# what these models use (100 and 64); what a size needs in memory is checked against the machine too.
BOUNDS: dict[str, Bound] = {
    "--latent-dim": Bound(1, 4096),
    "--width": Bound(1, 1024),
    "--beta": Bound(0, 1e4),
    "--prior-components": Bound(1, 1000),  # EM's cost grows with it; 100 already fits Fashion-MNIST's codes closely
    "--best-of": Bound(1, 64),  # each sample costs this many decoder and classifier passes
    "--minibatch-std": Bound(0, 1024),  # a group larger than a batch is the batch
    "--epochs": Bound(1, 1e6),
    "--steps": Bound(1, 1e12),
    "--batch-size": Bound(1, 65536),
    "--lr": UNIT_OPEN,
    "--lr-d": UNIT_OPEN,
    "--lr-decay-start": Bound(0, 1),  # a fraction of the run; 1 keeps the rate constant
    "--warmup": Bound(0, 1, high_open=True),  # a fraction of the run; all of it would leave no step for the objective itself
    "--beta1": DECAY,
    "--ema": DECAY,
    "--r1": Bound(0, 1e4),  # published gammas run from 0.01 (CIFAR-10) to 100 (1024-px faces)
    "--class-loss": Bound(0, 100),
    "--seed": Bound(*SEED_RANGE),
    "--log-every": COUNT,
    "--sample-every": COUNT,
    "--save-every": COUNT,
    "--nproc-per-node": Bound(1, 1024),
    "--n": COUNT,
    "--nrow": COUNT,
    "--trunc": Bound(0, 1),  # sample's truncation psi: 1 keeps the latents, 0 collapses them onto their mean
    "--iw-samples": Bound(1, 100_000),
    "--tolerance": Bound(0, math.inf, low_open=True),
}


def check_range(flag: str, value: float | None, bound: Bound | None = None) -> None:
    """A UsageError naming the flag, the value and its valid range unless `value` is None or in range."""
    bound = bound or BOUNDS[flag]
    if value is None or bound.holds(value):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageError(f"{flag} must be a finite number ({bound}), got {value}")
    if bound.high == math.inf or not (value > bound.low if bound.low_open else value >= bound.low):
        raise UsageError(f"{flag} must be {bound.lower()}, got {value}" + ("" if bound.high == math.inf else f" (valid {bound})"))
    raise UsageError(f"{flag} must be {bound}, got {value}")


def check_paths(paths: dict[str, str | None]) -> None:
    """A path flag given as an empty string is a mistake (an unset shell variable), never 'the default'."""
    for flag, value in paths.items():
        if value is not None and not value.strip():
            raise UsageError(f"{flag} is empty; give a path, or leave the flag out for its default")


def validate_model(model: ModelConfig, latent: bool = True) -> None:
    """Model flags within their ranges (image size and channels are checked with the data); `latent`
    False for a family without one (its --latent-dim is refused where the family's defaults are filled)."""
    for flag, value in (("--latent-dim", model.latent_dim if latent else None), ("--width", model.width),
                        ("--beta", model.beta), ("--prior-components", model.prior_components), ("--best-of", model.best_of),
                        ("--minibatch-std", model.minibatch_std)):
        check_range(flag, value)
    check_range("model.dropout", model.dropout, DROPOUT)  # no flag sets it: only an edited file can break it


def validate_train(train: TrainConfig) -> None:
    """Reject flag values that cannot work, with the valid range in the message."""
    for flag in ("--batch-size", "--log-every", "--sample-every", "--save-every", "--lr", "--lr-d", "--lr-decay-start",
                 "--warmup", "--beta1", "--ema", "--r1", "--class-loss", "--seed"):
        check_range(flag, getattr(train, flag[2:].replace("-", "_")))
    check_range("--steps", train.steps) if train.steps is not None else check_range("--epochs", train.epochs)


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([smhd]?)")


def parse_duration(text: str) -> float:
    """'90', '90s', '10m', '1.5h', '1h30m' -> seconds (a bare number is seconds)."""
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION_PART.findall(compact)
    if not compact or "".join(number + unit for number, unit in parts) != compact:
        raise UsageError(f"--max-time {text!r} is not a duration; write it like 90s, 10m, 1h30m or 2h")
    seconds = sum(float(number) * _DURATION_UNITS[unit or "s"] for number, unit in parts)
    if seconds <= 0:
        raise UsageError(f"--max-time must be longer than zero, got {text!r}")
    return seconds
