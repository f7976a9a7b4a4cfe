"""genai_cli.data: where datasets are found, how they are read and converted, batch order."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, make_idx_dataset, make_image, make_image_folder
from idx import write_idx
from PIL import Image

from genai_cli import data
from genai_cli.data import InMemorySource, load_dataset, resolve_data_roots
from genai_cli.errors import DataError, UsageError

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _no_debian(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """This machine's /usr/share/datasets must not leak into the tests."""
    monkeypatch.setitem(data.DEBIAN_DIRS, "fashion-mnist", tmp_path / "no-debian")


# ---------------------------------------------------------------- where data is found


def test_roots_are_data_dir_then_env_then_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cache = tmp_path / "cache" / "genai" / "datasets"
    assert resolve_data_roots(None) == [cache]
    monkeypatch.setenv("GENAI_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_roots(None) == [tmp_path / "env", cache]
    assert resolve_data_roots(str(tmp_path / "cli")) == [tmp_path / "cli", tmp_path / "env", cache]
    assert resolve_data_roots(str(tmp_path / "env")) == [tmp_path / "env", cache]


def test_default_cache_is_under_home(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_data_roots(None) == [tmp_path / ".cache" / "genai" / "datasets"]


def test_data_dir_wins_and_later_roots_are_searched(monkeypatch, tmp_path):
    make_idx_dataset(tmp_path / "cli", n_train=32)
    make_idx_dataset(tmp_path / "env", n_train=48)
    monkeypatch.setenv("GENAI_DATA_DIR", str(tmp_path / "env"))
    assert len(load_dataset("fashion-mnist", data_dir=str(tmp_path / "cli"))) == 32
    assert len(load_dataset("fashion-mnist")) == 48
    assert len(load_dataset("fashion-mnist", data_dir=str(tmp_path / "empty"))) == 48


@pytest.mark.parametrize("gz", [False, True])
def test_reads_idx_raw_and_gz(tmp_path, gz):
    written = make_idx_dataset(tmp_path, "KMNIST", gz=gz)
    source = load_dataset("KMNIST", data_dir=str(tmp_path))
    images, labels = written["train"]
    assert source.name == "kmnist" and source.labelled and len(source.classes) == 10
    assert (source.channels, source.image_size, len(source)) == (1, 28, 64)
    assert torch.equal(source.all_images(), torch.from_numpy(images).unsqueeze(1))
    assert source.all_labels().dtype == torch.int64
    assert source.all_labels().tolist() == labels.tolist()
    assert source.location == str(tmp_path / "KMNIST" / "raw")


def test_fashion_class_names_and_test_split(idx_root):
    source = load_dataset("Fashion_MNIST", data_dir=str(idx_root), split="test")
    assert len(source) == 16
    assert source.classes[0] == "T-shirt/top" and source.classes[-1] == "Ankle boot"


def test_debian_files_are_decompressed_into_the_root(monkeypatch, tmp_path, capsys):
    debian = tmp_path / "debian"
    written = make_idx_dataset(tmp_path / "staging", gz=True)
    debian.mkdir()
    for path in (tmp_path / "staging" / "FashionMNIST" / "raw").iterdir():
        path.rename(debian / path.name)
    monkeypatch.setitem(data.DEBIAN_DIRS, "fashion-mnist", debian)
    root = tmp_path / "root"
    source = load_dataset("fashion-mnist", data_dir=str(root))
    raw = root / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == [
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
    ]
    assert source.location == str(raw)
    assert torch.equal(source.all_images()[:, 0], torch.from_numpy(written["train"][0]))
    assert "decompressed" in capsys.readouterr().err


def test_debian_files_are_read_in_place_when_the_root_is_not_writable(
    monkeypatch, tmp_path, capsys
):
    debian = tmp_path / "debian"
    make_idx_dataset(tmp_path / "staging", gz=True)
    (tmp_path / "staging" / "FashionMNIST" / "raw").rename(debian)
    monkeypatch.setitem(data.DEBIAN_DIRS, "fashion-mnist", debian)
    (tmp_path / "a-file").write_text("not a folder")
    source = load_dataset("fashion-mnist", data_dir=str(tmp_path / "a-file" / "root"))
    assert len(source) == 64 and source.location == str(debian)
    assert f"reading the files in {debian}" in capsys.readouterr().err


# ---------------------------------------------------------------- what fails, and how


def test_corrupt_idx_files_are_data_errors(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    make_idx_dataset(tmp_path, "MNIST", n_test=0)
    images = raw / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-10])
    with pytest.raises(DataError, match="train-images-idx3-ubyte is truncated or corrupt"):
        load_dataset("mnist", data_dir=str(tmp_path))
    images.write_bytes(b"\x00\x00\x0d\x03" + bytes(12))  # float IDX, not unsigned bytes
    with pytest.raises(DataError, match="not an IDX file"):
        load_dataset("mnist", data_dir=str(tmp_path))
    images.unlink()
    (raw / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"IDX")[:-4])
    with pytest.raises(DataError, match=r"cannot read .*train-images-idx3-ubyte\.gz"):
        load_dataset("mnist", data_dir=str(tmp_path))


