"""The on-disk contract: safetensors + genai metadata, strict reading, atomic writes, resumable state."""

from __future__ import annotations

import errno
import json
import os
import random
import stat
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save as save_tensors
from safetensors.torch import save_file

from genai_cli import __version__
from genai_cli import checkpoint as ck
from genai_cli.config import Config, DataConfig, ModelConfig, TrainConfig
from genai_cli.errors import CheckpointError, GenaiError
from genai_cli.fileio import atomic_write
from genai_cli.models import MODELS

CPU = torch.device("cpu")
CLASSES = [f"class-{i}" for i in range(10)]


def tiny_config(kind: str = "dcgan") -> Config:
    conditional = kind in ("cgan", "cvae")
    return Config(
        model=ModelConfig(kind=kind, latent_dim=8, channels=1, image_size=16, width=4,
                          num_classes=10 if conditional else 0),
        data=DataConfig(name="fashion-mnist", data_dir="/somewhere", classes=list(CLASSES)),
        train=TrainConfig(steps=3, batch_size=8, lr=2e-4, beta1=0.5, seed=3),
    )


def tiny_model(kind: str = "dcgan", seed: int = 0):
    """A model whose weights and BatchNorm buffers are all non-default, so a lost tensor shows."""
    config = tiny_config(kind)
    torch.manual_seed(seed)
    model = MODELS.get(kind).build(config.model)
    with torch.no_grad():
        for buf in model.buffers():
            if buf.is_floating_point():
                buf.copy_(torch.rand_like(buf) + 0.5)
            else:
                buf.fill_(7)
    return model.eval(), config


@pytest.fixture
def saved(tmp_path: Path):
    model, config = tiny_model()
    path = tmp_path / "model.safetensors"
    ck.save_model(path, model, config, step=7, epoch=2, device="cpu")
    return path, model, config


def assert_one_line_checkpoint_error(excinfo: pytest.ExceptionInfo, *fragments: str) -> str:
    message = str(excinfo.value)
    assert isinstance(excinfo.value, CheckpointError)
    assert message and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def header_of(path: Path) -> tuple[int, dict]:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return length, json.loads(data[8 : 8 + length])


