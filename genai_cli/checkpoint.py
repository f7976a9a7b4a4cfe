"""The on-disk contract: safetensors files with genai metadata, written atomically.

A run directory holds
  model.safetensors           the model's weights; its metadata holds the full config, so the
                              file alone rebuilds and samples the model
  training_state.safetensors  weights again, optimiser moments, RNG states, step and epoch:
                              everything `--resume` needs, in one file so it is never half old
  config.json                 the same config, for people
A slim export (`genai export --format safetensors`) is a model.safetensors whose metadata says
`genai.contents: generating-half`: it holds only the generator (or decoder) weights, under
their names in the full model, possibly in float16/bfloat16; `load_model` loads those into the
rebuilt model in float32, so sampling works and nothing else needs to know.
Nothing here unpickles: headers are parsed and bounds-checked before safetensors reads the
tensors, so a truncated, foreign or hostile file is a one-line CheckpointError.
"""

from __future__ import annotations

import json
import math
import random
import struct
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from genai_cli import __version__
from genai_cli.config import Config
from genai_cli.console import printable
from genai_cli.errors import CheckpointError
from genai_cli.fileio import atomic_write, require_regular_file

MODEL_FILE = "model.safetensors"
STATE_FILE = "training_state.safetensors"
CONFIG_FILE = "config.json"
STATE_SECTIONS = ("model", "optim", "rng")  # a training state's own tensors; every other prefix names a companion
MAX_HEADER_BYTES = 64 * 1024 * 1024  # real headers are a few KB; refuse to allocate absurd ones
ROLE_MODEL, ROLE_STATE = "model", "training-state"
KEPT_KEY = "genai.kept"  # a model file's metadata under `train --keep best`: the judge's score of the model it holds
GENERATING_HALF = "generating-half"  # genai.contents of a slim export


@dataclass
class Checkpoint:
    """A model file read back: the rebuilt config, its metadata and its tensors."""

    path: Path
    config: Config
    metadata: dict[str, str]
    tensors: dict[str, torch.Tensor]

    @property
    def step(self) -> int:
        return int(self.metadata.get("genai.step", 0))


# ---------------------------------------------------------------- writing


def model_metadata(config: Config, role: str, step: int, epoch: int, device: str) -> dict[str, str]:
    m = config.model
    return {
        "format": "pt",
        "genai.role": role,
        "genai.kind": m.kind,
        "genai.version": __version__,
        "genai.config": config.to_json(),
        "genai.dataset": config.data.name,
        "genai.image_shape": json.dumps([m.channels, m.image_size, m.image_size]),
        "genai.classes": json.dumps(config.data.classes),
        "genai.step": str(step),
        "genai.epoch": str(epoch),
        "genai.device": device,
    }


def kept_judgement(metadata: dict[str, str]) -> dict[str, Any] | None:
    """`train --keep best`: what the judge said of the model a file holds ({"fid", ...}); None when
    it was not judged, or the entry is not genai's."""
    try:
        judged = json.loads(metadata[KEPT_KEY])
    except (KeyError, ValueError, RecursionError):
        return None
    fid = judged.get("fid") if isinstance(judged, dict) else None
    return judged if isinstance(fid, (int, float)) and not isinstance(fid, bool) and math.isfinite(fid) else None


def weights_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of parameters and buffers, ready for safetensors (no shared storage)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def save_model(path: Path, model: torch.nn.Module, config: Config, step: int, epoch: int, device: str,
               extra: dict[str, str] | None = None) -> None:
    """`extra`: more metadata, e.g. the judge's score of a kept model (genai_cli.selection)."""
    meta = model_metadata(config, ROLE_MODEL, step, epoch, device) | (extra or {})
    atomic_write(path, save_tensors(weights_of(model), metadata=meta))


def save_config(run_dir: Path, config: Config) -> None:
    atomic_write(run_dir / CONFIG_FILE, (config.to_json(indent=2) + "\n").encode())


# ---------------------------------------------------------------- reading


def read_header(path: Path) -> tuple[dict[str, str], dict[str, Any], int]:
    """(metadata, tensor index, data length) from a safetensors header, checked against the file.

    Reads only the header, so `genai info` and kind checks cost nothing for large files.
    """
    require_regular_file(path, "pass a run directory or a .safetensors file", CheckpointError)
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{path} is not a checkpoint ({size} bytes, too short to be safetensors); use an intact checkpoint")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > min(size - 8, MAX_HEADER_BYTES):
                raise CheckpointError(
                    f"{path} is truncated or not a safetensors file (header claims {header_len} bytes, "
                    f"file has {size}); use an intact checkpoint"
                )
            raw = handle.read(header_len)
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err.strerror or err}") from err
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as err:  # also over-long integers and absurd nesting
        raise CheckpointError(f"{path} has a corrupt safetensors header; it is damaged or not a checkpoint") from err
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a corrupt safetensors header; it is damaged or not a checkpoint")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path} has corrupt safetensors metadata (not a map of strings); it is damaged or not a checkpoint")
    data_len = size - 8 - header_len
    _check_extent(path, header, data_len)
    return metadata, header, data_len


