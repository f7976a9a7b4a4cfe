"""`genai info`: what a genai file is, from its metadata alone, instantly on any size.

A checkpoint, training state or slim folder is read from its safetensors header (tensors are
never loaded); an ONNX or pt2 export from the genai metadata `genai export` stored in it (ONNX
`metadata_props`; pt2's extra file `genai.json`, read from the zip archive without loading the
program, which would unpickle). Every kind gets the same summary.
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path
from typing import Any

from genai_cli import checkpoint as ckpt
from genai_cli import rundir
from genai_cli.config import Config
from genai_cli.errors import CheckpointError
from genai_cli.export import PT2_METADATA_FILE, SUFFIXES, require_module
from genai_cli.fileio import file_sha256, require_regular_file

ROLE_EXPORT = "export"
BUFFER_SUFFIXES = (".running_mean", ".running_var", ".num_batches_tracked")  # BatchNorm statistics, not parameters
DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64", "I64": "int64"}
MAX_PT2_METADATA_BYTES = 16 * 1024 * 1024  # genai.json is a few KB; refuse to inflate an absurd one


def describe(target: str | None) -> dict[str, Any]:
    """The summary of a run directory, model file, training state, slim folder, or .onnx/.pt2 export."""
    path = rundir.resolve_model_path(target)  # None: runs/latest, with its own message when the link is dangling
    fmt = SUFFIXES.get(path.suffix.lower())
    summary = describe_export(path, fmt) if fmt else describe_checkpoint(path)
    return {**summary, "file_bytes": path.stat().st_size, "sha256": file_sha256(path)}


def describe_checkpoint(path: Path) -> dict[str, Any]:
    metadata, index, _ = ckpt.read_header(path)
    ckpt.require_genai(path, metadata, role=None)
    config = ckpt.config_from_metadata(path, metadata)
    role = metadata.get("genai.role", ckpt.ROLE_MODEL)
    # a training state also holds optimiser moments and RNG states; its weights are "model.*"
    weights = {k.removeprefix("model."): v for k, v in index.items() if role == ckpt.ROLE_MODEL or k.startswith("model.")}
    parameters: dict[str, int] = {}
    try:
        for name, entry in weights.items():
            if not name.endswith(BUFFER_SUFFIXES):
                part = name.split(".")[0]
                parameters[part] = parameters.get(part, 0) + math.prod(int(d) for d in entry["shape"])
        dtypes = sorted({DTYPE_NAMES.get(entry["dtype"], str(entry["dtype"]).lower()) for entry in weights.values()})
        step, epoch = int(metadata.get("genai.step", 0)), int(metadata.get("genai.epoch", 0))
    except (TypeError, KeyError, ValueError, OverflowError) as err:
        raise CheckpointError(f"{path} has a corrupt tensor index or metadata; it is damaged or not a checkpoint") from err
    return summary(path, config, metadata, role, metadata.get("genai.contents", "full"), step, epoch,
                   {"total": sum(parameters.values()), **parameters}, len(weights), dtypes)


def describe_export(path: Path, fmt: str) -> dict[str, Any]:
    """An .onnx or .pt2 file `genai export` wrote: its genai metadata, plus how to feed the graph."""
    require_regular_file(path, "pass a file genai export wrote", CheckpointError)
    metadata = onnx_metadata(path) if fmt == "onnx" else pt2_metadata(path)
    if "genai.config" not in metadata or "genai.kind" not in metadata:
        raise CheckpointError(f"{path} is a {fmt} file without genai metadata; `genai info` reads the exports "
                              "`genai export` writes, and genai checkpoints")
    config = ckpt.config_from_metadata(path, metadata)
    try:
        step = int(metadata.get("genai.step", 0))
        epoch = int(metadata["genai.epoch"]) if "genai.epoch" in metadata else None  # older exports do not say
        parameters = json.loads(metadata["genai.parameters"]) if "genai.parameters" in metadata else None
        graph = {"inputs": json.loads(metadata["genai.inputs"]), "output": metadata["genai.output"],
                 "output_range": metadata["genai.output_range"], "source_sha256": metadata.get("genai.source_sha256")}
        if not isinstance(graph["inputs"], dict) or parameters is not None and not (
                isinstance(parameters, dict) and all(isinstance(v, int) for v in parameters.values()) and "total" in parameters):
            raise ValueError("genai.inputs or genai.parameters is not genai's")
    except (KeyError, ValueError, RecursionError) as err:
        raise CheckpointError(f"{path} has unreadable genai metadata ({type(err).__name__}); it was edited or damaged: "
                              "export it again") from err
    return summary(path, config, metadata, ROLE_EXPORT, fmt, step, epoch, parameters, None, ["float32"]) | graph


def summary(path: Path, config: Config, metadata: dict[str, str], role: str, contents: str, step: int,
            epoch: int | None, parameters: dict[str, int] | None, tensors: int | None, dtypes: list[str]) -> dict[str, Any]:
    m = config.model
    return {
        "path": str(path),
        "real_path": str(path.resolve()),  # which run runs/latest points at
        "role": role,
        "contents": contents,
        "kind": m.kind,
        "version": metadata.get("genai.version"),
        "step": step,
        "epoch": epoch,
        "dataset": config.data.name,
        "classes": config.data.classes,
        "image_shape": [m.channels, m.image_size, m.image_size],
        "latent_dim": m.latent_dim,
        "device": metadata.get("genai.device"),
        "config": config.to_dict(),
        "parameters": parameters,
        "tensors": tensors,
        "dtypes": dtypes,
        "kept": ckpt.kept_judgement(metadata),
    }


def onnx_metadata(path: Path) -> dict[str, str]:
    require_module("onnx", f"reading {path.name}")
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf's DecodeError and onnx's own: not an ONNX model
        raise CheckpointError(f"{path} is not a readable ONNX file ({type(err).__name__}); it is damaged or "
                              "not an export: export it again") from err
    return {prop.key: prop.value for prop in model.metadata_props}


def pt2_metadata(path: Path) -> dict[str, str]:
    """torch.export.save stores extra files as <archive>/extra/<name> in a zip."""
    try:
        with zipfile.ZipFile(path) as archive:
            entry = next((e for e in archive.infolist() if e.filename.endswith(f"/extra/{PT2_METADATA_FILE}")), None)
            if entry is None:
                return {}
            if entry.file_size > MAX_PT2_METADATA_BYTES:
                raise CheckpointError(f"{path} holds a {entry.file_size:,}-byte {PT2_METADATA_FILE}; it is not genai's")
            metadata = json.loads(archive.read(entry))
    except (zipfile.BadZipFile, OSError, ValueError, RecursionError) as err:
        raise CheckpointError(f"{path} is not a readable pt2 archive ({type(err).__name__}); it is damaged or "
                              "not an export: export it again") from err
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path} has a {PT2_METADATA_FILE} that is not genai's string map; export it again")
    return metadata


def info_text(info: dict[str, Any]) -> str:
    """`genai info` for people: a few aligned lines (strings from the file shown with control characters escaped)."""
    m = info["config"]["model"]
    what = {ckpt.ROLE_MODEL: "model file", ckpt.ROLE_STATE: "training state, for --resume"}.get(info["role"], info["role"])
    if info["contents"] == ckpt.GENERATING_HALF or info["role"] == ROLE_EXPORT:
        what = f"{'slim' if info['role'] != ROLE_EXPORT else info['contents']} export: generating half only"
    c, h, w = info["image_shape"]
    epoch = f", epoch {info['epoch']}" if info["epoch"] is not None else ""
    device = f"device {info['device']}, " if info["device"] else ""
    rows = [
        ("kind", f"{info['kind']} ({what})"),
        ("model", (f"input {m['in_channels']}x{h}x{w}" if m.get("in_channels") else f"latent {info['latent_dim']}")
                  + f", width {m['width']}, image {c}x{h}x{w}, "
                  + (f"{m['num_classes']} classes" if m["num_classes"] else "unconditional")),
        ("trained", f"step {info['step']}{epoch}, on {info['dataset']} ({device}genai {info['version']})"),
        *([("kept", f"the run's best checkpoint: FID {kept['fid']:.2f} ({kept.get('features', '?')} features, "
                    f"{kept.get('samples', '?')} samples)")] if (kept := info.get("kept")) else []),
        *([("classes", ", ".join(info["classes"]))] if info["classes"] else []),
        ("parameters", _parameters(info["parameters"]) + f", {'/'.join(info['dtypes'])}"),
        *([("inputs", "; ".join(f"{k} {v}" for k, v in info["inputs"].items())),
           ("output", f"{info['output']} in {info['output_range']}")] if info["role"] == ROLE_EXPORT else []),
        ("file", f"{info['file_bytes']:,} bytes, sha256 {info['sha256']}"),
    ]
    linked = Path(info["path"]).absolute() != Path(info["real_path"])  # e.g. through runs/latest
    title = f"{info['path']} -> {info['real_path']}" if linked else info["path"]
    return "\n".join(ckpt.printable(line) for line in [title, *(f"  {key:<11} {value}" for key, value in rows)])


def _parameters(parameters: dict[str, int] | None) -> str:
    if parameters is None:
        return "not recorded (exported by an older genai)"
    parts = ", ".join(f"{k} {_millions(v)}" for k, v in parameters.items() if k != "total")
    return f"{parameters['total']:,} ({parts})"


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n:,}"