def write_with_header(path: Path, header: dict, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


# ---------------------------------------------------------------- round trip


def test_save_load_round_trip_is_bitwise(saved):
    path, model, config = saved
    loaded = ck.load_file(path)
    expected = model.state_dict()
    assert set(loaded.tensors) == set(expected)
    for name, tensor in expected.items():
        assert loaded.tensors[name].dtype == tensor.dtype, name
        assert torch.equal(loaded.tensors[name], tensor), name
    assert loaded.config == config
    assert loaded.step == 7


def test_metadata_keys_read_by_plain_safetensors(saved):
    path, _, config = saved
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["format"] == "pt"
    assert meta["genai.kind"] == "dcgan"
    assert Config.from_json(meta["genai.config"]) == config
    assert meta["genai.version"] == __version__
    assert meta["genai.dataset"] == "fashion-mnist"
    assert json.loads(meta["genai.image_shape"]) == [1, 16, 16]
    assert json.loads(meta["genai.classes"]) == CLASSES
    assert meta["genai.step"] == "7"
    assert meta["genai.epoch"] == "2"
    assert meta["genai.device"] == "cpu"


@pytest.mark.parametrize("kind", ["dcgan", "cgan"])
def test_load_model_generates_the_same_images(tmp_path: Path, kind: str):
    model, config = tiny_model(kind, seed=1)
    path = tmp_path / "model.safetensors"
    ck.save_model(path, model, config, step=1, epoch=0, device="cpu")
    rebuilt, loaded = ck.load_model(str(path), CPU)
    assert not rebuilt.training
    assert loaded.config.model == config.model
    z = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(6) if model.conditional else None
    with torch.no_grad():
        assert torch.equal(rebuilt.generate(z, labels), model.generate(z, labels))


def test_load_model_accepts_a_run_directory(saved):
    path, _, _ = saved
    _, loaded = ck.load_model(str(path.parent), CPU)
    assert loaded.path == path


# ---------------------------------------------------------------- broken and foreign files


def test_empty_file(tmp_path: Path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError) as excinfo:
        ck.load_model(str(path), CPU)
    assert_one_line_checkpoint_error(excinfo, str(path))


@pytest.mark.parametrize("where", ["prefix", "prefix-end", "header", "header-end", "data", "last-byte"])
def test_truncated_file(saved, where: str):
    path, _, _ = saved
    data = path.read_bytes()
    header_len, _ = header_of(path)
    cut = {
        "prefix": 5,
        "prefix-end": 8,
        "header": 8 + header_len // 2,
        "header-end": 8 + header_len,
        "data": 8 + header_len + (len(data) - 8 - header_len) // 2,
        "last-byte": len(data) - 1,
    }[where]
    path.write_bytes(data[:cut])
    with pytest.raises(CheckpointError) as excinfo:
        ck.load_model(str(path), CPU)
    assert_one_line_checkpoint_error(excinfo, str(path))


@pytest.mark.parametrize("small_header", [False, True])
def test_random_bytes(tmp_path: Path, small_header: bool):
    junk = np.random.default_rng(5).bytes(4096)
    if small_header:  # a plausible length, so the JSON parser sees the junk
        junk = struct.pack("<Q", 512) + junk
    path = tmp_path / "junk.safetensors"
    path.write_bytes(junk)
    with pytest.raises(CheckpointError) as excinfo:
        ck.load_model(str(path), CPU)
    assert_one_line_checkpoint_error(excinfo, str(path))


def test_safetensors_without_genai_metadata(tmp_path: Path):
    path = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(3, 3)}, str(path))
    with pytest.raises(CheckpointError) as excinfo:
        ck.load_model(str(path), CPU)
    assert_one_line_checkpoint_error(excinfo, "not a genai checkpoint")


@pytest.mark.parametrize("claimed", [2**40, 2**63 + 5, 2**64 - 1])
def test_huge_header_length_is_refused_without_reading(tmp_path: Path, monkeypatch, claimed: int):
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", claimed) + b"{}" + b" " * 62)
    reads: list[int] = []
    real_open = Path.open

    def spy_open(self, *args, **kwargs):  # record every read size on the checkpoint file
        handle = real_open(self, *args, **kwargs)
        real_read = handle.read

        def read(n=-1):
            reads.append(n)
            return real_read(min(n, 1 << 20) if n and n > 0 else n)

        handle.read = read
        return handle

    monkeypatch.setattr(Path, "open", spy_open)
    with pytest.raises(CheckpointError) as excinfo:
        ck.read_header(path)
    assert_one_line_checkpoint_error(excinfo, "header")
    assert all(n <= 8 for n in reads), reads


def test_header_over_the_cap_is_refused_even_when_the_file_is_that_big(saved, monkeypatch):
    path, _, _ = saved
    header_len, _ = header_of(path)
    monkeypatch.setattr(ck, "MAX_HEADER_BYTES", header_len - 1)
    with pytest.raises(CheckpointError) as excinfo:
        ck.read_header(path)
    assert_one_line_checkpoint_error(excinfo, str(path))