def test_image_and_label_counts_must_agree(tmp_path):
    make_idx_dataset(tmp_path, "MNIST", n_test=0)
    write_idx(tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte", np.zeros(3))
    with pytest.raises(DataError, match="64 images but .* holds 3 labels"):
        load_dataset("mnist", data_dir=str(tmp_path))


def test_missing_dataset_offline_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("kmnist", data_dir=str(tmp_path))
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / "KMNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "train-labels-idx1-ubyte" in message
    assert "GENAI_OFFLINE" in message and "--data-dir" in message
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", data_dir=str(tmp_path))
    with pytest.raises(DataError, match="download disabled"):
        load_dataset("cifar10", data_dir=str(tmp_path), download=False)


def test_missing_train_split_with_test_present(tmp_path):
    make_idx_dataset(tmp_path, "MNIST", n_train=0)
    with pytest.raises(DataError, match="no train split .*--split test"):
        load_dataset("mnist", data_dir=str(tmp_path))
    assert len(load_dataset("mnist", data_dir=str(tmp_path), split="test")) == 16


def test_unknown_name_suggests_the_closest_and_folders(tmp_path):
    with pytest.raises(UsageError, match="did you mean 'fashion-mnist'.*folder"):
        load_dataset("fashon-mnist")
    with pytest.raises(UsageError, match="split"):
        load_dataset("mnist", split="val")
    with pytest.raises(UsageError, match="channels"):
        load_dataset("mnist", channels=2)


def test_logs_go_to_stderr_only(idx_root, capsys):
    load_dataset("fashion-mnist", data_dir=str(idx_root))
    out, err = capsys.readouterr()
    assert out == "" and "64 images" in err


# ---------------------------------------------------------------- cifar10 and conversion


def _write_cifar(root: Path, n_per_batch: int = 4) -> None:
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        records = np.zeros((n_per_batch, 3073), np.uint8)
        records[:, 0] = np.arange(n_per_batch) % 10
        records[:, 1 : 1 + 1024] = 255  # red plane full, green and blue empty
        (folder / name).write_bytes(records.tobytes())
    classes = ["airplane", "automobile", "bird", "cat", "deer"]
    classes += ["dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta.txt").write_text("\n".join(classes) + "\n\n")


def test_cifar10_binary_batches(tmp_path):
    _write_cifar(tmp_path)
    source = load_dataset("cifar10", data_dir=str(tmp_path))
    assert (len(source), source.channels, source.image_size) == (20, 3, 32)
    assert source.classes[0] == "airplane" and len(source.classes) == 10
    red = source.all_images()[0]
    assert red[0].min() == 255 and red[1:].max() == 0
    gray = load_dataset("cifar10", data_dir=str(tmp_path), split="test", channels=1)
    assert gray.all_images().shape == (4, 1, 32, 32)
    assert gray.all_images().unique().tolist() == [76]  # ITU-R 601 luma of pure red


def test_cifar10_truncated_batch(tmp_path):
    _write_cifar(tmp_path)
    batch = tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin"
    batch.write_bytes(batch.read_bytes()[:-1])
    with pytest.raises(DataError, match="data_batch_3.bin is truncated"):
        load_dataset("cifar10", data_dir=str(tmp_path))


def test_resize_and_channel_conversion_of_idx(tmp_path):
    make_idx_dataset(tmp_path, "MNIST", n_train=16, n_test=0)
    raw = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    write_idx(raw, np.full((16, 28, 28), 200))
    source = load_dataset("mnist", data_dir=str(tmp_path), channels=3, image_size=32)
    assert (source.channels, source.image_size) == (3, 32)
    assert source.all_images().shape == (16, 3, 32, 32)
    assert source.all_images().unique().tolist() == [200]  # antialiased resize keeps flat areas


# ---------------------------------------------------------------- image folders


def test_labelled_folder(labelled_folder):
    source = load_dataset(str(labelled_folder))
    assert source.classes == ["cat", "dog"] and source.labelled
    assert source.all_labels().tolist() == [0] * 5 + [1] * 5
    assert source.all_images().shape == (10, 3, 64, 64)
    assert source.name == str(labelled_folder)


def test_flat_folder_is_unlabelled(flat_folder):
    source = load_dataset(str(flat_folder), image_size=16)
    assert not source.labelled and source.classes == [] and source.all_labels() is None
    assert source.all_images().shape == (8, 3, 16, 16)
    images, labels = next(source.epoch_batches(0, 4, seed=0, device=CPU))
    assert images.shape == (4, 3, 16, 16) and labels is None


def test_gray_folder_defaults_to_one_channel(tmp_path):
    make_image_folder(tmp_path / "gray", classes=("a",), mode="L")
    make_image(20, "I;16").save(tmp_path / "gray" / "a" / "deep.png")
    assert load_dataset(str(tmp_path / "gray")).channels == 1
    make_image(20, "P").save(tmp_path / "gray" / "a" / "palette.png")
    assert load_dataset(str(tmp_path / "gray")).channels == 3


@pytest.mark.parametrize("channels", [1, 3])
def test_modes_are_converted_with_the_right_range(tmp_path, channels):
    folder = tmp_path / "modes"
    folder.mkdir()
    Image.fromarray(np.full((10, 10), 65535, np.uint16)).save(folder / "a_white16.png")
    Image.fromarray(np.full((10, 10), 32896, np.uint16)).save(folder / "b_mid16.png")
    Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(folder / "c_clear.png")
    Image.new("LA", (10, 10), (0, 255)).save(folder / "d_black_la.png")
    make_image((30, 20), "P").save(folder / "e_palette.gif")
    Image.new("CMYK", (10, 10), (0, 0, 0, 0)).save(folder / "f_cmyk.jpg")
    Image.new("1", (10, 10), 1).save(folder / "g_bilevel.bmp")
    images = load_dataset(str(folder), channels=channels, image_size=8).all_images()
    assert images.shape == (7, channels, 8, 8)
    white16, mid16, clear, black, _, cmyk, bilevel = (img.float().mean() for img in images)
    assert white16 == 255 and mid16 == 128  # scaled from 16 bits, not clipped
    assert clear == 255 and black == 0  # transparency composited on white
    assert cmyk > 250 and bilevel == 255


def test_non_square_images_are_centre_cropped(tmp_path):
    folder = tmp_path / "wide"
    folder.mkdir()
    pixels = np.zeros((10, 30, 3), np.uint8)
    pixels[:, 10:20] = 255  # white centre third, black sides
    Image.fromarray(pixels).save(folder / "wide.png")
    image = load_dataset(str(folder), image_size=10).all_images()[0]
    assert image.shape == (3, 10, 10) and image.float().mean() > 250


def test_unreadable_files_are_skipped_with_one_warning(labelled_folder, capsys):
    (labelled_folder / "cat" / "garbage.png").write_bytes(b"not an image at all")
    good = (labelled_folder / "dog" / "img000.png").read_bytes()
    (labelled_folder / "dog" / "truncated.png").write_bytes(good[: len(good) // 2])
    (labelled_folder / "dog" / "notes.txt").write_text("ignored: not an image extension")
    source = load_dataset(str(labelled_folder))
    assert len(source) == 10 and source.all_labels().tolist() == [0] * 5 + [1] * 5
    err = capsys.readouterr().err
    assert err.count("warning") == 1
    assert "skipped 2 unreadable" in err and "garbage.png" in err and "truncated.png" in err


def test_empty_and_unreadable_folders_are_data_errors(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(DataError, match="no images in"):
        load_dataset(str(tmp_path / "empty"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"\xff\xd8 nope")
    with pytest.raises(DataError, match="none of the 1 image files"):
        load_dataset(str(tmp_path / "bad"))


def test_loose_images_and_empty_classes_are_ignored_with_warnings(labelled_folder, capsys):
    make_image(20).save(labelled_folder / "loose.png")
    (labelled_folder / "bird").mkdir()
    (labelled_folder / ".hidden").mkdir()
    source = load_dataset(str(labelled_folder))
    assert source.classes == ["cat", "dog"] and len(source) == 10
    err = capsys.readouterr().err
    assert "ignoring 1 image(s) directly in" in err and "without images" in err and "bird" in err


# ---------------------------------------------------------------- batches


def _indexed_source(n: int = 40) -> InMemorySource:
    """Image i is filled with the value i, its label is i % 10: batches reveal their indices."""
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).clone()
    labels = torch.arange(n) % 10
    return InMemorySource("t", [str(c) for c in range(10)], 1, 4, "mem", labels, images)


def _ids(batches) -> list[list[int]]:
    return [images[:, 0, 0, 0].tolist() for images, _ in batches]


# ---------------------------------------------------------------- .npz arrays of images


@pytest.mark.parametrize("key,channels", [("arr_0", 3), ("arr_0", 1), ("images", 3)])  # images: older genai files
def test_npz_of_images_in_either_layout(tmp_path, key: str, channels: int):
    pixels = np.random.default_rng(0).integers(0, 256, (6, 8, 8, channels), dtype=np.uint8)
    np.savez_compressed(tmp_path / "s.npz", **{key: pixels}, labels=np.full(6, -1), seeds=np.arange(6))
    source = load_dataset(str(tmp_path / "s.npz"))
    assert (len(source), source.channels, source.image_size) == (6, channels, 8) and not source.labelled
    assert torch.equal(source.all_images(), torch.from_numpy(pixels).permute(0, 3, 1, 2))
    assert load_dataset(str(tmp_path / "s.npz"), channels=1, image_size=4).all_images().shape == (6, 1, 4, 4)


@pytest.mark.parametrize("content,problem", [
    ({"mu": np.zeros(3)}, "holds no images (its arrays: mu)"),
    ({"arr_0": np.zeros((2, 8, 8, 3), np.float32)}, "float32 of shape [2, 8, 8, 3]"),
    ({"arr_0": np.zeros((2, 8, 6, 3), np.uint8)}, "square uint8"),
    ({"arr_0": np.array([{"x": 1}], dtype=object)}, "without object arrays"),  # pickled: never loaded
])
def test_bad_npz_files_are_one_line_data_errors(tmp_path, content: dict, problem: str):
    np.savez(tmp_path / "bad.npz", **content)
    with pytest.raises(DataError, match=re.escape(problem)) as err:
        load_dataset(str(tmp_path / "bad.npz"))
    assert "\n" not in str(err.value)
    (tmp_path / "cut.npz").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(DataError, match="cannot read .*cut.npz"):
        load_dataset(str(tmp_path / "cut.npz"))


@pytest.mark.parametrize("fmt", sorted(data.FILE_FORMATS))
def test_every_registered_dataset_names_a_known_file_format(fmt: str):
    specs = [data.DATASETS.get(name) for name in data.dataset_names()]
    assert all(spec.fmt in data.FILE_FORMATS for spec in specs) and fmt in {spec.fmt for spec in specs}
    assert data.FILE_FORMATS[fmt].split_files("train") != data.FILE_FORMATS[fmt].split_files("test")


def test_batches_are_seeded_permutations_without_a_partial_batch():
    source = _indexed_source(40)
    first = _ids(source.epoch_batches(0, 16, seed=3, device=CPU))
    assert first == _ids(source.epoch_batches(0, 16, seed=3, device=CPU))
    assert len(first) == source.batches_per_epoch(16) == 2
    assert len({i for batch in first for i in batch}) == 32
    assert first != _ids(source.epoch_batches(1, 16, seed=3, device=CPU))
    assert first != _ids(source.epoch_batches(0, 16, seed=4, device=CPU))
    for images, labels in source.epoch_batches(0, 16, seed=3, device=CPU):
        assert images.dtype == torch.uint8 and labels.dtype == torch.int64
        assert torch.equal(labels, images[:, 0, 0, 0].long() % 10)


def test_start_batch_resumes_with_the_remaining_batches():
    source = _indexed_source(40)
    full = _ids(source.epoch_batches(2, 8, seed=0, device=CPU))
    assert _ids(source.epoch_batches(2, 8, seed=0, device=CPU, start_batch=3)) == full[3:]


def test_rank_shards_make_up_the_single_rank_batch():
    source = _indexed_source(40)
    single = _ids(source.epoch_batches(5, 8, seed=1, device=CPU))
    ranks = [_ids(source.epoch_batches(5, 4, 1, CPU, rank=r, world_size=2)) for r in (0, 1)]
    assert [a + b for a, b in zip(*ranks)] == single
    resumed = _ids(source.epoch_batches(5, 4, 1, CPU, start_batch=2, rank=1, world_size=2))
    assert resumed == ranks[1][2:]


def test_batch_larger_than_the_dataset_is_a_usage_error():
    with pytest.raises(UsageError, match="--batch-size"):
        _indexed_source(10).batches_per_epoch(8, world_size=2)


def test_streaming_gives_the_same_batches_as_memory(monkeypatch, labelled_folder, capsys):
    make_image_folder(labelled_folder, classes=("cat",), n_per_class=7, mode="RGBA")
    in_memory = load_dataset(str(labelled_folder), image_size=12)
    monkeypatch.setattr(data, "MEMORY_BUDGET_BYTES", 0)
    monkeypatch.setattr(data, "STREAM_WORKERS", 2)
    streaming = load_dataset(str(labelled_folder), image_size=12)
    assert isinstance(streaming, data.StreamingSource) and "streaming" in capsys.readouterr().err
    assert len(streaming) == len(in_memory) == 12 and streaming.classes == in_memory.classes
    for epoch, rank in ((0, 0), (1, 1)):
        args = (epoch, 3, 7, CPU)
        expected = list(in_memory.epoch_batches(*args, start_batch=1, rank=rank, world_size=2))
        got = list(streaming.epoch_batches(*args, start_batch=1, rank=rank, world_size=2))
        assert len(got) == len(expected) == 1
        for (a, la), (b, lb) in zip(got, expected):
            assert torch.equal(a, b) and torch.equal(la, lb)
    assert torch.equal(streaming.all_images(), in_memory.all_images())


# ---------------------------------------------------------------- the real shared data


@pytest.mark.skipif(not (SHARED_DATA / "FashionMNIST" / "raw").is_dir(), reason="no shared data")
def test_real_fashion_mnist_train_split():
    source = load_dataset("fashion-mnist", data_dir=str(SHARED_DATA))
    assert source.all_images().shape == (60000, 1, 28, 28)
    assert len(source.classes) == 10
    assert source.all_labels().bincount().tolist() == [6000] * 10


@pytest.mark.skipif(not (SHARED_DATA / "MNIST" / "raw").is_dir(), reason="no shared data")
def test_real_mnist_test_split_only():
    source = load_dataset("mnist", data_dir=str(SHARED_DATA), split="test")
    assert source.all_images().shape == (10000, 1, 28, 28) and source.classes[9] == "9"
    with pytest.raises(DataError, match="--split test"):
        load_dataset("mnist", data_dir=str(SHARED_DATA))
