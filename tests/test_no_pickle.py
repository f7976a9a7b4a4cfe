"""Loading never runs code from a user's file.

An audit of genai_cli/'s source with `ast` (aliases resolved, so `from torch import load` or
`import numpy as np` cannot slip past): no pickle-family imports, every `torch.load` with
`weights_only=True`, no `numpy.load(allow_pickle=True)`, TorchScript loading only in
features.py (the explicitly named FID Inception network), no eval/exec. The scanner is
checked against snippets that break each rule, so a clean result is not a blind one.

Then behaviour: a pickle whose unpickling creates a marker file, saved as model.safetensors,
training_state.safetensors or FID Inception weights, is refused by every loader and command
with exit 1, and the marker never appears.
"""

from __future__ import annotations

import ast
import pathlib
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import genai_cli
from genai_cli import checkpoint as ck
from genai_cli import features, info
from genai_cli.cli import app
from genai_cli.errors import CheckpointError, GenaiError

PACKAGE = Path(genai_cli.__file__).resolve().parent
CPU = torch.device("cpu")

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "cloudpickle", "shelve"}
NEEDS_WEIGHTS_ONLY = {"torch.load", "torch.serialization.load", "torch.hub.load_state_dict_from_url"}
ONLY_IN = {  # loaders that run code or unpickle, each allowed in one file for a stated reason
    "torch.jit.load": "features.py",  # the explicitly named FID Inception network (TorchScript)
    "torch.export.load": "export.py",  # `genai export --check` reading back the .pt2 it has just written
}
NEVER = {"eval", "exec", "builtins.eval", "builtins.exec", "torch.hub.load", "pandas.read_pickle"}
WATCHED = NEEDS_WEIGHTS_ONLY | set(ONLY_IN) | NEVER | {"numpy.load"}


# ---------------------------------------------------------------- the audit