def test_pickle_renamed_to_safetensors(tmp_path: Path):
    path = tmp_path / "model.safetensors"
    torch.save({"generator.weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError) as excinfo:
        ck.load_model(str(path), CPU)
    assert_one_line_checkpoint_error(excinfo, str(path))


def test_directory_passed_as_a_file(tmp_path: Path):
    with pytest.raises(CheckpointError) as excinfo:
        ck.load_file(tmp_path)
    assert_one_line_checkpoint_error(excinfo, "directory")
    with pytest.raises(CheckpointError) as excinfo:  # load_model treats it as a run dir without a model
        ck.load_model(str(tmp_path), CPU)
    assert_one_line_checkpoint_error(excinfo, ck.MODEL_FILE)


def test_missing_checkpoint(tmp_path: Path):
    with pytest.raises(CheckpointError) as excinfo:
        ck.load_model(str(tmp_path / "nope.safetensors"), CPU)
    assert_one_line_checkpoint_error(excinfo, "does not exist")


def test_expect_kind_mismatch(saved):
    path, _, _ = saved
    with pytest.raises(CheckpointError) as excinfo:
        ck.load_model(str(path), CPU, expect_kind="vae")
    assert_one_line_checkpoint_error(excinfo, "dcgan", "vae")
    model, _ = ck.load_model(str(path), CPU, expect_kind="dcgan")
    assert model.config.kind == "dcgan"


def test_training_state_file_is_not_a_model_file(tmp_path: Path):
    model, config = tiny_model()
    path = tmp_path / ck.STATE_FILE
    ck.save_training_state(path, model, {}, config, step=1, epoch=0, device="cpu")
    with pytest.raises(CheckpointError) as excinfo:
        ck.load_model(str(path), CPU)
    assert_one_line_checkpoint_error(excinfo, "training-state")


def _resave(saved, tmp_path: Path, tensors=None, **meta_changes) -> Path:
    _, model, config = saved
    meta = ck.model_metadata(config, ck.ROLE_MODEL, 7, 2, "cpu")
    meta.update(meta_changes)
    out = tmp_path / "edited.safetensors"
    out.write_bytes(save_tensors(tensors if tensors is not None else ck.weights_of(model), metadata=meta))
    return out


@pytest.mark.parametrize("bad_config", [
    "{not json",
    "[]",
    json.dumps({"model": {"kind": "dcgan", "colour": "red"}}),
    json.dumps({"model": {"kind": "dcgan", "width": "wide"}}),
    json.dumps({"schema": 99}),
])
def test_malformed_config_metadata(saved, tmp_path: Path, bad_config: str):
    path = _resave(saved, tmp_path, **{"genai.config": bad_config})
    with pytest.raises(CheckpointError) as excinfo:
        ck.load_model(str(path), CPU)
    assert_one_line_checkpoint_error(excinfo, "config")


@pytest.mark.parametrize("field,value", [("image_size", 0), ("image_size", 7), ("latent_dim", None), ("latent_dim", -3)])
def test_config_that_cannot_be_built(saved, tmp_path: Path, field: str, value):
    _, _, config = saved
    raw = json.loads(config.to_json())
    raw["model"][field] = value
    path = _resave(saved, tmp_path, **{"genai.config": json.dumps(raw)})
    with pytest.raises(CheckpointError) as excinfo:
        ck.load_model(str(path), CPU)
    assert_one_line_checkpoint_error(excinfo, str(path))


def test_unknown_model_kind(saved, tmp_path: Path):
    _, _, config = saved
    raw = json.loads(config.to_json())
    raw["model"]["kind"] = "diffusion"
    path = _resave(saved, tmp_path, **{"genai.config": json.dumps(raw)})
    with pytest.raises(CheckpointError) as excinfo:
        ck.load_model(str(path), CPU)
    assert_one_line_checkpoint_error(excinfo, "diffusion")


def assert_edited_header_rejected(saved, out: Path, edit) -> None:
    """Rewrite the saved file's header with `edit(header)`; loading it must be a one-line error."""
    path, _, _ = saved
    header_len, header = header_of(path)
    edit(header)
    write_with_header(out, header, path.read_bytes()[8 + header_len :])
    with pytest.raises(CheckpointError) as excinfo:
        ck.load_model(str(out), CPU)
    assert_one_line_checkpoint_error(excinfo, str(out))


@pytest.mark.parametrize("metadata", [5, "genai.config genai.kind", ["genai.config", "genai.kind"],
                                      {"genai.config": 5, "genai.kind": "dcgan"}])
def test_metadata_that_is_not_a_string_map(saved, tmp_path: Path, metadata):
    assert_edited_header_rejected(saved, tmp_path / "hostile.safetensors",
                                  lambda header: header.update({"__metadata__": metadata}))


def test_corrupt_tensor_index(saved, tmp_path: Path):
    def break_index(header: dict) -> None:
        name = next(k for k in header if k != "__metadata__")
        header[name] = {"dtype": "F32", "shape": [2], "data_offsets": "everything"}

    assert_edited_header_rejected(saved, tmp_path / "index.safetensors", break_index)


def test_tensors_with_wrong_shapes(saved, tmp_path: Path):
    _, model, _ = saved
    tensors = ck.weights_of(model)
    name = next(k for k, v in tensors.items() if v.dim() == 4)
    tensors[name] = torch.zeros(*tensors[name].shape[:-1], tensors[name].shape[-1] + 1)
    path = _resave(saved, tmp_path, tensors=tensors)
    with pytest.raises(CheckpointError) as excinfo:
        ck.load_model(str(path), CPU)
    assert_one_line_checkpoint_error(excinfo, name)


def test_weights_of_another_width(saved, tmp_path: Path):
    other = MODELS.get("dcgan").build(ModelConfig(kind="dcgan", latent_dim=8, channels=1, image_size=16, width=8))
    path = _resave(saved, tmp_path, tensors=ck.weights_of(other))
    with pytest.raises(CheckpointError) as excinfo:
        ck.load_model(str(path), CPU)
    assert_one_line_checkpoint_error(excinfo, "does not match")


def test_missing_and_unexpected_tensors(saved, tmp_path: Path):
    _, model, _ = saved
    tensors = ck.weights_of(model)
    dropped = min(tensors)
    del tensors[dropped]
    with pytest.raises(CheckpointError) as excinfo:
        ck.load_model(str(_resave(saved, tmp_path, tensors=tensors)), CPU)
    assert_one_line_checkpoint_error(excinfo, "missing", dropped)
    tensors = {**ck.weights_of(model), "extra.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError) as excinfo:
        ck.load_model(str(_resave(saved, tmp_path, tensors=tensors)), CPU)
    assert_one_line_checkpoint_error(excinfo, "unexpected", "extra.weight")


# ---------------------------------------------------------------- atomic_write


def test_atomic_write_replaces_the_file(tmp_path: Path):
    target = tmp_path / "out" / "file.bin"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(target.parent) == ["file.bin"]


def test_atomic_write_gives_the_permissions_open_would(tmp_path: Path):
    """mkstemp creates 0600 files; outputs must be as readable as any file the user creates."""
    reference = tmp_path / "reference"
    reference.write_bytes(b"")
    target = tmp_path / "config.json"
    atomic_write(target, b"{}")
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(reference.stat().st_mode)


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _assert_failed_write_kept_old(target: Path, excinfo: pytest.ExceptionInfo) -> None:
    assert target.read_bytes() == b"previous contents"
    assert os.listdir(target.parent) == [target.name], "a temporary file was left behind"
    message = str(excinfo.value)
    assert str(target) in message and "\n" not in message
    assert os.strerror(errno.ENOSPC) in message


def test_atomic_write_fsync_failure_keeps_the_previous_file(tmp_path: Path, monkeypatch):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"previous contents")
    monkeypatch.setattr(os, "fsync", _enospc)
    with pytest.raises(GenaiError) as excinfo:
        atomic_write(target, b"new contents that never land")
    _assert_failed_write_kept_old(target, excinfo)


def test_atomic_write_write_failure_keeps_the_previous_file(tmp_path: Path, monkeypatch):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"previous contents")
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, handle):
            self._handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._handle.close()

        def write(self, data):
            self._handle.write(data[: len(data) // 2])
            _enospc()

        def __getattr__(self, name):
            return getattr(self._handle, name)

    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: FullDisk(real_fdopen(fd, *a, **k)))
    with pytest.raises(GenaiError) as excinfo:
        atomic_write(target, b"new contents that never land")
    _assert_failed_write_kept_old(target, excinfo)


def test_save_model_on_a_full_disk_keeps_the_previous_checkpoint(saved, monkeypatch):
    path, model, config = saved
    before = path.read_bytes()
    monkeypatch.setattr(os, "fsync", _enospc)
    with pytest.raises(GenaiError) as excinfo:
        ck.save_model(path, model, config, step=8, epoch=2, device="cpu")
    assert str(path) in str(excinfo.value)
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == [path.name]


def test_atomic_write_interrupted_removes_the_temp_file(tmp_path: Path, monkeypatch):
    target = tmp_path / "file.bin"
    target.write_bytes(b"previous contents")

    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"previous contents"
    assert os.listdir(tmp_path) == ["file.bin"]


# ---------------------------------------------------------------- training state


def _optimizers(model) -> dict[str, torch.optim.Optimizer]:
    return {
        "generator": torch.optim.Adam(model.generator.parameters(), lr=1e-2, betas=(0.5, 0.999)),
        "discriminator": torch.optim.Adam(model.discriminator.parameters(), lr=3e-3, betas=(0.5, 0.999)),
    }


def _train_step(model, optimizers) -> None:
    """A deterministic step touching both halves (no RNG use, so it is repeatable)."""
    model.train()
    z = torch.linspace(-1, 1, 4 * 8).reshape(4, 8)
    fake = model.generator(z, None)
    loss = fake.square().mean() + model.discriminator(fake, None).mean()
    for opt in optimizers.values():
        opt.zero_grad()
    loss.backward()
    for opt in optimizers.values():
        opt.step()


def test_training_state_round_trip(tmp_path: Path):
    model, config = tiny_model()
    optimizers = _optimizers(model)
    _train_step(model, optimizers)
    _train_step(model, optimizers)

    torch.manual_seed(123)
    np.random.seed(456)
    random.seed(789)
    ck.save_training_state(tmp_path / ck.STATE_FILE, model, optimizers, config, step=2, epoch=0, device="cpu")
    expected_rng = (torch.rand(5), np.random.rand(3), random.random())
    _train_step(model, optimizers)  # where the original goes next
    expected_weights = {k: v.clone() for k, v in model.state_dict().items()}

    torch.manual_seed(0), np.random.seed(0), random.seed(0)  # scramble every RNG
    state = ck.load_training_state(tmp_path)
    assert state.checkpoint.step == 2
    assert state.checkpoint.config == config

    ck.restore_rng_state(state.rng)
    assert torch.equal(torch.rand(5), expected_rng[0])
    assert np.array_equal(np.random.rand(3), expected_rng[1])
    assert random.random() == expected_rng[2]

    restored, _ = tiny_model(seed=99)  # different initial weights
    ck.load_weights_into(restored, state.model_weights, tmp_path / ck.STATE_FILE)
    restored_opts = _optimizers(restored)
    for name, opt in restored_opts.items():
        opt.load_state_dict(state.optimizers[name])
        assert opt.state_dict()["param_groups"] == optimizers[name].state_dict()["param_groups"]
    _train_step(restored, restored_opts)
    for name, tensor in restored.state_dict().items():
        assert torch.equal(tensor, expected_weights[name]), name


def test_training_state_missing(tmp_path: Path):
    with pytest.raises(CheckpointError) as excinfo:
        ck.load_training_state(tmp_path)
    assert_one_line_checkpoint_error(excinfo, ck.STATE_FILE)


def test_training_state_with_edited_state_json(tmp_path: Path):
    model, config = tiny_model()
    path = tmp_path / ck.STATE_FILE
    ck.save_training_state(path, model, _optimizers(model), config, step=1, epoch=0, device="cpu")
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 (safe_open is not a dict)
    meta["genai.state"] = "{broken"
    path.write_bytes(save_tensors(tensors, metadata=meta))
    with pytest.raises(CheckpointError) as excinfo:
        ck.load_training_state(tmp_path)
    assert_one_line_checkpoint_error(excinfo, "training state")