def _check_extent(path: Path, index: dict[str, Any], data_len: int) -> None:
    try:
        end = max((int(entry["data_offsets"][1]) for entry in index.values()), default=0)
    except (TypeError, KeyError, IndexError, ValueError, OverflowError) as err:
        raise CheckpointError(f"{path} has a corrupt tensor index; it is damaged or not a checkpoint") from err
    if end > data_len:
        raise CheckpointError(
            f"{path} is truncated ({data_len} of {end} data bytes); re-save it or use an earlier checkpoint"
        )


def read_metadata(path: Path, role: str = ROLE_MODEL) -> dict[str, str]:
    """Header metadata of a genai file of the given role, or a CheckpointError saying why not."""
    metadata, _, _ = read_header(path)
    return require_genai(path, metadata, role)


def require_genai(path: Path, metadata: dict[str, str], role: str | None = ROLE_MODEL) -> dict[str, str]:
    """`metadata` if it is a genai file's (of `role`, unless None), else a CheckpointError saying why not."""
    if "genai.config" not in metadata or "genai.kind" not in metadata:
        raise CheckpointError(
            f"{path} is a safetensors file but not a genai checkpoint (no genai metadata); "
            "use a model.safetensors written by `genai train`"
        )
    if role is not None and metadata.get("genai.role", ROLE_MODEL) != role:
        raise CheckpointError(f"{path} is a genai {printable(metadata.get('genai.role'))} file, not a {role} file; pass the run directory or its model.safetensors")
    return metadata


def config_from_metadata(path: Path, metadata: dict[str, str]) -> Config:
    try:
        return Config.from_json(metadata["genai.config"])
    except (ValueError, TypeError, RecursionError) as err:
        raise CheckpointError(f"{path} has an unreadable genai config ({printable(err)}); the file was edited or damaged: use an intact checkpoint") from err


def load_file(path: Path, role: str = ROLE_MODEL) -> Checkpoint:
    metadata = read_metadata(path, role)
    config = config_from_metadata(path, metadata)
    try:
        int(metadata.get("genai.step", 0)), int(metadata.get("genai.epoch", 0))
    except ValueError as err:
        raise CheckpointError(f"{path} has an unreadable step or epoch ({err}); the file was edited or damaged: use an intact checkpoint") from err
    try:
        tensors = load_tensors(path.read_bytes())
    except Exception as err:  # safetensors raises its own error types for malformed data
        raise CheckpointError(f"{path} has unreadable tensor data ({printable(err)}); it is damaged") from err
    return Checkpoint(path, config, metadata, tensors)


def load_weights_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Strict load with a one-line error when names, shapes or dtypes do not match."""
    tensors = upgrade_tensors(module, tensors)
    check_weights(module, tensors, path)
    module.load_state_dict(tensors)


def upgrade_tensors(module: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`tensors` in the layout `module` has now: a submodule whose buffers changed layout since older
    files were written says how to convert them (`upgrade_tensors(prefix, tensors)`, in place)."""
    tensors = dict(tensors)
    for name, sub in module.named_modules():
        if hasattr(sub, "upgrade_tensors"):
            sub.upgrade_tensors(f"{name}." if name else "", tensors)
    return tensors


