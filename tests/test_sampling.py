"""`genai sample`: seeds name images, outputs are what they claim, labels and layouts are honoured."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image_folder
from PIL import Image
from typer.testing import CliRunner

from genai_cli import checkpoint as ck
from genai_cli import sampling
from genai_cli.cli import app
from genai_cli.errors import UsageError
from genai_cli.sampling import SampleRequest, parse_seeds, plan_batch

CPU = torch.device("cpu")
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def sample(*args: str, code: int = 0):
    result = CliRunner().invoke(app, ["sample", *args])
    assert result.exit_code == code, (result.exit_code, result.stderr, result.exception)
    return result


def sample_npz(run: Path, out: Path, *args: str) -> dict[str, np.ndarray]:
    sample("--checkpoint", str(run), "--out", str(out), *args)
    with np.load(out) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def models(tiny_runs):
    return {kind: ck.load_model(str(run), CPU) for kind, run in tiny_runs.items()}


# ---------------------------------------------------------------- seeds


@pytest.mark.parametrize("text,seeds", [
    ("0-3", [0, 1, 2, 3]),
    ("1,5,9", [1, 5, 9]),
    ("0-2,7", [0, 1, 2, 7]),
    ("7", [7]),
    (" 4 - 5 , 10", [4, 5, 10]),
])
def test_parse_seeds(text: str, seeds: list[int]):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["5-2", "abc", "", "1,,2", "-3", "1-2-3", "1.5"])
def test_parse_seeds_rejects(text: str):
    with pytest.raises(UsageError) as excinfo:
        parse_seeds(text)
    assert "\n" not in str(excinfo.value)


def test_backwards_range_says_how_to_fix_it():
    with pytest.raises(UsageError, match="2-5"):
        parse_seeds("5-2")


@pytest.mark.parametrize("flags", [["--seeds", str(2**64)], ["--seed", str(2**64 - 1), "--n", "2"],
                                   ["--interpolate", "0", str(2**70)]])
def test_seed_beyond_the_generator_range_is_a_usage_error(tiny_runs, tmp_path: Path, flags):
    result = sample("--checkpoint", str(tiny_runs["dcgan"]), "--out", str(tmp_path / "x.npz"), *flags, code=2)
    assert "seed" in result.stderr and "internal error" not in result.stderr


def test_largest_seed_works(tiny_runs, tmp_path: Path):
    data = sample_npz(tiny_runs["dcgan"], tmp_path / "x.npz", "--seeds", str(2**64 - 1))
    assert data["seeds"].tolist() == [2**64 - 1]


def test_same_seed_same_image(tiny_runs, tmp_path: Path):
    run = tiny_runs["dcgan"]
    three = sample_npz(run, tmp_path / "a.npz", "--seeds", "3-5")
    one = sample_npz(run, tmp_path / "b.npz", "--seeds", "5")
    assert list(three["seeds"]) == [3, 4, 5] and list(one["seeds"]) == [5]
    assert np.array_equal(three["arr_0"][2], one["arr_0"][0])
    assert not np.array_equal(three["arr_0"][0], three["arr_0"][2]), "different seeds gave the same image"


def test_seeds_5_is_the_sixth_image_of_n_64(tiny_runs, tmp_path: Path):
    """The README's promise."""
    grid = sample_npz(tiny_runs["dcgan"], tmp_path / "a.npz", "--n", "64", "--seed", "0")
    five = sample_npz(tiny_runs["dcgan"], tmp_path / "b.npz", "--seeds", "5")
    assert np.array_equal(grid["arr_0"][5], five["arr_0"][0])


def test_n_and_seed_equal_the_seed_range(tiny_runs, tmp_path: Path):
    run = tiny_runs["dcgan"]
    by_n = sample_npz(run, tmp_path / "a.npz", "--n", "4", "--seed", "0")
    by_seeds = sample_npz(run, tmp_path / "b.npz", "--seeds", "0-3")
    assert list(by_n["seeds"]) == [0, 1, 2, 3]
    assert np.array_equal(by_n["arr_0"], by_seeds["arr_0"])
    shifted = sample_npz(run, tmp_path / "c.npz", "--n", "2", "--seed", "2")
    assert np.array_equal(shifted["arr_0"], by_seeds["arr_0"][2:])


