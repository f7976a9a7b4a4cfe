"""Fuzzing the checkpoint reader and `genai info`: whatever the bytes, a result or a one-line GenaiError.

Cases come from random bytes and from three valid tiny genai files (a model file, a slim
float16 export and a training state) that are then damaged: bytes overwritten, truncated or
extended, the 8-byte header length replaced, the JSON header replaced by random JSON, or the
real header edited (dtypes, shapes, data offsets, metadata, the stored config). Each case goes
through read_header, load_file, load_model (CPU), load_training_state and the code path of
`genai info`, under a time limit, a limit on Python allocations and a limit on the growth of the
process's peak RSS (torch tensors are not seen by tracemalloc, so a refused header is what keeps
that flat); a share of the cases also goes through `genai info` and `genai info --json` in-process.
The runs are derandomized, so a failure is reproducible.
"""

from __future__ import annotations

import json
import resource
import signal
import struct
import tempfile
import time
import tracemalloc
from collections import Counter
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from genai_cli import checkpoint as ck
from genai_cli import export, info
from genai_cli.cli import app
from genai_cli.config import Config, DataConfig, ModelConfig, TrainConfig
from genai_cli.console import json_safe
from genai_cli.errors import GenaiError
from genai_cli.models import MODELS

CPU = torch.device("cpu")
DEADLINE_MS = 2000  # per case; hypothesis fails a case that is slower twice in a row
HANG_SECONDS = 20  # a case still running after this is stopped and fails (a hang, not noise)
MAX_PYTHON_BYTES = 32 * 2**20  # peak Python allocation per case; the files are a few KB
MAX_RSS_GROWTH_KB = 200 * 1024  # growth of the process's peak RSS over the whole module
CASES: Counter[str] = Counter()  # cases run, by strategy
RSS_BASELINE_KB = [0]  # peak RSS once the valid files are built and loaded (set by the `folder` fixture)


def fuzz(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples, derandomize=True, database=None, deadline=DEADLINE_MS, print_blob=False,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ---------------------------------------------------------------- the valid files that get damaged


def tiny_config() -> Config:
    return Config(
        model=ModelConfig(kind="dcgan", latent_dim=8, channels=1, image_size=16, width=2),
        data=DataConfig(name="fashion-mnist", data_dir="/somewhere", classes=[f"class-{i}" for i in range(10)]),
        train=TrainConfig(steps=1, batch_size=4, lr=2e-4, beta1=0.5, seed=3),
    )


@cache
def base_files() -> dict[str, bytes]:
    """name -> bytes of a valid model file, slim export and training state of one tiny dcgan."""
    config = tiny_config()
    torch.manual_seed(0)
    model = MODELS.get("dcgan").build(config.model)
    optimizer = torch.optim.Adam(model.generator.parameters(), lr=2e-4)
    model.generator(torch.randn(2, 8)).sum().backward()
    optimizer.step()
    with tempfile.TemporaryDirectory() as tmp:
        model_path, state_path = Path(tmp) / ck.MODEL_FILE, Path(tmp) / ck.STATE_FILE
        ck.save_model(model_path, model, config, step=1, epoch=0, device="cpu")
        ck.save_training_state(state_path, model, {"g": optimizer}, config, step=1, epoch=0, device="cpu")
        loaded = ck.load_file(model_path)
        files = {
            "model": model_path.read_bytes(),
            "slim": export.slim_files(model, loaded, "float16")[ck.MODEL_FILE],
            "state": state_path.read_bytes(),
        }
    for name, data in files.items():  # the starting points are themselves good files
        header_len, header, _ = split(data)
        assert header_len % 8 == 0 and "__metadata__" in header, name
    return files


def split(data: bytes) -> tuple[int, dict[str, Any], bytes]:
    """(header length, header, tensor bytes) of a valid safetensors file."""
    (header_len,) = struct.unpack("<Q", data[:8])
    return header_len, json.loads(data[8 : 8 + header_len]), data[8 + header_len :]


def frame(header: Any, data: bytes) -> bytes:
    """A safetensors file with this JSON header (NaN and Infinity allowed, as Python writes them)."""
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


# ---------------------------------------------------------------- strategies

BASES = st.sampled_from(["model", "slim", "state"])
INTERESTING_INTS = st.sampled_from([0, 1, -1, 2, 3, 7, 8, 16, 255, 4096, 65536, 10**6, 2**31 - 1, 2**31, 2**32,
                                    2**40, 2**53 + 1, 2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**30, -(2**63)])
INTS = st.one_of(INTERESTING_INTS, st.integers())
SCALARS = st.one_of(st.none(), st.booleans(), INTS, st.floats(), st.text(max_size=12))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
JSON_OBJECTS = st.dictionaries(st.text(max_size=8), JSON, max_size=5)
DTYPES = st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2",
                          "C64", "f32", "float32", ""])
