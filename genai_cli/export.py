"""Taking a trained model elsewhere (`genai export`).

What ships is the generating half only (generator or decoder: latent [+ label] -> image),
wrapped so the exported graph has exactly the inputs `z` (float32 [batch, latent]) and
`label` (int64 [batch], conditional models only), or `input` (float32 [batch, C, H, W] in
[-1, 1]) for a model that translates images (pix2pix), and the output `image` (float32
[batch, C, H, W] in [-1, 1], or [0, 1] with `unit_range`), with a dynamic batch dimension.

Formats: ONNX (torch.onnx.export with dynamo, metadata in `metadata_props`), pt2
(torch.export.save, metadata in the `genai.json` extra file), and a slim safetensors folder
(config.json, model.safetensors with only the generating half's weights, README.md) that
genai itself loads back. Every artefact is written into a private folder beside --out,
checked there against the PyTorch model (max |difference| over fixed-seed batches), and only
then moved over --out: a failed check or a crash leaves --out as it was. `genai info` reads the
metadata back (info.py).
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_tensors
from torch import nn

from genai_cli import __version__, console
from genai_cli import checkpoint as ckpt
from genai_cli.errors import ExportCheckFailed, GenaiError, UsageError
from genai_cli.fileio import atomic_write, file_sha256, move_into_place, write_error
from genai_cli.models import MODELS, GenerativeModel
from genai_cli.sampling import choose_best_of, latents

FORMATS = ("onnx", "pt2", "safetensors")
SUFFIXES = {".onnx": "onnx", ".pt2": "pt2"}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Max |exported - PyTorch| on the [-1, 1] image scale, where one 8-bit grey level is 2/255 ~ 0.0078.
# float32 graphs differ only by operator order and fusion (<1e-6 measured); half-precision
# weights round every weight to 11 (float16) or 8 (bfloat16) significant bits (measured on
# width-64 models: <1e-3 and <5e-3). Each bound is 10-100x what was measured.
TOLERANCES = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}
CHECK_BATCH_SIZES = (1, 7, 64)  # one image, an odd size, a serving-sized batch
EXAMPLE_BATCH = 4  # traced with more than one image so torch.export keeps the batch dynamic
INSTALL_HINT = "pip install 'genai-cli[export]'"
PT2_METADATA_FILE = "genai.json"
OUTPUT_NAME = "image"


@dataclass
class ExportRequest:
    out: str
    format: str | None = None  # inferred from --out: .onnx, .pt2, or a folder for safetensors
    checkpoint: str | None = None
    dtype: str = "float32"
    check: bool | None = None  # None: check unless that needs onnxruntime and it is missing
    tolerance: float | None = None  # None: TOLERANCES[dtype]
    unit_range: bool = False
    force: bool = False
    best_of: int | None = None  # cvae: candidates its classifier picks among in the graph; None: as trained


# ---------------------------------------------------------------- the exported function


class ExportedImages(nn.Module):
    """The generating half, its output optionally moved to [0, 1]. Each subclass's `forward`
    signature names the graph's inputs, so the signatures differ and nothing else does."""

    def __init__(self, net: nn.Module, unit_range: bool) -> None:
        super().__init__()
        self.net, self.unit_range = net, unit_range

    def scaled(self, image: torch.Tensor) -> torch.Tensor:
        return image * 0.5 + 0.5 if self.unit_range else image


class UnconditionalImages(ExportedImages):
    """forward(z) -> image."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.scaled(self.net(z))


class ConditionalImages(ExportedImages):
    """forward(z, label) -> image, label an int64 class index per image."""

    def forward(self, z: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return self.scaled(self.net(z, label))


class TranslatedImages(ExportedImages):
    """forward(input) -> image, for models that translate an input image (pix2pix), both in [-1, 1]."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.scaled(self.net(input))


def exported_module(model: GenerativeModel, unit_range: bool = False) -> nn.Module:
    """The generating half in eval mode (BatchNorm uses its running statistics, dropout is off) with named inputs."""
    wrapper = TranslatedImages if model.translates else ConditionalImages if model.conditional else UnconditionalImages
    return wrapper(model.generating_half(), unit_range).eval()