def test_n_disagreeing_with_seeds(tiny_runs, tmp_path: Path):
    result = sample("--checkpoint", str(tiny_runs["dcgan"]), "--out", str(tmp_path / "x.npz"),
                    "--n", "3", "--seeds", "0-3", code=2)
    assert "--n" in result.stderr


@pytest.mark.parametrize("flags", [["--n", "0"], ["--nrow", "0"]])
def test_non_positive_counts(tiny_runs, tmp_path: Path, flags):
    sample("--checkpoint", str(tiny_runs["dcgan"]), "--out", str(tmp_path / "x.png"), *flags, code=2)
    assert not (tmp_path / "x.png").exists()


# ---------------------------------------------------------------- outputs


def test_folder_output_and_manifest(tiny_runs, tmp_path: Path):
    run = tiny_runs["dcgan"]
    out = tmp_path / "imgs"
    sample("--checkpoint", str(run), "--out", f"{out}/", "--seeds", "2,4,11")
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(pngs) == 3
    lines = (out / "manifest.jsonl").read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    sha = hashlib.sha256((run / ck.MODEL_FILE).read_bytes()).hexdigest()
    assert [e["seed"] for e in entries] == [2, 4, 11]
    assert sorted(e["file"] for e in entries) == pngs
    for e in entries:
        assert e["label"] is None
        assert e["checkpoint_sha256"] == sha
        with Image.open(out / e["file"]) as image:
            assert image.size == (16, 16)
    # each PNG is the image of its seed
    ref = sample_npz(run, tmp_path / "ref.npz", "--seeds", "2,4,11")
    for i, e in enumerate(entries):
        pixels = np.asarray(Image.open(out / e["file"]))
        assert np.array_equal(pixels, ref["arr_0"][i][:, :, 0])


def test_folder_output_of_a_conditional_model_records_labels(tiny_runs, tmp_path: Path):
    out = tmp_path / "imgs"
    sample("--checkpoint", str(tiny_runs["cgan"]), "--out", str(out), "--seeds", "0-2", "--label", "Sneaker")
    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [e["label"] for e in entries] == [7, 7, 7]
    assert all(e["class"] == "Sneaker" for e in entries)
    assert len(list(out.glob("*.png"))) == 3


@pytest.mark.parametrize("kind,keys", [("dcgan", {"arr_0", "seeds"}), ("cgan", {"arr_0", "seeds", "labels"})])
def test_npz_output_is_what_fid_tools_read(tiny_runs, tmp_path: Path, kind: str, keys: set[str]):
    """`arr_0`, N×H×W×C uint8, as guided-diffusion's evaluator and others read it; labels only where there are
    labels, and the images stored once."""
    data = sample_npz(tiny_runs[kind], tmp_path / "s.npz", "--n", "5", "--seed", "10")
    assert set(data) == keys
    assert data["arr_0"].shape == (5, 16, 16, 1)
    assert data["arr_0"].dtype == np.uint8
    assert list(data["seeds"]) == [10, 11, 12, 13, 14]
    if "labels" in keys:
        assert data["labels"].shape == (5,)


def test_translations_npz_is_what_fid_tools_read(tiny_runs, tmp_path: Path):
    make_image_folder(tmp_path / "in", classes=(), n_per_class=3, size=20, mode="L")
    data = sample_npz(tiny_runs["pix2pix"], tmp_path / "t.npz", "--input", str(tmp_path / "in"))
    assert set(data) == {"arr_0", "inputs"}  # a folder has no targets
    assert data["arr_0"].dtype == np.uint8 and data["arr_0"].shape[0] == 3 and data["arr_0"].shape[1:3] == (16, 16)
    assert data["inputs"].shape[:3] == (3, 16, 16)


