"""genai report: one self-contained page per run, charts on real axes, opened in a real browser; --tensorboard."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from xml.etree import ElementTree

import pytest
from conftest import tiny_train
from PIL import Image
from typer.testing import CliRunner

from genai_cli import plots, report, rundir, tboard
from genai_cli.cli import app
from genai_cli.objectives import OBJECTIVES

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
SVG = "{http://www.w3.org/2000/svg}"


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_data_root: Path, tiny_runs: dict[str, Path]) -> dict[str, Path]:
    """The session's tiny dcgan and pix2pix, and a cgan and a VAE with a grid at every step (read-only)."""
    base = tmp_path_factory.mktemp("report-runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENAI_OFFLINE", "1")
        own = {kind: Path(tiny_train(kind, tiny_data_root, base / kind, **{"train.sample_every": 1}).run_dir)
               for kind in ("cgan", "vae")}
    return {"dcgan": tiny_runs["dcgan"], "pix2pix": tiny_runs["pix2pix"], **own}


def tiny_flags(root: Path, kind: str, **extra: object) -> dict:
    return {"model.kind": kind, "data.name": "fashion-mnist", "data.data_dir": str(root), "model.width": 8,
            "model.image_size": 16, "train.batch_size": 8, **extra}


def train_args(root: Path, *more: str) -> list[str]:
    """`genai train` of a tiny DCGAN into ./run, for one step unless `more` says otherwise."""
    return ["train", "--data", "fashion-mnist", "--data-dir", str(root), "--width", "8", "--image-size", "16",
            "--batch-size", "8", "--steps", "1", "--out", "run", *more]


def copy_run(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / run.name))


def images_of(page: str) -> list[str]:
    return re.findall(r"<img src='([^']*)'", page)


# ---------------------------------------------------------------- charts


def test_ticks_are_round_numbers() -> None:
    assert plots.nice_step(7) == 2 and plots.nice_step(1000) == 200 and plots.nice_step(0.02) == 0.005
    assert plots.linear_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert plots.linear_ticks(0.8, 2.3) == [1.0, 1.5, 2.0]
    assert plots.log_ticks(0.01, 1000) == [0.01, 0.1, 1, 10, 100, 1000]
    assert plots.log_ticks(1, 100) == [1, 2, 5, 10, 20, 50, 100]
    assert [plots.tick_label(v, 0.25) for v in (0, 0.25, 1.5)] == ["0", "0.25", "1.50"]


def test_smoothing_is_debiased_and_only_for_long_series() -> None:
    assert plots.ema([5.0, 5.0, 5.0], 0.9) == pytest.approx([5.0, 5.0, 5.0])  # not pulled towards 0 at the start
    noisy = [float(i % 2) for i in range(200)]
    smooth = plots.ema(noisy, plots.smoothing_weight(len(noisy)))
    assert max(smooth[50:]) - min(smooth[50:]) < 0.5 < max(noisy) - min(noisy)
    assert plots.smoothing_weight(30) == 0.0


def chart_parts(svg: str) -> tuple[ElementTree.Element, dict[str, float], list[str]]:
    root = ElementTree.fromstring(svg)
    frame = next(r for r in root.iter(f"{SVG}rect") if r.get("stroke") == "#888")
    plot = {k: float(frame.get(k)) for k in ("x", "y", "width", "height")}
    return root, plot, ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]


def test_a_chart_has_labelled_axes_a_grid_and_a_legend_outside_the_plot() -> None:
    steps = [float(s) for s in range(0, 2000, 10)]
    svg = plots.chart([plots.Series("recon", steps, [300 - s / 10 for s in steps], plots.PALETTE[0])],
                      "recon", "step", "nats")
    root, plot, texts = chart_parts(svg)
    assert {"recon", "step", "nats"} <= set(texts)
    grid = [line for line in root.iter(f"{SVG}line") if line.get("stroke") == "#e4e4e4"]
    assert len(grid) >= 8  # horizontal and vertical grid lines at the ticks
    y_ticks = [t for t in root.iter(f"{SVG}text") if t.get("text-anchor") == "end"]
    assert len(y_ticks) >= 4 and all(re.fullmatch(r"-?\d+(\.\d+)?", "".join(t.itertext())) for t in y_ticks)
    legend = [t for t in root.iter(f"{SVG}text") if "".join(t.itertext()) == "recon"][-1]  # after the title
    bottom = plot["y"] + plot["height"]
    assert float(legend.get("y")) > bottom + 20  # below the axis and its label: it covers no data