def example_inputs(model: GenerativeModel, batch: int) -> tuple[torch.Tensor, ...]:
    """Latents of seeds 0..batch-1 (as `genai sample --seed 0`) and labels cycling through every class; for a
    translating model, seeded uniform noise images in [-1, 1]."""
    m = model.config
    if model.translates:
        shape = (batch, m.in_channels or m.channels or 1, m.image_size or 1, m.image_size or 1)
        return (torch.rand(shape, generator=torch.Generator().manual_seed(batch)) * 2 - 1,)
    z = latents(list(range(batch)), model.latent_dim)
    return (z, torch.arange(batch) % model.config.num_classes) if model.conditional else (z,)


def export_metadata(model: GenerativeModel, loaded: ckpt.Checkpoint, unit_range: bool) -> dict[str, str]:
    """What a consumer needs to feed the graph and read its output, plus provenance."""
    config, m = loaded.config, model.config
    n_parameters = sum(p.numel() for p in model.generating_half().parameters())
    inputs = {"z": f"float32 [batch, {model.latent_dim}], standard normal"}
    if model.translates:
        inputs = {"input": f"float32 [batch, {m.in_channels or m.channels}, {m.image_size}, {m.image_size}] in [-1, 1]"}
    if model.conditional:
        inputs["label"] = f"int64 [batch], class index 0..{m.num_classes - 1}"
    return {
        "genai.kind": m.kind,
        "genai.version": __version__,
        "genai.latent_dim": str(model.latent_dim),
        "genai.num_classes": str(m.num_classes),
        "genai.classes": json.dumps(config.data.classes),
        "genai.image_shape": json.dumps([m.channels, m.image_size, m.image_size]),
        "genai.inputs": json.dumps(inputs),
        "genai.output": f"image: float32 [batch, {m.channels}, {m.image_size}, {m.image_size}]",
        "genai.output_range": "[0, 1]" if unit_range else "[-1, 1]",
        "genai.dataset": config.data.name,
        "genai.step": str(loaded.step),
        "genai.epoch": loaded.metadata.get("genai.epoch", "0"),
        "genai.device": loaded.metadata.get("genai.device", "cpu"),
        "genai.parameters": json.dumps({"total": n_parameters, ckpt.generating_prefix(model)[:-1]: n_parameters}),
        "genai.config": config.to_json(),
        "genai.source_sha256": file_sha256(loaded.path),
    }


# ---------------------------------------------------------------- building the artefacts


def require_module(name: str, purpose: str) -> None:
    """The export extra is optional: a missing package is one line saying how to install it."""
    if importlib.util.find_spec(name) is None:
        raise GenaiError(f"{purpose} needs the {name} package, which is not installed; {INSTALL_HINT}")


def batch_dims(model: GenerativeModel) -> dict[str, dict[int, torch.export.Dim]]:
    """One dynamic first dimension, named `batch` (as the ONNX graph's inputs and output call it), shared by every input."""
    batch = torch.export.Dim("batch")
    return {name: {0: batch} for name in model.input_names}


def exported_program(module: nn.Module, model: GenerativeModel) -> torch.export.ExportedProgram:
    try:
        return torch.export.export(module, example_inputs(model, EXAMPLE_BATCH), dynamic_shapes=batch_dims(model))
    except Exception as err:  # torch.export's own error types; a genai model that cannot be traced
        raise GenaiError(f"torch.export could not trace the {model.config.kind} model: {_first_line(err)}") from err


