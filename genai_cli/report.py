"""`genai report`: one self-contained HTML page about a run, also written when training ends.

Everything it shows comes from the run folder: the checkpoint's header (config, step, device),
`metrics.jsonl` (losses, speed, and every `genai eval` result recorded for the run), the sample
grids, the VAE's reconstructions, and an interpolation strip generated from the checkpoint.
Images are inlined as data: URIs and charts as SVG (`plots`), so the page needs no network and
no file beside it: it can be mailed, archived or opened on a machine without genai.
"""

from __future__ import annotations

import base64
import io
import math
from html import escape
from pathlib import Path
from typing import Any

from PIL import Image

from genai_cli import __version__, console, plots, rundir
from genai_cli import checkpoint as ckpt
from genai_cli.config import Config
from genai_cli.fileio import atomic_write
from genai_cli.images import GRID_PADDING

REPORT_FILE = rundir.REPORT_FILE
MAX_GRIDS = 9  # sample grids shown, evenly spaced over the run (the last always): the page stays small
INTERPOLATION_FRAMES = 8
INTERPOLATION_CLASSES = 10  # rows of a conditional model's walk; more would dwarf the page
GRID_DISPLAY = 400  # px a grid is scaled towards, by a whole factor so pixels stay square
EVAL_COLUMNS = ("fid", "kid", "is", "precision", "recall", "density", "coverage", "acc", "intra_fid", "elbo", "nll",
                "recon_mse", "l1", "psnr", "ssim")  # the order of the table's columns; others follow
STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1240px; padding: 0 16px; color: #222; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
.facts { color: #555; } table { border-collapse: collapse; margin: 8px 0; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.flow { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
figure { margin: 0; } figcaption { color: #555; font-size: 13px; text-align: center; margin-top: 2px; }
img { image-rendering: pixelated; display: block; }
.labelled { display: flex; gap: 6px; } .labels { position: relative; min-width: 5em; font-size: 12px; }
.labels span { position: absolute; right: 0; transform: translateY(-50%); white-space: nowrap; }
.note { color: #666; font-size: 13px; }
"""


def write_report(run: str | None, out: str | None = None) -> dict[str, Any]:
    """Write the report of `run` (default runs/latest) to `out` (default RUN/report.html)."""
    model_path = rundir.resolve_model_path(run)
    run_dir = rundir.real_run_dir(model_path.parent)  # runs/latest names the run it points at
    path = Path(out) if out else run_dir / REPORT_FILE
    if path.is_dir():
        path = path / REPORT_FILE
    page = render(run_dir, model_path)
    atomic_write(path, page.encode())
    return {"report": str(path), "run_dir": str(run_dir), "bytes": len(page.encode())}


# ---------------------------------------------------------------- the page


def render(run_dir: Path, model_path: Path) -> str:
    metadata = ckpt.read_metadata(model_path)
    config = ckpt.config_from_metadata(model_path, metadata)
    rows = rundir.read_metrics(run_dir / rundir.METRICS_FILE)
    log = rundir.loss_rows(rows)
    evals = [r for r in rows if isinstance(r.get("eval"), dict)]
    judged = [r for r in rows if isinstance(r.get("judge"), dict) and isinstance(r.get("step"), int)]
    kind, data = config.model.kind, config.data
    title = f"{kind} on {Path(data.name).name}, step {metadata.get('genai.step', '?')}"
    sections = [
        f"<h1>{text(title)}</h1><p class='facts'>{text(str(run_dir))} · genai {text(metadata.get('genai.version', '?'))}"
        f" · report by genai {__version__}</p>",
        overview(config, metadata, log),
        samples_section(run_dir, config),
        losses_section(config, log),
        kept_section(judged, metadata),
        evals_section(evals),
        reconstructions_section(run_dir, config),
        interpolation_section(model_path, config),
        config_section(config),
    ]
    body = "\n".join(s for s in sections if s)
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{text(title)}</title>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{STYLE}</style></head>"
            f"<body>\n{body}\n</body></html>\n")


def text(value: object) -> str:
    """A string from a file, safe in HTML and free of control characters."""
    return escape(console.printable(value))


def number(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "—" if value is None else text(value)
    return f"{value:.4g}" if isinstance(value, float) and math.isfinite(value) else str(value)


def table(header: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{text(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td class='num'>{number(c)}</td>" if isinstance(c, (int, float)) or c is None
                                    else f"<td>{text(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def training_time(log: list[dict[str, Any]], batch_size: int) -> tuple[float, float]:
    """(seconds, images/s) of the logged training: each log line covers the steps since the one before."""
    seconds, images, previous = 0.0, 0, 0
    for row in log:
        steps, rate = row.get("step", previous) - previous, row.get("images_per_sec") or 0
        if steps > 0 and rate > 0:
            seconds += steps * batch_size / rate
            images += steps * batch_size
        previous = row.get("step", previous)
    return seconds, images / seconds if seconds else 0.0


def overview(config: Config, metadata: dict[str, str], log: list[dict[str, Any]]) -> str:
    seconds, rate = training_time(log, config.train.batch_size)
    model, data = config.model, config.data
    classes = f"{len(data.classes)} classes ({', '.join(data.classes[:10])}{', …' if len(data.classes) > 10 else ''})" \
        if data.classes else "no classes"
    facts = [
        ["model", f"{model.kind}, width {model.width}" + (f", latent {model.latent_dim}" if model.latent_dim else "")],
        ["dataset", f"{data.name} ({data.split} split), {model.channels}×{model.image_size}×{model.image_size}, {classes}"
         + (f", pairs {data.pairs} {data.direction}" if data.pairs else "")],
        ["device", metadata.get("genai.device", "?")],
        ["steps", f"{metadata.get('genai.step', '?')} (epoch {metadata.get('genai.epoch', '?')}), batch {config.train.batch_size}"],
        ["wall time", f"{seconds:.1f} s ({seconds / 60:.1f} min), {rate:.0f} images/s" if seconds else "not logged"],
    ]
    if log:
        last = log[-1]
        facts.append(["last losses", ", ".join(f"{k} {number(last[k])}" for k in loss_keys(config) if k in last)])
    return "<h2>Run</h2>" + table(["", ""], facts).replace("<thead><tr><th></th><th></th></tr></thead>", "")


def config_section(config: Config) -> str:
    rows = [[f"{section}.{key}", "null" if value is None else value]
            for section, values in config.to_dict().items() if isinstance(values, dict)
            for key, value in values.items() if (section, key) != ("data", "classes")]
    return "<h2>Config</h2>" + table(["setting", "value"], rows)


# ---------------------------------------------------------------- pictures


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure(png: bytes, caption: str, row_labels: list[str] | None = None, image_size: int | None = None,
           display: int = GRID_DISPLAY) -> str:
    """A PNG scaled by a whole factor towards `display` px wide, with a label beside each grid row
    when `row_labels` has one per row (rows of `image_size` px plus the grid's padding)."""
    width, height = Image.open(io.BytesIO(png)).size
    scale = max(1, round(display / width))
    img = f"<img src='{data_uri(png)}' width='{width * scale}' height='{height * scale}' alt='{text(caption)}'>"
    if row_labels and image_size:
        cell = image_size + GRID_PADDING
        if (height - GRID_PADDING) // cell == len(row_labels):
            spans = "".join(f"<span style='top:{(GRID_PADDING + k * cell + image_size / 2) * scale:.0f}px'>{text(name)}</span>"
                            for k, name in enumerate(row_labels))
            img = f"<div class='labelled'><div class='labels' style='height:{height * scale}px'>{spans}</div>{img}</div>"
    return f"<figure>{img}<figcaption>{text(caption)}</figcaption></figure>"


def spread(items: list[Any], most: int) -> list[Any]:
    """At most `most` items, evenly spaced, first and last kept."""
    if len(items) <= most:
        return items
    return [items[round(i * (len(items) - 1) / (most - 1))] for i in range(most)]


def samples_section(run_dir: Path, config: Config) -> str:
    folder = run_dir / rundir.SAMPLES_DIR
    grids = sorted(p for p in folder.glob("step_*.png") if rundir.SAMPLE_GRID.fullmatch(p.name)) if folder.is_dir() else []
    if not grids:
        return ""
    shown = spread(grids, MAX_GRIDS)
    labels = config.data.classes if config.model.num_classes else None
    what = ("Each row: input | output | target." if config.model.in_channels else
            "Fixed latents, so the same cell follows one latent through training."
            + (" Row k is class k." if labels else ""))
    note = f" Showing {len(shown)} of {len(grids)} grids." if len(shown) < len(grids) else ""
    figures = "".join(figure(p.read_bytes(), f"step {int(p.stem.split('_')[1])}", labels, config.model.image_size)
                      for p in shown)
    return f"<h2>Samples over training</h2><p class='note'>{what}{note}</p><div class='flow'>{figures}</div>"


def reconstructions_section(run_dir: Path, config: Config) -> str:
    """reconstructions.png holds the originals' rows above their reconstructions' rows: shown apart, labelled."""
    path = run_dir / "reconstructions.png"
    if not path.is_file():
        return ""
    image = Image.open(path)
    cell = (config.model.image_size or 1) + GRID_PADDING
    half = (image.height - GRID_PADDING) // cell // 2
    if half == 0:
        return ""
    parts = {"original": image.crop((0, 0, image.width, GRID_PADDING + half * cell)),
             "reconstruction": image.crop((0, half * cell, image.width, image.height))}
    figures = "".join(figure(png_of(part), name) for name, part in parts.items())
    return ("<h2>Reconstructions</h2><p class='note'>Training images and the decoder's mean at their posterior mean, "
            f"cell by cell.</p><div class='flow'>{figures}</div>")


def png_of(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def interpolation_section(model_path: Path, config: Config) -> str:
    """A latent walk (slerp) from seed 0 to seed 1, generated from the checkpoint on the CPU; a
    conditional model walks it once per class (the first INTERPOLATION_CLASSES), a row each."""
    if config.model.in_channels:  # a translating model has no latent to walk
        return ""
    import torch

    from genai_cli import images, sampling

    model, _ = ckpt.load_model(str(model_path), torch.device("cpu"))
    ends = sampling.latents([0, 1], model.latent_dim)
    rows = min(config.model.num_classes, INTERPOLATION_CLASSES) if model.conditional else 1
    z = sampling.slerp(ends[0], ends[1], INTERPOLATION_FRAMES).repeat(rows, 1)
    labels = torch.arange(rows).repeat_interleave(INTERPOLATION_FRAMES) if model.conditional else None
    strip = images.png_bytes(images.grid(sampling.generate(model, z, labels, torch.device("cpu")), INTERPOLATION_FRAMES))
    names = config.data.classes[:rows] if model.conditional and len(config.data.classes) >= rows else None
    per_class = ", one row per class (--class K)" if model.conditional else ""
    caption = f"seed 0 → seed 1, {INTERPOLATION_FRAMES} frames{per_class} (genai sample --interpolate 0 1 --frames {INTERPOLATION_FRAMES})"
    return f"<h2>Interpolation</h2>{figure(strip, caption, names, config.model.image_size, display=720)}"


# ---------------------------------------------------------------- charts


def loss_keys(config: Config) -> list[str]:
    """The objective's losses, in its order: what the objective says it logs, never a list of names here."""
    from genai_cli.models import MODELS
    from genai_cli.objectives import choose

    return list(choose(MODELS.get(config.model.kind).shape, config.train.gan_loss).loss_keys)


def losses_section(config: Config, log: list[dict[str, Any]]) -> str:
    keys = [k for k in loss_keys(config) if any(k in r for r in log)]
    if not keys:
        return ""
    panels = "".join(f"<figure>{svg}</figure>" for svg in plots.loss_panels(log, keys))
    return (f"<h2>Losses</h2><p class='note'>One panel per term, each on its own scale; averages over each "
            f"--log-every window of {config.train.log_every} steps.</p><div class='flow'>{panels}</div>")


def kept_section(judged: list[dict[str, Any]], metadata: dict[str, str]) -> str:
    """Under --keep best: the judge's FID at each checkpoint, and which one model.safetensors holds."""
    scores = {r["step"]: r["judge"].get("fid") for r in judged}  # a resumed step's newest score
    points = sorted((step, fid) for step, fid in scores.items() if isinstance(fid, (int, float)))
    if not points:
        return ""
    samples = judged[-1]["judge"].get("samples", "?")
    note = (f"model.safetensors holds step {metadata.get('genai.step', '?')}, the checkpoint whose {samples} samples "
            f"scored the best FID with genai's classifier; the newest, step {points[-1][0]}, is in "
            f"training_state.safetensors for --resume. FID of {samples} samples is biased upward: compare it only "
            "with itself.")
    series = [plots.Series("FID at each checkpoint", [p[0] for p in points], [p[1] for p in points], plots.PALETTE[0],
                           points=True)]
    chart = plots.chart(series, "Judged FID over training", "step", "FID (lower is better)", width=560)
    return f"<h2>Kept model</h2><p class='note'>{text(note)}</p><figure>{chart}</figure>"


def evals_section(evals: list[dict[str, Any]]) -> str:
    if not evals:
        return ("<h2>Evaluation</h2><p class='note'>No <code>genai eval</code> result is recorded for this run; "
                "run <code>genai eval --checkpoint RUN</code> and the report shows it.</p>")
    found = {k for r in evals for k, v in (r["eval"].get("metrics") or {}).items() if isinstance(v, (int, float))}
    columns = [k for k in EVAL_COLUMNS if k in found] + sorted(found - set(EVAL_COLUMNS))
    rows = []
    for r in evals:
        result, protocol = r["eval"], r["eval"].get("protocol") or {}
        values = result.get("metrics") or {}
        rows.append([r.get("step"), *[values.get(k) for k in columns], protocol.get("extractor") or "—",
                     protocol.get("n_generated"), protocol.get("reference") or "—"])
    out = "<h2>Evaluation</h2>" + table(["step", *columns, "features", "n", "reference"], rows)
    by_extractor: dict[str, list[tuple[float, float]]] = {}
    for r in evals:  # FID from different networks is not comparable: one series each
        fid = (r["eval"].get("metrics") or {}).get("fid")
        if isinstance(fid, (int, float)) and isinstance(r.get("step"), int):
            extractor = (r["eval"].get("protocol") or {}).get("extractor") or "?"
            by_extractor.setdefault(extractor, []).append((r["step"], fid))
    if by_extractor:
        series = [plots.Series(f"FID ({name} features)", [p[0] for p in sorted(pts)], [p[1] for p in sorted(pts)],
                               plots.PALETTE[i % len(plots.PALETTE)], points=True)
                  for i, (name, pts) in enumerate(by_extractor.items())]
        out += f"<figure>{plots.chart(series, 'FID over training', 'step', 'FID (lower is better)', width=560)}</figure>"
    return out