def test_a_series_spanning_orders_of_magnitude_gets_a_log_axis() -> None:
    steps = [float(s) for s in range(1, 101)]
    kl = plots.chart([plots.Series("kl", steps, [1000 / s**2 for s in steps], plots.PALETTE[0])], "kl", "step", "kl")
    recon = plots.chart([plots.Series("recon", steps, [300 - s for s in steps], plots.PALETTE[0])], "r", "step", "r")
    assert "kl (log scale)" in kl and "log scale" not in recon


def test_a_long_run_draws_a_bounded_number_of_points() -> None:
    rows = [{"step": s, "loss": 1.0 + (s % 7)} for s in range(1, 20001)]
    polylines = ElementTree.fromstring(plots.loss_panels(rows, ["loss"])[0]).findall(f"{SVG}polyline")
    assert len(polylines) == 2 and all(len(p.get("points").split()) <= plots.MAX_POINTS for p in polylines)


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_loss_panels_come_from_the_objective(name: str) -> None:
    """One panel per loss the objective declares: the report never keeps its own list of loss names."""
    keys = OBJECTIVES.get(name).loss_keys
    assert keys and keys == OBJECTIVES.get(name).build.loss_keys
    rows = [{"step": s, **{k: float(s * i + 1) for i, k in enumerate(keys)}} for s in range(1, 60)]
    panels = plots.loss_panels(rows, list(keys))
    assert [ElementTree.fromstring(p).find(f"{SVG}title").text for p in panels] == list(keys)
    combined = ElementTree.fromstring(plots.side_by_side(panels))
    assert len(combined.findall(f"{SVG}svg")) == len(keys)


# ---------------------------------------------------------------- the page


def test_wall_time_and_speed_add_up_the_logged_windows() -> None:
    log = [{"step": 10, "images_per_sec": 100.0}, {"step": 20, "images_per_sec": 50.0}]  # 100 images each, batch 10
    seconds, rate = report.training_time(log, batch_size=10)
    assert seconds == pytest.approx(3.0) and rate == pytest.approx(200 / 3)


@pytest.mark.parametrize("kind", ["dcgan", "cgan", "vae", "pix2pix"])
def test_training_writes_a_self_contained_report(runs: dict[str, Path], kind: str) -> None:
    run = runs[kind]
    page = (run / rundir.REPORT_FILE).read_text()
    assert not re.search(r"""(src|href)=['"]?(https?:|//)""", page) and "<link" not in page  # nothing to fetch
    sources = images_of(page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    for source in sources:
        Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))).verify()
    assert ElementTree.fromstring((run / rundir.LOSS_FILE).read_text()) is not None
    for key in report.loss_keys(report.ckpt.load_file(run / "model.safetensors").config):
        assert f"<title>{key}</title>" in page
    grids = sorted((run / "samples").glob("step_*.png"))
    assert all(f"step {int(g.stem[5:])}</figcaption>" in page for g in grids)
    assert ("Interpolation" in page) == (kind != "pix2pix")  # pix2pix draws no latent
    assert "images/s" in page and "wall time" in page and "device" in page


def test_a_conditional_models_rows_carry_their_class_names(runs: dict[str, Path]) -> None:
    page = (runs["cgan"] / rundir.REPORT_FILE).read_text()
    grids = len(list((runs["cgan"] / "samples").glob("step_*.png")))
    assert grids == 3
    for name in FASHION:
        assert page.count(f">{name}</span>") == grids + 1, name  # every sample grid, and the interpolation
    walk = images_of(page.split("<h2>Interpolation</h2>", 1)[1])[0]
    rows = Image.open(io.BytesIO(base64.b64decode(walk.split(",", 1)[1])))
    assert rows.height > len(FASHION) * 16  # a walk for every class (16 px images), not class 0 alone


def test_a_vaes_reconstructions_are_labelled(runs: dict[str, Path]) -> None:
    page = (runs["vae"] / rundir.REPORT_FILE).read_text()
    assert "<figcaption>original</figcaption>" in page and "<figcaption>reconstruction</figcaption>" in page
    assert "<title>kl</title>" in page and "<title>recon</title>" in page  # each term on its own panel and scale


def test_reconstructions_are_whole_rows_of_originals_over_reconstructions(labelled_folder: Path, tmp_path: Path) -> None:
    from genai_cli import training

    flags = tiny_flags(labelled_folder, "vae", **{"data.name": str(labelled_folder), "data.data_dir": None,
                                                  "train.batch_size": 4, "train.steps": 1})
    run = Path(training.train(flags, out=str(tmp_path / "run")).run_dir)  # 10 images: one whole row of 8 each
    with Image.open(run / "reconstructions.png") as image:
        assert image.size == (8 * 18 + 2, 2 * 18 + 2)
    page = (run / rundir.REPORT_FILE).read_text()
    for caption in ("original", "reconstruction"):
        source = re.search(rf"<img src='data:image/png;base64,([^']*)'[^>]*alt='{caption}'>", page).group(1)
        assert Image.open(io.BytesIO(base64.b64decode(source))).size == (8 * 18 + 2, 18 + 2)