def onnx_bytes(module: nn.Module, model: GenerativeModel, metadata: dict[str, str]) -> bytes:
    for name in ("onnx", "onnxscript"):
        require_module(name, "--format onnx")
    names = list(model.input_names)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*axis name.*")  # z and label share one batch Dim
            # the module itself, not an ExportedProgram: only then does the graph keep the name `batch`
            program = torch.onnx.export(module, example_inputs(model, EXAMPLE_BATCH), input_names=names,
                                        output_names=[OUTPUT_NAME], dynamic_shapes=batch_dims(model), dynamo=True,
                                        verbose=False)
    except Exception as err:  # the ONNX exporter's own error types
        raise GenaiError(f"ONNX export of the {model.config.kind} model failed: {_first_line(err)}") from err
    program.model.metadata_props.update(metadata)
    program.model.doc_string = f"genai {model.config.kind} generator: z{' + label' if model.conditional else ''} -> image"
    return program.model_proto.SerializeToString()


def pt2_bytes(module: nn.Module, model: GenerativeModel, metadata: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    torch.export.save(exported_program(module, model), buffer,
                      extra_files={PT2_METADATA_FILE: json.dumps(metadata, indent=2, sort_keys=True)})
    return buffer.getvalue()


def slim_files(model: GenerativeModel, loaded: ckpt.Checkpoint, dtype: str) -> dict[str, bytes]:
    """config.json, model.safetensors (generating half, in `dtype`) and a model card.

    Weights keep their names in the full model and the metadata is genai's own plus
    `genai.contents`, so `checkpoint.load_model` rebuilds the model from the folder.
    """
    prefix = ckpt.generating_prefix(model)
    weights = {prefix + k: v.to(DTYPES[dtype]) if v.is_floating_point() else v
               for k, v in ckpt.weights_of(model.generating_half()).items()}
    meta = ckpt.model_metadata(loaded.config, ckpt.ROLE_MODEL, loaded.step,
                               int(loaded.metadata.get("genai.epoch", 0)), loaded.metadata.get("genai.device", "cpu"))
    meta.update({"genai.contents": ckpt.GENERATING_HALF, "genai.dtype": dtype,
                 "genai.source_sha256": file_sha256(loaded.path)})
    return {
        ckpt.MODEL_FILE: save_tensors(weights, metadata=meta),
        ckpt.CONFIG_FILE: (loaded.config.to_json(indent=2) + "\n").encode(),
        "README.md": model_card(model, loaded, dtype).encode(),
    }


def model_card(model: GenerativeModel, loaded: ckpt.Checkpoint, dtype: str) -> str:
    """A short README in Hugging Face model-card form: what the weights are and how to use them."""
    m, data = model.config, loaded.config.data
    n_parameters = sum(p.numel() for p in model.generating_half().parameters())
    prefix = ckpt.generating_prefix(model)
    label_arg = ", labels" if model.conditional else ""
    classes = ", ".join(f"{i} {c}" for i, c in enumerate(data.classes)) or f"0..{m.num_classes - 1}"
    lines = [
        "---",
        f"tags: [genai, {m.kind}, image-generation]",
        "---",
        f"# genai {m.kind} ({data.name})",
        "",
        f"{MODELS.get(m.kind).description}; the {prefix[:-1]} only ({n_parameters:,} parameters, {dtype}),",
        f"trained by genai for {loaded.step} steps on {data.name}. Image: {m.channels}x{m.image_size}x{m.image_size}, "
        f"latent: {model.latent_dim}" + (f", classes: {classes}." if model.conditional else "."),
        "",
        "## Use",
        "",
        "```sh",
        "genai sample --checkpoint THIS_FOLDER --input IMAGES/ --out translated/" if model.translates else
        "genai sample --checkpoint THIS_FOLDER --n 64 --out grid.png",
        "genai info THIS_FOLDER",
        "```",
        "",
        "Without genai: rebuild the network from `config.json` and load the weights with",
        f"`safetensors.torch.load_file('model.safetensors')` (names start with `{prefix}`; cast to float32).",
        f"Input images in [-1, 1] of shape [batch, {m.in_channels or m.channels}, {m.image_size}, {m.image_size}]; "
        f"`{prefix[:-1]}(images)` returns their translations in [-1, 1]." if model.translates else
        f"Input `z` ~ N(0, I) of shape [batch, {model.latent_dim}]"
        + (", `labels` int64 class indices" if model.conditional else "")
        + f"; `{prefix[:-1]}(z{label_arg})` returns images in [-1, 1].",
        "",
        f"Source checkpoint sha256: `{file_sha256(loaded.path)}`.",
        "",
    ]
    return "\n".join(ckpt.printable(line) for line in lines)  # class and dataset names come from a file


# ---------------------------------------------------------------- checking


Runner = Callable[..., torch.Tensor]


def onnx_runner(path: Path) -> Runner:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [arg.name for arg in session.get_inputs()]  # the graph's own signature

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        feed = {name: x.numpy() for name, x in zip(names, inputs)}
        return torch.from_numpy(session.run([OUTPUT_NAME], feed)[0])

    return run


def pt2_runner(path: Path) -> Runner:
    return torch.export.load(path).module()  # our own file, just written: safe to unpickle


def slim_runner(path: Path) -> Runner:
    """The folder read back the way `genai sample --checkpoint` reads it."""
    model, _ = ckpt.load_model(str(path), torch.device("cpu"))
    return exported_module(model)


RUNNERS: dict[str, Callable[[Path], Runner]] = {"onnx": onnx_runner, "pt2": pt2_runner, "safetensors": slim_runner}


@torch.no_grad()
def max_abs_diffs(reference: nn.Module, exported: Runner, model: GenerativeModel) -> dict[str, float | None]:
    """Batch size -> max |exported - reference| (None when not finite), every class in the largest batch."""
    sizes = sorted({*CHECK_BATCH_SIZES, max(CHECK_BATCH_SIZES[-1], model.config.num_classes)})
    diffs: dict[str, float | None] = {}
    for size in sizes:
        inputs = example_inputs(model, size)
        diff = float((exported(*inputs).float() - reference(*inputs)).abs().max())
        diffs[str(size)] = diff if math.isfinite(diff) else None
    return diffs


# ---------------------------------------------------------------- the `export` command


def resolve_format(req: ExportRequest) -> str:
    suffix = Path(req.out).suffix.lower()
    inferred = SUFFIXES.get(suffix, "safetensors" if not suffix else None)
    fmt = (req.format or inferred or "").lower()
    if not fmt:
        raise UsageError(f"cannot tell the format from --out {req.out}; pass --format onnx, pt2 or safetensors")
    if fmt not in FORMATS:
        raise UsageError(f"unknown --format {req.format!r}; choose onnx, pt2 or safetensors")
    if suffix in SUFFIXES and SUFFIXES[suffix] != fmt or fmt == "safetensors" and suffix == ".safetensors":
        what = "a folder (e.g. slim/)" if fmt == "safetensors" else f"a .{fmt} file"
        raise UsageError(f"--format {fmt} writes {what}, but --out is {req.out}; change one of them")
    return fmt


def check_request(req: ExportRequest, fmt: str) -> None:
    out = Path(req.out)
    if req.dtype not in DTYPES:
        raise UsageError(f"unknown --dtype {req.dtype!r}; choose one of: {', '.join(DTYPES)}")
    if fmt != "safetensors" and req.dtype != "float32":
        raise UsageError(f"--dtype {req.dtype} applies to --format safetensors; ONNX and pt2 exports are float32")
    if fmt == "safetensors" and req.unit_range:
        raise UsageError("--unit-range applies to ONNX and pt2 graphs; a safetensors folder holds genai weights")
    if req.tolerance is not None and not req.tolerance > 0:
        raise UsageError(f"--tolerance must be positive, got {req.tolerance}")
    if fmt == "safetensors":
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out} is a file; --format safetensors writes a folder")
        exists = out.is_dir() and any(out.iterdir())
    else:
        if out.is_dir():
            raise UsageError(f"--out {out} is a folder; --format {fmt} writes one file")
        exists = out.exists()
    if exists and not req.force:
        raise UsageError(f"{out} already exists; pass --force to overwrite it or choose another --out")