@pytest.mark.parametrize("out", ["one.png", "-"])
def test_one_image_is_written_at_its_own_size(tiny_runs, tmp_path: Path, out: str):
    """`--seeds 5 --out one.png` is the image itself, not a one-cell grid with a border."""
    result = sample("--checkpoint", str(tiny_runs["dcgan"]), "--out", str(tmp_path / out) if out != "-" else out,
                    "--seeds", "5")
    png = result.stdout_bytes if out == "-" else (tmp_path / out).read_bytes()
    with Image.open(__import__("io").BytesIO(png)) as image:
        assert image.size == (16, 16)
        pixels = np.asarray(image)
    ref = sample_npz(tiny_runs["dcgan"], tmp_path / "ref.npz", "--seeds", "5")
    assert np.array_equal(pixels, ref["arr_0"][0][:, :, 0])


def test_png_grid_layout(tiny_runs, tmp_path: Path):
    out = tmp_path / "grid.png"
    sample("--checkpoint", str(tiny_runs["dcgan"]), "--out", str(out), "--n", "6", "--nrow", "3")
    with Image.open(out) as image:  # 3 per row, 2 rows, 2px padding
        assert image.size == (3 * 18 + 2, 2 * 18 + 2)
    npz = sample_npz(tiny_runs["dcgan"], tmp_path / "g.npz", "--n", "6")
    tile = np.asarray(Image.open(out))[2 + 18 : 2 + 18 + 16, 2 + 18 * 2 : 2 + 18 * 2 + 16]
    assert np.array_equal(tile, npz["arr_0"][5][:, :, 0])  # image 5 sits at row 1, column 2


def test_json_summary(tiny_runs, tmp_path: Path):
    result = sample("--checkpoint", str(tiny_runs["dcgan"]), "--out", str(tmp_path / "s.png"), "--n", "2", "--json")
    summary = json.loads(result.stdout)
    assert summary["n"] == 2 and summary["kind"] == "dcgan"
    assert summary["files"] == [str(tmp_path / "s.png")]
    assert Path(summary["checkpoint"]) == tiny_runs["dcgan"] / ck.MODEL_FILE


@pytest.mark.parametrize("name", ["x.jpg", "x.tar.gz"])
def test_unknown_output_kind(tiny_runs, tmp_path: Path, name: str):
    sample("--checkpoint", str(tiny_runs["dcgan"]), "--out", str(tmp_path / name), code=2)


# ---------------------------------------------------------------- labels


@pytest.mark.parametrize("label,index", [("3", 3), ("0", 0), ("9", 9), ("trouser", 1), ("Ankle boot", 9), ("T-SHIRT/TOP", 0)])
def test_label_by_index_or_name(tiny_runs, tmp_path: Path, label: str, index: int):
    data = sample_npz(tiny_runs["cgan"], tmp_path / "l.npz", "--seeds", "0-2", "--label", label)
    assert list(data["labels"]) == [index] * 3


def test_class_is_another_name_for_label(tiny_runs, tmp_path: Path):
    by_label = sample_npz(tiny_runs["cgan"], tmp_path / "a.npz", "--seeds", "0-2", "--label", "Sneaker")
    by_class = sample_npz(tiny_runs["cgan"], tmp_path / "b.npz", "--seeds", "0-2", "--class", "Sneaker")
    assert list(by_class["labels"]) == [7] * 3 and np.array_equal(by_class["arr_0"], by_label["arr_0"])


def test_label_changes_the_image(tiny_runs, tmp_path: Path):
    a = sample_npz(tiny_runs["cgan"], tmp_path / "a.npz", "--seeds", "0", "--label", "1")
    b = sample_npz(tiny_runs["cgan"], tmp_path / "b.npz", "--seeds", "0", "--label", "8")
    assert not np.array_equal(a["arr_0"], b["arr_0"])


def test_label_on_unconditional_model(tiny_runs, models, tmp_path: Path):
    model, loaded = models["dcgan"]
    with pytest.raises(UsageError, match="conditional"):
        plan_batch(SampleRequest(out="x.png", n=2, label="1"), model, loaded.config.data.classes)
    out = tmp_path / "x.png"
    result = sample("--checkpoint", str(tiny_runs["dcgan"]), "--out", str(out), "--label", "1", code=2)
    assert "conditional" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("label", ["10", "-1", "99", "giraffe", ""])