def test_recorded_eval_results_are_a_table_and_fid_over_steps(runs: dict[str, Path], tmp_path: Path) -> None:
    run = copy_run(runs["pix2pix"], tmp_path)
    result = invoke("eval", "--checkpoint", str(run), "--n", "4", "--metrics", "paired",
                    "--data-dir", str(json.loads((run / "config.json").read_text())["data"]["data_dir"]))
    assert result.exit_code == 0, result.stderr
    with (run / rundir.METRICS_FILE).open("a") as log:  # as genai eval records them, at two checkpoints
        for step, fid in ((1, 250.0), (3, 180.5)):
            log.write(json.dumps({"step": step, "eval": {"metrics": {"fid": fid}, "protocol": {
                "extractor": "inception", "n_generated": 10, "reference": "fashion-mnist test"}}}) + "\n")
    page = Path(report.write_report(str(run))["report"]).read_text()
    table = page[page.index("<h2>Evaluation</h2>"):]
    assert "<th>psnr</th>" in table and "<th>ssim</th>" in table and "180.5" in table and "250" in table
    assert "FID over training" in page and "FID (inception features)" in page
    assert page.count("<circle") >= 2  # one marker per evaluated step


def test_genai_report_cli(runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run = copy_run(runs["cgan"], tmp_path)
    (run / rundir.REPORT_FILE).unlink()
    rundir.point_latest(run)
    result = invoke("report")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(Path("cgan") / rundir.REPORT_FILE)  # the path, as data on stdout
    assert "using cgan (runs/latest; cgan, step 3)" in result.stderr
    assert (run / rundir.REPORT_FILE).is_file()
    result = invoke("report", str(run), "--out", "elsewhere/r.html", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["report"] == "elsewhere/r.html" and summary["bytes"] == Path("elsewhere/r.html").stat().st_size
    missing = invoke("report", "nowhere")
    assert missing.exit_code == 1 and missing.stderr.count("error:") == 1 and "nowhere does not exist" in missing.stderr


def test_a_failing_report_never_fails_a_run(idx_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> str:
        raise RuntimeError("no fonts today")

    monkeypatch.setattr(report, "render", broken)
    result = invoke(*train_args(idx_root, "--steps", "2", "--json"))
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "report.html were not all written" in line]
    assert len(warnings) == 1 and "no fonts today" in warnings[0] and "genai report run" in warnings[0]
    assert (Path("run") / "model.safetensors").is_file() and not (Path("run") / rundir.REPORT_FILE).exists()


# ---------------------------------------------------------------- in a real browser

# Injected first in <head>: records uncaught errors, failed loads and console.error calls, then, once every
# image has decoded (or failed to), writes what it saw into the page, which --dump-dom prints.
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => __errors.push(String(e.message || (e.target && e.target.src) || 'load error')), true);
const __consoleError = console.error;
console.error = (...a) => { __errors.push(a.map(String).join(' ')); __consoleError(...a); };
window.addEventListener('load', () => {
  const images = [...document.images];
  Promise.all(images.map(i => i.decode().then(() => i.naturalWidth, () => 0))).then(widths => {
    const out = document.createElement('pre');
    out.id = 'probe';
    out.textContent = JSON.stringify({errors: __errors, widths: widths, svgs: document.querySelectorAll('svg').length});
    document.body.appendChild(out);
  });
});
</script>"""


def chromium() -> str:
    """Debian's chromium; CI installs it (.ci/run), so there a missing browser fails instead of skipping."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium); CI runs this test")
    return found


def open_in_browser(page: str, tmp_path: Path) -> dict:
    """What headless Chromium saw loading `page` from a file, with every host name unresolvable."""
    path = tmp_path / "probed.html"
    path.write_text(page.replace("<head>", "<head>" + PROBE, 1))
    # --dump-dom sometimes dumps the page before the probe's image decodes settle (the promises run
    # outside Chromium's virtual time): a dump without the probe is taken again, up to three times.
    for attempt in range(3):
        done = subprocess.run(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", "--virtual-time-budget=10000",
             "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={tmp_path / f'profile{attempt}'}", path.as_uri()],
            capture_output=True, text=True, timeout=120, check=False)
        if found := re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S):
            break
    assert found, f"chromium exit {done.returncode}, no probe in {len(done.stdout)} characters: {done.stderr[-2000:]}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