KINDS = st.sampled_from(["gan", "dcgan", "cgan", "vae", "cvae", "nope", ""])
NORMS = st.sampled_from(["batch", "group", "none", "layer"])


@st.composite
def random_bytes(draw: st.DrawFn) -> bytes:
    return draw(st.binary(min_size=0, max_size=4096))


@st.composite
def overwritten(draw: st.DrawFn) -> bytes:
    """Bytes overwritten at random offsets, half of them inside the 8 + header bytes."""
    data = bytearray(base_files()[draw(BASES)])
    header_end = 8 + struct.unpack("<Q", data[:8])[0]
    offsets = st.one_of(st.integers(0, len(data) - 1), st.integers(0, header_end - 1))
    for offset, value in draw(st.lists(st.tuples(offsets, st.integers(0, 255)), min_size=1, max_size=8)):
        data[offset] = value
    return bytes(data)


@st.composite
def truncated_or_extended(draw: st.DrawFn) -> bytes:
    data = base_files()[draw(BASES)]
    header_end = 8 + struct.unpack("<Q", data[:8])[0]
    cut = draw(st.one_of(st.integers(0, len(data)), st.integers(max(0, header_end - 16), header_end + 16)))
    return data[:cut] + draw(st.one_of(st.just(b""), st.binary(max_size=64)))


@st.composite
def header_length_replaced(draw: st.DrawFn) -> bytes:
    data = base_files()[draw(BASES)]
    header_len = struct.unpack("<Q", data[:8])[0]
    near = st.integers(-16, 16).map(lambda d: header_len + d)
    value = draw(st.one_of(st.integers(0, 2**64 - 1), INTERESTING_INTS.filter(lambda v: 0 <= v < 2**64), near,
                           st.sampled_from([len(data) - 8, len(data) - 7, 2**40, 2**63])))
    return struct.pack("<Q", value) + data[8:]


@st.composite
def random_json_header(draw: st.DrawFn) -> bytes:
    """The JSON header replaced by random JSON: any value, an object, or an object with __metadata__."""
    _, _, tensors = split(base_files()[draw(BASES)])
    with_metadata = st.builds(lambda h, m: {**h, "__metadata__": m}, JSON_OBJECTS,
                              st.one_of(JSON, st.dictionaries(st.text(max_size=12), st.text(max_size=20), max_size=4)))
    header = draw(st.one_of(JSON, JSON_OBJECTS, with_metadata))
    return frame(header, draw(st.one_of(st.just(tensors), st.binary(max_size=256))))


def _edit_config(draw: st.DrawFn, metadata: dict[str, Any]) -> None:
    try:  # an earlier edit of this case may have replaced the config already
        config = json.loads(metadata.get("genai.config", ""))
    except (TypeError, ValueError):
        config = None
    if not isinstance(config, dict) or draw(st.integers(0, 9)) == 0:
        metadata["genai.config"] = draw(st.one_of(st.text(max_size=40), JSON.map(json.dumps)))
        return
    section = draw(st.sampled_from(["model", "data", "train", "schema", "extra"]))
    if section in ("schema", "extra") or not isinstance(config.get(section), dict):
        config[section] = draw(JSON)
    elif draw(st.integers(0, 7)) == 0:
        config[section] = draw(JSON)
    else:
        fields = config[section]
        name = draw(st.sampled_from(sorted(fields) + ["unknown"]))
        special = {"kind": KINDS, "norm": NORMS, "classes": st.lists(st.text(max_size=8), max_size=3)}.get(name, INTS)
        if draw(st.integers(0, 5)) == 0:
            fields.pop(name, None)
        else:
            fields[name] = draw(st.one_of(special, JSON))
    metadata["genai.config"] = json.dumps(config)