def test_label_out_of_range(tiny_runs, tmp_path: Path, label: str):
    result = sample("--checkpoint", str(tiny_runs["cgan"]), "--out", str(tmp_path / "x.png"), "--label", label, code=2)
    assert "--label" in result.stderr and "Trouser" in result.stderr  # lists the valid classes


@pytest.mark.parametrize("n", [64, 30, 10, 7, 95])
def test_default_conditional_grid_puts_class_k_in_row_k(models, n: int):
    model, loaded = models["cgan"]
    assert loaded.config.data.classes == FASHION
    plan = plan_batch(SampleRequest(out="x.png", n=n), model, loaded.config.data.classes)
    assert plan.labels is not None and len(plan.labels) == n
    for i, label in enumerate(plan.labels.tolist()):
        assert label == i // plan.per_row, (i, label, plan.per_row)
    rows = -(-n // plan.per_row)
    assert rows <= 10
    if n >= 10:
        assert set(plan.labels.tolist()) == set(range(10))


def test_conditional_grid_images_follow_the_labels(tiny_runs, tmp_path: Path):
    grid = sample_npz(tiny_runs["cgan"], tmp_path / "g.npz", "--n", "20")
    assert list(grid["labels"]) == [i // 2 for i in range(20)]
    row3 = sample_npz(tiny_runs["cgan"], tmp_path / "r.npz", "--seeds", "6,7", "--label", "3")
    assert np.array_equal(grid["arr_0"][6:8], row3["arr_0"])


# ---------------------------------------------------------------- interpolation


@pytest.mark.parametrize("a,b", [(2, 7), (0, 5), (3, 9)])
def test_interpolation_endpoints_are_the_seed_images(tiny_runs, models, tmp_path: Path, a: int, b: int):
    model, _ = models["dcgan"]
    plan = plan_batch(SampleRequest(out="x.npz", interpolate=(a, b), frames=5), model, [])
    ends = sampling.latents([a, b], model.latent_dim)
    assert torch.equal(plan.z[0], ends[0]) and torch.equal(plan.z[-1], ends[1])
    walk = sample_npz(tiny_runs["dcgan"], tmp_path / "w.npz", "--interpolate", str(a), str(b), "--frames", "5")
    seeds = sample_npz(tiny_runs["dcgan"], tmp_path / "s.npz", "--seeds", f"{a},{b}")
    assert walk["arr_0"].shape[0] == 5
    assert np.array_equal(walk["arr_0"][0], seeds["arr_0"][0])
    assert np.array_equal(walk["arr_0"][-1], seeds["arr_0"][1])
    assert not np.array_equal(walk["arr_0"][2], walk["arr_0"][0])


def test_interpolation_grid_is_one_row(tiny_runs, tmp_path: Path):
    out = tmp_path / "walk.png"
    sample("--checkpoint", str(tiny_runs["dcgan"]), "--out", str(out), "--interpolate", "0", "1", "--frames", "4")
    with Image.open(out) as image:
        assert image.size == (4 * 18 + 2, 18 + 2)


def test_conditional_interpolation_keeps_the_label(tiny_runs, tmp_path: Path):
    walk = sample_npz(tiny_runs["cgan"], tmp_path / "w.npz", "--interpolate", "2", "7", "--frames", "4", "--label", "5")
    seeds = sample_npz(tiny_runs["cgan"], tmp_path / "s.npz", "--seeds", "2,7", "--label", "5")
    assert list(walk["labels"]) == [5] * 4
    assert np.array_equal(walk["arr_0"][[0, -1]], seeds["arr_0"])


def test_conditional_interpolation_needs_a_label(tiny_runs, models, tmp_path: Path):
    """Without --label the default per-class layout would change class on every frame of the walk."""
    model, loaded = models["cgan"]
    with pytest.raises(UsageError, match="--label"):
        plan_batch(SampleRequest(out="x.png", interpolate=(0, 1), frames=6), model, loaded.config.data.classes)
    sample("--checkpoint", str(tiny_runs["cgan"]), "--out", str(tmp_path / "w.png"), "--interpolate", "0", "1", code=2)


@pytest.mark.parametrize("flags,code", [(["--frames", "1"], 2), (["--frames", "0"], 2)])
def test_interpolation_needs_two_frames(tiny_runs, tmp_path: Path, flags, code):
    sample("--checkpoint", str(tiny_runs["dcgan"]), "--out", str(tmp_path / "w.png"),
           "--interpolate", "0", "1", *flags, code=code)


def test_interpolation_as_an_animated_gif(tiny_runs, tmp_path: Path):
    run, out = tiny_runs["dcgan"], tmp_path / "walk.gif"
    sample("--checkpoint", str(run), "--out", str(out), "--interpolate", "0", "1", "--frames", "5")
    walk = sample_npz(run, tmp_path / "walk.npz", "--interpolate", "0", "1", "--frames", "5")
    with Image.open(out) as gif:
        assert gif.is_animated and gif.n_frames == 5 and gif.size == (16, 16)
        for i in range(5):
            gif.seek(i)
            assert np.array_equal(np.asarray(gif.convert("L")), walk["arr_0"][i][:, :, 0]), f"frame {i}"


def test_interpolation_into_a_folder_writes_its_frames(tiny_runs, tmp_path: Path):
    run, out = tiny_runs["dcgan"], tmp_path / "walk"
    sample("--checkpoint", str(run), "--out", str(out), "--interpolate", "3", "8", "--frames", "4")
    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [e["file"] for e in entries] == [f"frame{i:04d}.png" for i in range(4)]
    assert all(e["frame"] == i and e["interpolate"] == [3, 8] and "seed" not in e for i, e in enumerate(entries))
    walk = sample_npz(run, tmp_path / "walk.npz", "--interpolate", "3", "8", "--frames", "4")
    for i, e in enumerate(entries):
        assert np.array_equal(np.asarray(Image.open(out / e["file"])), walk["arr_0"][i][:, :, 0])


def test_a_gif_needs_a_walk(tiny_runs, tmp_path: Path):
    result = sample("--checkpoint", str(tiny_runs["dcgan"]), "--out", str(tmp_path / "x.gif"), "--n", "4", code=2)
    assert "--interpolate" in result.stderr and not (tmp_path / "x.gif").exists()


def test_steps_is_the_old_spelling_of_frames(tiny_runs, tmp_path: Path):
    """`sample --steps` counted frames, which `train --steps` does not: it still works, with one warning."""
    run = tiny_runs["dcgan"]
    old = sample("--checkpoint", str(run), "--out", str(tmp_path / "a.npz"), "--interpolate", "0", "1", "--steps", "3")
    assert [line for line in old.stderr.splitlines() if "deprecated" in line] == [
        "warning: sample --steps is deprecated: write --frames (train --steps counts optimisation steps)"]
    new = sample("--checkpoint", str(run), "--out", str(tmp_path / "b.npz"), "--interpolate", "0", "1", "--frames", "3")
    assert "deprecated" not in new.stderr
    assert np.array_equal(np.load(tmp_path / "a.npz")["arr_0"], np.load(tmp_path / "b.npz")["arr_0"])
    sample("--checkpoint", str(run), "--out", str(tmp_path / "c.npz"), "--interpolate", "0", "1",
           "--steps", "3", "--frames", "4", code=2)


# ---------------------------------------------------------------- truncation


def test_truncation_scales_the_latents(models):
    model, _ = models["dcgan"]
    plain = plan_batch(SampleRequest(out="x.npz", seeds="0-3"), model, [])
    half = plan_batch(SampleRequest(out="x.npz", seeds="0-3", trunc=0.5), model, [])
    assert torch.equal(half.z, plain.z * 0.5)


@pytest.mark.parametrize("kind,label", [("dcgan", []), ("cgan", ["--label", "3"])])
def test_truncation_zero_is_the_one_average_image_and_one_changes_nothing(tiny_runs, tmp_path: Path, kind: str,
                                                                         label: list[str]):
    def images(name: str, *trunc: str) -> np.ndarray:
        return sample_npz(tiny_runs[kind], tmp_path / name, "--seeds", "0-3", *label, *trunc)["arr_0"]

    default = images("d.npz")
    assert np.array_equal(images("one.npz", "--trunc", "1"), default)
    zero = images("zero.npz", "--trunc", "0")
    assert all(np.array_equal(image, zero[0]) for image in zero)
    assert not np.array_equal(images("half.npz", "--trunc", "0.5"), default)


@pytest.mark.parametrize("psi", ["1.5", "-0.1", "nan"])
def test_truncation_outside_0_1_is_a_usage_error(tiny_runs, tmp_path: Path, psi: str):
    result = sample("--checkpoint", str(tiny_runs["dcgan"]), "--out", str(tmp_path / "x.png"), "--trunc", psi, code=2)
    assert "--trunc must be" in result.stderr and not (tmp_path / "x.png").exists()


# ---------------------------------------------------------------- overwriting


@pytest.mark.parametrize("name", ["s.png", "s.npz"])
def test_refuses_to_overwrite_without_force(tiny_runs, tmp_path: Path, name: str):
    out = tmp_path / name
    out.write_bytes(b"precious")
    result = sample("--checkpoint", str(tiny_runs["dcgan"]), "--out", str(out), "--n", "2", code=2)
    assert "--force" in result.stderr
    assert out.read_bytes() == b"precious"
    sample("--checkpoint", str(tiny_runs["dcgan"]), "--out", str(out), "--n", "2", "--force")
    assert out.read_bytes() != b"precious"
    if name.endswith(".png"):
        with Image.open(out) as image:
            image.verify()
    else:
        with np.load(out) as data:
            assert data["arr_0"].shape[0] == 2


def test_refuses_to_write_into_a_non_empty_folder_without_force(tiny_runs, tmp_path: Path):
    out = tmp_path / "imgs"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    sample("--checkpoint", str(tiny_runs["dcgan"]), "--out", str(out), "--n", "2", code=2)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    sample("--checkpoint", str(tiny_runs["dcgan"]), "--out", str(out), "--n", "2", "--force")
    assert (out / "manifest.jsonl").exists() and len(list(out.glob("*.png"))) == 2
    assert (out / "notes.txt").read_text() == "mine"


def test_empty_folder_is_fine_without_force(tiny_runs, tmp_path: Path):
    out = tmp_path / "imgs"
    out.mkdir()
    sample("--checkpoint", str(tiny_runs["dcgan"]), "--out", str(out), "--n", "1")
    assert len(list(out.glob("*.png"))) == 1


def test_a_folder_of_any_size_is_generated_and_written_in_chunks(tiny_runs, tmp_path: Path, monkeypatch) -> None:
    """--seeds 0-99999999 into a folder: no list of 10^8 seeds, no 10^8 latents; images are generated
    SAMPLE_BATCH at a time and the manifest is streamed (stopped here after three chunks)."""
    import tracemalloc

    from genai_cli import fileio

    sizes: list[int] = []
    real_generate = sampling.generate

    def generate(model, z, labels, device):
        sizes.append(len(z))
        if len(sizes) > 3:
            raise KeyboardInterrupt
        return real_generate(model, z, labels, device)

    monkeypatch.setattr(sampling, "generate", generate)
    monkeypatch.setattr(fileio, "_write_synced", lambda fd, data: __import__("os").close(fd))  # no disk traffic
    tracemalloc.start()
    try:
        result = sample("--checkpoint", str(tiny_runs["dcgan"]), "--out", str(tmp_path / "imgs"), "--seeds", "0-99999999",
                        code=130)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sizes == [sampling.SAMPLE_BATCH] * 4, sizes
    assert peak < 64 << 20, f"{peak} bytes of Python objects for a streamed folder"
    assert "interrupted" in result.stderr
    assert not list((tmp_path / "imgs").glob(".*.tmp"))  # the half-written manifest was removed