@pytest.mark.parametrize("kind", ["cgan", "vae", "pix2pix"])
def test_the_report_opens_in_chromium_without_errors(runs: dict[str, Path], kind: str, tmp_path: Path) -> None:
    page = (runs[kind] / rundir.REPORT_FILE).read_text()
    seen = open_in_browser(page, tmp_path)
    assert seen["errors"] == []
    assert len(seen["widths"]) == len(images_of(page)) and all(w > 0 for w in seen["widths"])  # every image decoded
    assert seen["svgs"] == page.count("<svg ")


def test_class_names_are_text_not_markup(tmp_path: Path) -> None:
    """A class is a folder name, and a folder may be called anything: the page shows it, never runs it."""
    from conftest import make_image_folder

    from genai_cli import training

    folder = make_image_folder(tmp_path / "data", classes=("<img src=x onerror=alert(1)>", "a&b"), n_per_class=4, size=16)
    flags = tiny_flags(folder, "cgan", **{"data.name": str(folder), "data.data_dir": None, "train.batch_size": 4,
                                          "train.steps": 1})
    page = (Path(training.train(flags, out=str(tmp_path / "run")).run_dir) / rundir.REPORT_FILE).read_text()
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;</span>" in page and "a&amp;b</span>" in page
    seen = open_in_browser(page, tmp_path)
    assert seen["errors"] == [] and all(w > 0 for w in seen["widths"])


def test_the_browser_probe_sees_broken_pages(tmp_path: Path) -> None:
    """The check above can fail: a broken image and a script error are both reported."""
    page = ("<!DOCTYPE html><html><head><title>x</title></head><body><img src='data:image/png;base64,AAAA'>"
            "<script>undefinedFunction()</script></body></html>")
    seen = open_in_browser(page, tmp_path)
    assert seen["widths"] == [0] and any("undefinedFunction" in e for e in seen["errors"])


# ---------------------------------------------------------------- --tensorboard


def test_tensorboard_events_hold_scalars_grids_and_eval_results(tiny_data_root: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from genai_cli import training

    flags = tiny_flags(tiny_data_root, "cgan", **{"train.steps": 4, "train.log_every": 2, "train.sample_every": 2})
    run = Path(training.train(flags, out=str(tmp_path / "run"), tensorboard=True).run_dir)
    tboard.record_eval(run, 4, {"fid": 123.0, "acc_per_class": [0.1, 0.2]})
    events = EventAccumulator(str(run / tboard.TENSORBOARD_DIR))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"loss/loss_d", "loss/loss_g", "images_per_sec", "lr/generator", "lr/discriminator", "eval/fid"} <= scalars
    assert [e.step for e in events.Scalars("loss/loss_g")] == [2, 4]
    assert [e.step for e in events.Images("samples")] == [2, 4, 4]  # every --sample-every step, and the end
    assert events.Scalars("eval/fid")[0].value == 123.0


def test_a_resumed_run_replaces_the_events_past_its_checkpoint(tiny_data_root: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from genai_cli import training

    flags = tiny_flags(tiny_data_root, "dcgan", **{"train.steps": 2, "train.log_every": 1})
    run = Path(training.train(flags, out=str(tmp_path / "run"), tensorboard=True).run_dir)
    tboard.record_eval(run, 2, {"fid": 99.0})  # an eval of the step-2 checkpoint
    training.train({"train.steps": 4}, resume=str(run), tensorboard=True)
    events = EventAccumulator(str(run / tboard.TENSORBOARD_DIR))
    events.Reload()
    assert [e.step for e in events.Scalars("loss/loss_g")] == [1, 2, 3, 4]
    assert [e.step for e in events.Scalars("eval/fid")] == [2]


def test_tensorboard_without_the_extra_is_one_line_before_any_work(idx_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tboard.importlib.util.find_spec
    monkeypatch.setattr(tboard.importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    result = invoke(*train_args(idx_root, "--tensorboard"))
    assert result.exit_code == 2 and result.stderr.count("error:") == 1, result.stderr
    assert "pip install 'genai-cli[tensorboard]'" in result.stderr and not Path("run").exists()


def test_force_replaces_tensorboard_events_but_not_the_users_files(idx_root: Path) -> None:
    args = train_args(idx_root, "--tensorboard")
    assert invoke(*args).exit_code == 0
    old = {p.name for p in Path("run/tensorboard").iterdir()}
    Path("run/tensorboard/notes.txt").write_text("mine")
    result = invoke(*args, "--force")
    assert result.exit_code == 0, result.stderr
    assert "keeping 1 file(s) genai did not write: tensorboard/notes.txt" in result.stderr
    now = {p.name for p in Path("run/tensorboard").iterdir()}
    assert "notes.txt" in now and not (old & now)