@st.composite
def header_edited(draw: st.DrawFn) -> bytes:
    """The real header with one to three edits: dtype, shape, offsets, entries, metadata, config."""
    _, header, tensors = split(base_files()[draw(BASES)])
    names = sorted(k for k in header if k != "__metadata__")
    for _ in range(draw(st.integers(1, 3))):
        metadata = header.get("__metadata__")
        metadata = metadata if isinstance(metadata, dict) else {}
        edit = draw(st.sampled_from(["dtype", "shape", "offsets", "overlap", "drop_field", "entry", "drop_tensor",
                                     "meta_text", "meta_json", "meta_drop", "metadata", "config", "config", "state"]))
        name = draw(st.sampled_from(names))
        entry = header.get(name)
        entry = entry if isinstance(entry, dict) else {}
        if edit == "dtype":
            entry["dtype"] = draw(st.one_of(DTYPES, JSON))
        elif edit == "shape":
            entry["shape"] = draw(st.one_of(st.lists(INTS, max_size=5), JSON))
        elif edit == "offsets":
            ends = st.one_of(INTS, st.sampled_from([len(tensors), len(tensors) + 1, len(tensors) - 1]), st.floats())
            entry["data_offsets"] = draw(st.one_of(st.lists(ends, min_size=2, max_size=2), st.lists(ends, max_size=3), JSON))
        elif edit == "overlap":  # another tensor's bytes, or a shifted window
            other = header.get(draw(st.sampled_from(names)))
            if isinstance(other, dict) and isinstance(other.get("data_offsets"), list):
                shift = draw(st.integers(-8, 8))
                entry["data_offsets"] = [v + shift if isinstance(v, int) else v for v in other["data_offsets"]]
        elif edit == "drop_field":
            entry.pop(draw(st.sampled_from(["dtype", "shape", "data_offsets"])), None)
        elif edit == "entry":
            header[draw(st.text(max_size=12))] = draw(st.one_of(JSON, st.fixed_dictionaries(
                {"dtype": DTYPES, "shape": st.lists(INTS, max_size=4), "data_offsets": st.lists(INTS, min_size=2, max_size=2)})))
        elif edit == "drop_tensor":
            header.pop(name, None)
        elif edit in ("meta_text", "meta_json", "meta_drop"):
            key = draw(st.sampled_from(sorted(metadata) + ["genai.contents", "genai.role"]))
            if edit == "meta_drop":
                metadata.pop(key, None)
            else:
                metadata[key] = draw(st.one_of(st.text(max_size=40), st.sampled_from(
                    [ck.ROLE_MODEL, ck.ROLE_STATE, ck.GENERATING_HALF, "", "-1", "1e9", "9" * 5000])) if edit == "meta_text" else JSON)
        elif edit == "metadata":
            header["__metadata__"] = draw(st.one_of(JSON, st.dictionaries(st.text(max_size=12), st.text(max_size=20))))
        elif edit == "config":
            _edit_config(draw, metadata)
        elif edit == "state":
            metadata["genai.state"] = draw(st.one_of(st.text(max_size=40), JSON.map(json.dumps)))
        if entry and isinstance(header.get(name), dict):
            header[name] = entry
        if metadata and isinstance(header.get("__metadata__"), dict):
            header["__metadata__"] = metadata
    return frame(header, tensors)


STRATEGIES: dict[str, st.SearchStrategy[bytes]] = {
    "random_bytes": random_bytes(),
    "overwritten": overwritten(),
    "truncated_or_extended": truncated_or_extended(),
    "header_length_replaced": header_length_replaced(),
    "random_json_header": random_json_header(),
    "header_edited": header_edited(),
}


# ---------------------------------------------------------------- the property


class Hang(BaseException):
    """Raised by SIGALRM; a BaseException so no `except Exception` in the code under test hides it."""


def _hang(signum: int, frame: Any) -> None:
    raise Hang(f"a case ran for more than {HANG_SECONDS} s")


