"""One typed configuration that flows from flags to engine to checkpoint and back.

`Config` is what `genai train` resolves from its flags, what the training loop reads, and
what every checkpoint stores as JSON; `Config.from_json(checkpoint metadata)` is enough to
rebuild the model. Fields left as None are filled from the model family's defaults and the
dataset by `training.resolve_config`, so a stored config is always complete.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any

from genai_cli.errors import UsageError

SCHEMA_VERSION = 2  # 2: train.lr_decay_start (version-1 configs trained at a constant rate)
MAX_IMAGE_SIZE = 1024  # far above what these models train well at; bounds what data or a config can ask for


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


@dataclass
class DataConfig:
    name: str = "fashion-mnist"  # registered name or an image folder path
    data_dir: str | None = None
    split: str = "train"
    classes: list[str] = field(default_factory=list)  # filled from the dataset


@dataclass
class TrainConfig:
    epochs: int = 5
    steps: int | None = None  # total optimisation steps; overrides epochs when set
    batch_size: int = 128
    lr: float | None = None  # family default
    lr_d: float | None = None  # discriminator lr (TTUR); defaults to lr
    lr_decay_start: float | None = None  # fraction of the run after which lr falls linearly to 0; 1 = constant
    beta1: float | None = None  # Adam betas; family default
    beta2: float = 0.999
    gan_loss: str = "bce"  # "bce" (non-saturating) or "hinge"
    ema: float | None = None  # decay of the generator's moving average; 0 = off; family default
    seed: int = 0
    device: str = "auto"
    log_every: int = 50
    sample_every: int = 500
    save_every: int = 1000


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
        if schema not in (1, SCHEMA_VERSION) or isinstance(schema, bool):
            raise ValueError(f"config schema {schema} is not supported (expected {SCHEMA_VERSION})")
        if schema == 1:  # written before learning-rate schedules: those runs continue at a constant rate
            train = raw.get("train")
            raw = {**raw, "train": {"lr_decay_start": 1.0, **train} if isinstance(train, dict) else train}
        sections = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
        unknown = set(raw) - set(sections) - {"schema"}
        if unknown:
            raise ValueError(f"unknown config section(s): {', '.join(sorted(unknown))}")
        return cls(**{name: _build_section(kind, raw.get(name, {})) for name, kind in sections.items()})

    @classmethod
    def from_json(cls, text: str) -> Config:
        return cls.from_dict(json.loads(text))


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
}


def _check_type(section: str, name: str, annotation: str, value: Any) -> None:
    optional = annotation.endswith("| None")
    base = annotation.removesuffix("| None").strip()
    if value is None and optional:
        return
    ok = isinstance(value, _TYPES[base]) and not isinstance(value, bool)
    if base == "list[str]":
        ok = ok and all(isinstance(v, str) for v in value)
    if not ok:
        raise ValueError(f"{section}.{name} must be {annotation}, got {value!r}")


def validate_train(train: TrainConfig) -> None:
    """Reject flag values that cannot work, with the fix in the message."""
    positive = {
        "--batch-size": train.batch_size,
        "--log-every": train.log_every,
        "--sample-every": train.sample_every,
        "--save-every": train.save_every,
    }
    if train.steps is None:
        positive["--epochs"] = train.epochs
    else:
        positive["--steps"] = train.steps
    for flag, value in positive.items():
        if value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    for flag, value in (("--lr", train.lr), ("--lr-d", train.lr_d)):
        if value is not None and not 0 < value < 1:
            raise UsageError(f"{flag} must be between 0 and 1, got {value}")
    if train.lr_decay_start is not None and not 0 <= train.lr_decay_start <= 1:
        raise UsageError(f"--lr-decay-start must be in [0, 1] (a fraction of the run; 1 keeps the rate constant), "
                         f"got {train.lr_decay_start}")
    if train.ema is not None and not 0 <= train.ema < 1:
        raise UsageError(f"--ema must be in [0, 1) (0 turns it off), got {train.ema}")
    if train.gan_loss not in ("bce", "hinge"):
        raise UsageError(f"--gan-loss must be 'bce' or 'hinge', got {train.gan_loss!r}")


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