def check_weights(module: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """A one-line CheckpointError unless `tensors` has exactly the module's names, shapes and dtypes."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [k for k in expected if k in tensors and (tensors[k].shape != expected[k].shape or tensors[k].dtype != expected[k].dtype)]
    if missing or unexpected or wrong:
        detail = (
            f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected else f"wrong shape or dtype for {wrong[:3]}"
        )
        raise CheckpointError(f"{path} does not match its own config ({printable(detail)}); the file is damaged or was edited: use an intact checkpoint")


# ---------------------------------------------------------------- training state


def flatten_state(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Split nested state (optimiser, RNG) into JSON-able structure plus named tensors."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": prefix}
    if isinstance(obj, np.ndarray):
        tensors[prefix] = torch.from_numpy(obj.copy())
        return {"__ndarray__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[flatten_state(k, f"{prefix}.k{i}", tensors), flatten_state(v, f"{prefix}.{i}", tensors)] for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        items = [flatten_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    return obj


def unflatten_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [unflatten_state(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return tensors[obj["__ndarray__"]].numpy()
    if "__tuple__" in obj:
        return tuple(unflatten_state(v, tensors) for v in obj["__tuple__"])
    return {unflatten_state(k, tensors): unflatten_state(v, tensors) for k, v in obj["__dict__"]}


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(
    path: Path, model: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer],
    config: Config, step: int, epoch: int, device: str, companions: dict[str, torch.nn.Module] | None = None,
) -> None:
    """The model, the optimisers, the RNGs and the modules training keeps beside the model (`companions`:
    the moving average, a cvae's classifier), each companion's weights under its name."""
    tensors = {f"model.{k}": v for k, v in weights_of(model).items()}
    for name, module in (companions or {}).items():
        assert name not in STATE_SECTIONS, name
        tensors |= {f"{name}.{k}": v for k, v in weights_of(module).items()}
    extra = {
        "optimizers": flatten_state({k: o.state_dict() for k, o in optimizers.items()}, "optim", tensors),
        "rng": flatten_state(rng_state(), "rng", tensors),
    }
    meta = model_metadata(config, ROLE_STATE, step, epoch, device)
    meta["genai.state"] = json.dumps(extra)
    atomic_write(path, save_tensors(tensors, metadata=meta))


@dataclass
class TrainingState:
    checkpoint: Checkpoint
    model_weights: dict[str, torch.Tensor]
    companions: dict[str, dict[str, torch.Tensor]]  # name -> weights (the moving average under "ema"), as saved
    optimizers: dict[str, Any]
    rng: dict[str, Any]


def load_training_state(run_dir: Path) -> TrainingState:
    path = run_dir / STATE_FILE
    if not path.exists():
        raise CheckpointError(f"{run_dir} has no {STATE_FILE}; --resume takes a run directory written by `genai train`")
    ckpt = load_file(path, ROLE_STATE)
    try:
        extra = json.loads(ckpt.metadata["genai.state"])
        optimizers = unflatten_state(extra["optimizers"], ckpt.tensors)
        rng = unflatten_state(extra["rng"], ckpt.tensors)
    except (KeyError, TypeError, ValueError, RecursionError) as err:
        raise CheckpointError(f"{path} has unreadable training state ({printable(err)}); the file was edited or damaged: use an intact checkpoint") from err
    sections: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in ckpt.tensors.items():
        section, _, name = key.partition(".")
        sections.setdefault(section, {})[name] = value
    companions = {k: v for k, v in sections.items() if k not in STATE_SECTIONS}
    return TrainingState(ckpt, sections.get("model", {}), companions, optimizers, rng)


# ---------------------------------------------------------------- rebuilding


def load_model(checkpoint: str | None, device: torch.device, expect_kind: str | None = None):
    """Rebuild a model from a model file alone: (model on `device` in eval mode, checkpoint)."""
    from genai_cli.models import MODELS  # models import torch.nn; checkpoint stays light to import
    from genai_cli.rundir import resolve_model_path  # run directories build on this module

    path = resolve_model_path(checkpoint)
    loaded = load_file(path)
    kind = loaded.config.model.kind
    if expect_kind and kind != expect_kind:
        raise CheckpointError(f"{path} holds a {printable(kind)} model, not {expect_kind}; pass a {expect_kind} checkpoint")
    if kind not in MODELS:
        raise CheckpointError(f"{path} holds a model kind {kind!r} this genai does not know; upgrade genai")

    def build(on_meta: bool) -> torch.nn.Module:
        try:
            with torch.device("meta") if on_meta else nullcontext():
                return MODELS.get(kind).build(loaded.config.model)
        except Exception as err:  # a config no model can be built from: edited or damaged, not a flag error
            raise CheckpointError(
                f"{path} holds a {kind} config that cannot be built ({printable(str(err).splitlines()[0]) if str(err) else type(err).__name__}); "
                "the file was edited or damaged"
            ) from err

    # Shapes first, on the meta device (no memory): a config edited to a huge width must not allocate
    # before it is refused; a model that matches the file's tensors is as small as the file.
    model = build(on_meta=True)
    half = loaded.metadata.get("genai.contents") == GENERATING_HALF
    weights = loaded.tensors
    if half:
        prefix = generating_prefix(model)
        weights = {k.removeprefix(prefix): v.float() if v.is_floating_point() else v for k, v in weights.items()}
    weights = upgrade_tensors(model.generating_half() if half else model, weights)
    check_weights(model.generating_half() if half else model, weights, path)
    model = build(on_meta=False)
    (model.generating_half() if half else model).load_state_dict(weights)  # upgraded and checked above
    return model.to(device).eval(), loaded


def generating_prefix(model: torch.nn.Module) -> str:
    """'generator.' or 'decoder.': where the generating half's weights sit in the full model's names."""
    half = model.generating_half()
    return next(name for name, child in model.named_children() if child is half) + "."