@contextmanager
def bounded(trace: bool = False) -> Iterator[None]:
    """A time limit and a limit on the growth of the peak RSS; with `trace`, on peak Python allocation too
    (tracemalloc makes code several times slower, so only the readers that allocate in Python are traced)."""
    previous = signal.signal(signal.SIGALRM, _hang)
    signal.setitimer(signal.ITIMER_REAL, HANG_SECONDS)
    if trace:
        tracemalloc.start()
    try:
        yield
    finally:
        peak = tracemalloc.get_traced_memory()[1] if trace else 0
        if trace:
            tracemalloc.stop()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert peak < MAX_PYTHON_BYTES, f"peak Python allocation {peak / 2**20:.0f} MiB for one case"
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - RSS_BASELINE_KB[0]
    assert growth < MAX_RSS_GROWTH_KB, f"peak RSS grew by {growth / 1024:.0f} MiB"


def result_or_genai_error(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args), or None when it raised a GenaiError with a one-line message; anything else propagates."""
    try:
        return fn(*args)
    except GenaiError as err:
        message = str(err)
        assert message and not any(c in message for c in "\n\r"), repr(message)
        return None


def info_path(path: Path) -> None:
    """What `genai info` and `genai info --json` compute and print, minus the printing."""
    summary = result_or_genai_error(info.describe, str(path))
    if summary is not None:
        info.info_text(summary).encode("utf-8")  # stdout is strict UTF-8: no lone surrogates
        json.dumps(json_safe(summary), sort_keys=True, allow_nan=False)


def check_readers(data: bytes, folder: Path) -> None:
    for name in (ck.MODEL_FILE, ck.STATE_FILE):
        (folder / name).write_bytes(data)
    path = folder / ck.MODEL_FILE
    with bounded(trace=True):
        result_or_genai_error(ck.read_header, path)
        result_or_genai_error(ck.read_metadata, path)
        loaded = result_or_genai_error(ck.load_file, path)
        if loaded is not None:
            assert isinstance(loaded.step, int)  # `genai eval` and `genai export` read it
        result_or_genai_error(ck.load_training_state, folder)
        info_path(path)
    with bounded():  # builds a model: torch allocations, which only the RSS shows
        result_or_genai_error(ck.load_model, str(path), CPU)


RUNNER = CliRunner()


def check_cli(path: Path) -> None:
    for args in (["info", str(path)], ["info", "--json", str(path)]):
        with bounded():
            result = RUNNER.invoke(app, args, prog_name="genai")
        where = (args, result.exit_code, result.stderr, result.exception)
        assert result.exit_code in (0, 1), where
        assert result.exception is None or isinstance(result.exception, SystemExit), where
        assert "Traceback" not in result.stderr, where
        if result.exit_code == 0:
            assert result.stderr == "" and result.stdout.strip(), where
            if "--json" in args:
                assert "kind" in json.loads(result.stdout), where
        else:
            lines = result.stderr.splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), where
            assert "internal error" not in lines[0], where
            assert result.stdout == "", where


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where each case's file is written; times the module, checks the peak RSS, reports the count."""
    files = base_files()
    for name, data in files.items():  # the undamaged files load: the property is not vacuous
        work = tmp_path_factory.mktemp(f"base-{name}")
        (work / (ck.STATE_FILE if name == "state" else ck.MODEL_FILE)).write_bytes(data)
        if name == "state":
            assert ck.load_training_state(work).optimizers["g"]["state"]
        else:
            model, _ = ck.load_model(str(work), CPU, "dcgan")
            assert model.generator(torch.zeros(1, 8)).shape == (1, 1, 16, 16)
            assert info.describe(str(work))["kind"] == "dcgan"
    RSS_BASELINE_KB[0] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    yield tmp_path_factory.mktemp("fuzz")
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - RSS_BASELINE_KB[0]
    print(f"\nfuzzed {sum(CASES.values())} cases in {time.perf_counter() - started:.1f} s "
          f"({', '.join(f'{k} {v}' for k, v in CASES.items())}); peak RSS grew by {growth / 1024:.1f} MiB")
    assert growth < MAX_RSS_GROWTH_KB


# ---------------------------------------------------------------- the tests