def aliases_of(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted name, from every import in the module (also those inside functions)."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    head = alias.name.split(".")[0]
                    names[head] = head
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([aliases.get(node.id, node.id), *reversed(parts)])


def keyword_is(call: ast.Call, name: str, value: object) -> bool | None:
    """True/False when `name=` is given as a literal equal/unequal to `value`; None when absent."""
    for kw in call.keywords:
        if kw.arg == name:
            return isinstance(kw.value, ast.Constant) and kw.value.value is value
    return None


def audit(source: str, filename: str) -> tuple[list[str], set[str]]:
    """(violations as 'file:line: what', the watched calls seen) for one module's source."""
    tree = ast.parse(source, filename)
    aliases = aliases_of(tree)
    problems: list[str] = []
    seen: set[str] = set()
    call_funcs: set[int] = set()

    def bad(node: ast.AST, what: str) -> None:
        problems.append(f"{filename}:{getattr(node, 'lineno', '?')}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PICKLE_MODULES:
                    bad(node, f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PICKLE_MODULES:
            bad(node, f"from {node.module} import ...")
        elif isinstance(node, ast.Call):
            call_funcs.add(id(node.func))
            name = dotted(node.func, aliases)
            if name in ("importlib.import_module", "__import__") and node.args:
                target = node.args[0]
                if not isinstance(target, ast.Constant) or str(target.value).split(".")[0] in PICKLE_MODULES:
                    bad(node, f"{name}({ast.unparse(target)})")
            if name not in WATCHED:
                continue
            seen.add(name)
            splat = any(kw.arg is None for kw in node.keywords)  # **kwargs: the flags cannot be checked
            if name in NEEDS_WEIGHTS_ONLY and (splat or not keyword_is(node, "weights_only", True)):
                bad(node, f"{name} without weights_only=True")
            elif name == "numpy.load" and (splat or keyword_is(node, "allow_pickle", False) is False):
                bad(node, "numpy.load with allow_pickle other than False")
            elif name in ONLY_IN and Path(filename).name != ONLY_IN[name]:
                bad(node, f"{name} outside {ONLY_IN[name]}")
            elif name in NEVER:
                bad(node, f"{name}(...)")
    for node in ast.walk(tree):  # `load = torch.load` and friends: a call through it cannot be checked
        if isinstance(node, (ast.Attribute, ast.Name)) and id(node) not in call_funcs:
            name = dotted(node, aliases)
            if name in WATCHED and not (name in ONLY_IN and Path(filename).name == ONLY_IN[name]):
                bad(node, f"{name} used other than as a direct call")
    return problems, seen


def package_sources() -> list[Path]:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 10 and PACKAGE / "checkpoint.py" in files
    return files


def test_package_source_passes_the_audit():
    problems: list[str] = []
    seen: set[str] = set()
    for path in package_sources():
        found, calls = audit(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE.parent)))
        problems += found
        seen |= calls
    assert problems == [], "\n".join(problems)
    # the scanner resolved the loaders the package does use: the clean result is not a blind one
    assert {"torch.load", "torch.jit.load"} <= seen, seen


@pytest.mark.parametrize("source", [
    "import pickle",
    "import pickle as p",
    "from pickle import loads",
    "import cPickle",
    "import _pickle",
    "import dill",
    "import joblib",
    "from joblib import load",
    "import importlib\nimportlib.import_module('pickle')",
    "__import__('dill')",
    "import torch\ntorch.load('x')",
    "import torch\ntorch.load('x', weights_only=False)",
    "import torch\nflag = True\ntorch.load('x', weights_only=flag)",
    "import torch\ntorch.load('x', **options)",
    "import torch as t\nt.load('x')",
    "from torch import load\nload('x')",
    "from torch import load as read\nread('x')",
    "import torch\nloader = torch.load",
    "import torch.serialization\ntorch.serialization.load('x')",
    "import numpy as np\nnp.load('x', allow_pickle=True)",
    "from numpy import load\nload('x', allow_pickle=True)",
    "import torch\ntorch.jit.load('x')",
    "from torch import jit\njit.load('x')",
    "from torch.jit import load\nload('x')",
    "eval('1 + 1')",
    "exec('x = 1')",
    "import builtins\nbuiltins.exec('x = 1')",
    "import torch\ntorch.hub.load('repo', 'model')",
])
def test_audit_catches(source: str):
    problems, _ = audit(source, "genai_cli/sampling.py")
    assert problems, source


@pytest.mark.parametrize(("source", "filename"), [
    ("import torch\ntorch.load('x', weights_only=True, map_location='cpu')", "genai_cli/features.py"),
    ("import numpy as np\nnp.load('x')\nnp.load('x', allow_pickle=False)", "genai_cli/data.py"),
    ("import torch\ntorch.jit.load('x', map_location='cpu')", "genai_cli/features.py"),
    ("model.eval()\nnet = net.eval()", "genai_cli/sampling.py"),
    ("from safetensors.torch import load\nload(b'')", "genai_cli/checkpoint.py"),
    ("import json\njson.loads('{}')", "genai_cli/config.py"),
])
def test_audit_passes(source: str, filename: str):
    assert audit(source, filename)[0] == []


# ---------------------------------------------------------------- behaviour


class Plant:
    """Unpickling this creates `marker`: the stand-in for code a hostile file would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "code-ran"


def payloads(marker: Path, folder: Path) -> dict[str, bytes]:
    """Hostile files: a plain pickle, torch.save's zip of one, and that zip dressed as TorchScript."""
    raw = pickle.dumps(Plant(marker), protocol=2)
    torch.save(Plant(marker), folder / "saved.pt")
    archive = (folder / "saved.pt").read_bytes()
    scripted = folder / "scripted.pt"
    with zipfile.ZipFile(folder / "saved.pt") as src, zipfile.ZipFile(scripted, "w") as dst:
        root = src.namelist()[0].split("/")[0]
        for name in src.namelist():
            dst.writestr(name, src.read(name))
        dst.writestr(f"{root}/constants.pkl", src.read(f"{root}/data.pkl"))
        dst.writestr(f"{root}/code/__torch__/model.py", "")
    assert not marker.exists()
    return {"pickle": raw, "torch.save": archive, "torchscript-like": scripted.read_bytes()}


def test_the_payload_is_live(marker: Path, tmp_path: Path):
    """The same bytes do run code when unpickled: the checks below would catch a loader that unpickles."""
    pickle.loads(payloads(marker, tmp_path)["pickle"])
    assert marker.exists()
    marker.unlink()
    torch.load(tmp_path / "saved.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_checkpoint_loaders_refuse_a_pickle(marker: Path, tmp_path: Path, kind: str):
    run = tmp_path / "run"
    run.mkdir()
    data = payloads(marker, tmp_path)[kind]
    (run / ck.MODEL_FILE).write_bytes(data)
    (run / ck.STATE_FILE).write_bytes(data)
    for load in (lambda: ck.load_model(str(run), CPU), lambda: ck.load_model(str(run / ck.MODEL_FILE), CPU),
                 lambda: ck.load_file(run / ck.MODEL_FILE), lambda: ck.load_training_state(run),
                 lambda: info.describe(str(run))):
        with pytest.raises(CheckpointError) as excinfo:
            load()
        assert "\n" not in str(excinfo.value)
    assert not marker.exists()


def one_line_error(result) -> str:
    assert result.exit_code == 1, (result.exit_code, result.stderr, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    return lines[0]


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_commands_refuse_a_pickle(marker: Path, tmp_path: Path, kind: str):
    run = tmp_path / "run"
    run.mkdir()
    (run / ck.MODEL_FILE).write_bytes(payloads(marker, tmp_path)[kind])
    runner = CliRunner()
    for target in (run, run / ck.MODEL_FILE):
        one_line_error(runner.invoke(app, ["info", str(target)]))
        one_line_error(runner.invoke(app, ["info", "--json", str(target)]))
        one_line_error(runner.invoke(app, ["sample", "--checkpoint", str(target), "--out", str(tmp_path / "x.png"),
                                           "--device", "cpu"]))
    assert not marker.exists() and not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(("kind", "suffix"), [("pickle", ".pth"), ("torch.save", ".pth"), ("torchscript-like", ".pt")])
def test_inception_loader_refuses_a_pickle(marker: Path, tmp_path: Path, kind: str, suffix: str):
    weights = tmp_path / f"pt_inception-2015-12-05-6726825d{suffix}"
    weights.write_bytes(payloads(marker, tmp_path)[kind])
    with pytest.raises(GenaiError, match="cannot load Inception weights"):
        features.load_inception(str(weights), CPU)
    assert not marker.exists()

def test_inception_refusal_is_one_line(marker: Path, tmp_path: Path):
    weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    weights.write_bytes(payloads(marker, tmp_path)["torch.save"])
    with pytest.raises(GenaiError) as excinfo:
        features.load_inception(str(weights), CPU)
    message = str(excinfo.value)
    assert "\n" not in message and "\x1b" not in message and "weights_only` set to `False`" not in message, message