def wants_check(req: ExportRequest, fmt: str) -> bool:
    """On by default; for ONNX it needs onnxruntime, so an unasked check is skipped with a warning."""
    if fmt != "onnx" or req.check is False:
        return req.check is not False
    if importlib.util.find_spec("onnxruntime") is not None:
        return True
    if req.check:
        require_module("onnxruntime", "--check of an ONNX export")
    console.warn(f"onnxruntime is not installed, so the ONNX export is not checked; {INSTALL_HINT}")
    return False


@contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A private folder beside --out (same filesystem, so publishing is a rename), always removed."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".export", dir=out.parent))
    except OSError as err:
        raise write_error(out, err) from err
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def write_staged(staged: Path, final: Path, data: bytes) -> None:
    """`atomic_write` into the staging folder; a failure names the file the user asked for, not the hidden folder."""
    try:
        atomic_write(staged, data)
    except GenaiError as err:
        if isinstance(err.__cause__, OSError):
            raise write_error(final, err.__cause__) from err.__cause__
        raise


def run_export(req: ExportRequest) -> dict[str, Any]:
    """Export, check and publish; returns the JSON summary, or raises ExportCheckFailed carrying it."""
    fmt = resolve_format(req)
    check_request(req, fmt)
    check = wants_check(req, fmt)
    tolerance = req.tolerance if req.tolerance is not None else TOLERANCES[req.dtype]
    model, loaded = ckpt.load_model(req.checkpoint, torch.device("cpu"))
    choose_best_of(model, loaded.path, req.best_of)  # before the metadata, which records the count
    module = exported_module(model, req.unit_range)
    out = Path(req.out)
    started = time.perf_counter()
    if fmt == "safetensors":
        files = {out / name: data for name, data in slim_files(model, loaded, req.dtype).items()}
    else:
        metadata = export_metadata(model, loaded, req.unit_range)
        files = {out: (onnx_bytes if fmt == "onnx" else pt2_bytes)(module, model, metadata)}
    with staging(out) as stage:
        staged = stage / out.name  # the artefact (file or folder) as it will be at --out
        for final, data in files.items():
            write_staged(staged / final.relative_to(out), final, data)
        result: dict[str, Any] = {
            "format": fmt, "out": str(out), "checkpoint": str(loaded.path), "kind": model.config.kind,
            "dtype": req.dtype, "output_range": "[0, 1]" if req.unit_range else "[-1, 1]",
            "files": [str(final) for final in files], "bytes": sum(len(data) for data in files.values()),
            "seconds": round(time.perf_counter() - started, 3),
            "checked": check, "max_abs_diff": None, "tolerance": tolerance, "passed": None,
        }
        if check:
            started = time.perf_counter()
            diffs = max_abs_diffs(module, RUNNERS[fmt](staged), model)
            passed = all(d is not None and d <= tolerance for d in diffs.values())
            result.update(max_abs_diff=diffs, passed=passed, check_seconds=round(time.perf_counter() - started, 3))
            if not passed:
                worst = max(d if d is not None else math.inf for d in diffs.values())
                raise ExportCheckFailed(
                    f"the {fmt} export differs from the PyTorch model by {worst:.3g} > tolerance {tolerance:g} "
                    f"(batch sizes {', '.join(diffs)}); {out} was left as it was. Report it, or rerun with --no-check",
                    result,
                )
        for final in files:
            final.parent.mkdir(parents=True, exist_ok=True)
            move_into_place(staged / final.relative_to(out), final)
    return result


def export_summary_line(result: dict[str, Any]) -> str:
    """The one human line `genai export` logs on stderr."""
    line = f"wrote {result['out']} ({result['format']}, {result['bytes'] / 1e6:.1f} MB) in {result['seconds']:.1f}s"
    if not result["checked"]:
        return line + "; not checked"
    worst = max(result["max_abs_diff"].values())
    return line + f"; matches PyTorch: max |diff| {worst:.2g} <= {result['tolerance']:g} at batch sizes {', '.join(result['max_abs_diff'])}"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