@pytest.mark.parametrize(("strategy", "max_examples"), [
    ("random_bytes", 120),
    ("overwritten", 200),
    ("truncated_or_extended", 100),
    ("header_length_replaced", 80),
    ("random_json_header", 200),
    ("header_edited", 600),
])
def test_readers_return_or_raise_genai_error(folder: Path, strategy: str, max_examples: int):
    @fuzz(max_examples)
    @given(STRATEGIES[strategy])
    def case(data: bytes) -> None:
        CASES[strategy] += 1
        check_readers(data, folder)

    case()


@fuzz(150)
@given(st.one_of(*STRATEGIES.values()))
def test_genai_info_exits_0_or_1_with_one_line(folder: Path, data: bytes):
    CASES["cli"] += 1
    path = folder / ck.MODEL_FILE
    path.write_bytes(data)
    check_cli(path)


@cache
def hostile_headers() -> dict[str, bytes]:
    """Headers a byte-level fuzzer rarely builds, each aimed at one way a parser can fail."""
    _, header, tensors = split(base_files()["model"])
    meta = header["__metadata__"]
    name = sorted(k for k in header if k != "__metadata__")[0]

    def edited(entry: dict[str, Any] | None = None, **metadata: str) -> bytes:
        return frame({**header, **({name: {**header[name], **entry}} if entry else {}),
                      "__metadata__": {**meta, **metadata}}, tensors)

    def config(**model: Any) -> str:
        raw = json.loads(meta["genai.config"])
        raw["model"].update(model)
        return json.dumps(raw)

    def raw_header(text: bytes) -> bytes:
        return struct.pack("<Q", len(text)) + text + tensors

    return {
        "deeply nested header": raw_header(b"[" * 100_000 + b"]" * 100_000),
        "deeply nested value": raw_header(b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        "huge integer in header": raw_header(b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, ' + b"9" * 5000 + b"]}}"),
        "infinite data offset": edited({"data_offsets": [0, float("inf")]}),
        "nan data offset": edited({"data_offsets": [0, float("nan")]}),
        "infinite shape": edited({"shape": [float("inf")]}),
        "nan shape": edited({"shape": [float("nan"), 2]}),
        "deeply nested config": edited(**{"genai.config": "[" * 100_000 + "]" * 100_000}),
        "huge integer in config": edited(**{"genai.config": '{"model": {"width": ' + "9" * 5000 + "}}"}),
        "newline in config key": edited(**{"genai.config": '{"a\\nb": 1}'}),
        "newline in config schema": edited(**{"genai.config": '{"schema": "2\\nerror: fake"}'}),
        "newline in kind": edited(**{"genai.config": config(kind="dcgan\nsecond line"), "genai.kind": "x\ny"}),
        "newline in role": edited(**{"genai.role": "training-state\nsecond line"}),
        "huge step": edited(**{"genai.step": "9" * 5000, "genai.epoch": "1e9"}),
        "lone surrogate": frame({**header, "__metadata__": {**meta, "genai.device": "\ud800", "genai.version": "\udfff"}},
                                tensors),
        "huge width": edited(**{"genai.config": config(width=4096)}),
        "huge latent": edited(**{"genai.config": config(latent_dim=2**31)}),
        "huge mlp": edited(**{"genai.config": config(kind="gan", image_size=4096, width=64)}),
        "header claims 2**40 bytes": struct.pack("<Q", 2**40) + base_files()["model"][8:],
        "header claims 2**63 bytes": struct.pack("<Q", 2**63) + base_files()["model"][8:],
        "data claims 2**40 bytes": edited({"data_offsets": [0, 2**40], "shape": [2**38]}),
    }


HOSTILE = ("deeply nested header", "deeply nested value", "huge integer in header", "infinite data offset",
           "nan data offset", "infinite shape", "nan shape", "deeply nested config", "huge integer in config",
           "newline in config key", "newline in config schema", "newline in kind", "newline in role", "huge step",
           "lone surrogate", "huge width", "huge latent", "huge mlp", "header claims 2**40 bytes",
           "header claims 2**63 bytes", "data claims 2**40 bytes")  # built lazily: collection stays quick


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_headers(folder: Path, case: str):
    assert sorted(hostile_headers()) == sorted(HOSTILE)
    CASES["hostile"] += 1
    check_readers(hostile_headers()[case], folder)
    check_cli(folder / ck.MODEL_FILE)
