"""Feature extractors that metrics compare images with.

- `inception`: the standard FID network (Inception-v3, TensorFlow 2015-12-05 weights, 2048-d
  pool features, bilinear resize to 299x299, gray replicated to RGB), so FID is comparable
  with published numbers. Three files of it are in common use and all load here:
  the TorchScript `inception-2015-12-05.pt` of fid-helper (input in [-1, 1] at 299x299),
  NVIDIA's TorchScript of the same name (input in [0, 255] at any size), and pytorch-fid's
  state dict `pt_inception-2015-12-05-6726825d.pth` (loaded with weights_only=True).
  TorchScript is loaded only for this explicitly named metrics network.
- `classifier`: a small CNN genai trains once per dataset and caches as safetensors. It is
  the fast default on CPU and the judge of conditional samples (its logits give class
  probabilities; its 128-d penultimate layer gives features).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from safetensors import safe_open
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from genai_cli import console, metrics
from genai_cli import images as imgs
from genai_cli.console import printable
from genai_cli.errors import GenaiError, UsageError
from genai_cli.fileio import atomic_write, file_sha256, require_regular_file

PYTORCH_FID_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
INCEPTION_FILES = ("inception-2015-12-05.pt", "pt_inception-2015-12-05-6726825d.pth")
FEATURE_BATCH = 100
INCEPTION_DIM, CLASSIFIER_DIM = 2048, 128  # feature sizes: what eval's memory estimate counts


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "genai"


@dataclass
class Extractor:
    """Images (uint8 N×C×H×W) -> features, and class logits where the network has a head."""

    name: str
    weights: str  # path of the weights file
    weights_sha256: str  # the network's identity: of the weights file, or for genai's classifier of its tensors
    protocol: str  # how images are prepared, printed with every result
    _features: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]
    device: torch.device

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch: int = FEATURE_BATCH,
                 progress: str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(float64 features N×D, float64 logits N×K or None), computed in batches."""
        feats, logits = [], []
        for start in range(0, len(images), batch):
            f, lg = self._features(images[start : start + batch].to(self.device))
            feats.append(f.double().cpu())
            if lg is not None:
                logits.append(lg.double().cpu())
            if progress and (start // batch) % 20 == 19:
                console.info(f"{progress}: {start + batch}/{len(images)} images")
        return torch.cat(feats), (torch.cat(logits) if logits else None)


# ---------------------------------------------------------------- Inception


def find_inception_weights(path: str | None) -> Path:
    """--inception-weights, $GENAI_INCEPTION_WEIGHTS, the usual caches, else a download."""
    if path or os.environ.get("GENAI_INCEPTION_WEIGHTS"):
        chosen = Path(path or os.environ["GENAI_INCEPTION_WEIGHTS"])
        if not chosen.exists():
            raise UsageError(f"Inception weights {chosen} not found; pass an existing --inception-weights file")
        require_regular_file(chosen, "pass the Inception weights file itself as --inception-weights", UsageError)
        return chosen
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    for folder in (cache_dir(), hub):
        for name in INCEPTION_FILES:
            if (folder / name).is_file():
                return folder / name
    target = cache_dir() / INCEPTION_FILES[1]
    if os.environ.get("GENAI_OFFLINE", "") not in ("", "0"):
        raise GenaiError(_missing_inception(target))
    try:
        console.info(f"downloading the FID Inception weights to {target}")
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(PYTORCH_FID_URL, str(target), progress=False)
    except Exception as err:
        raise GenaiError(_missing_inception(target) + f" (download failed: {err})") from err
    return target


def _missing_inception(target: Path) -> str:
    return (f"the FID Inception weights are not here and cannot be downloaded; put inception-2015-12-05.pt or "
            f"{INCEPTION_FILES[1]} in {target.parent}, or pass --inception-weights PATH "
            "(or $GENAI_INCEPTION_WEIGHTS); or use --features classifier")


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives carry their code; torch.save'd state dicts do not."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except zipfile.BadZipFile:
        return False


def _to_rgb(images: torch.Tensor) -> torch.Tensor:
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def _resize_299(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float pixel values in [0, 255] at 299x299, bilinear like TensorFlow's graph."""
    return F.interpolate(_to_rgb(images).float(), size=(299, 299), mode="bilinear", align_corners=False)


def load_failure(err: Exception) -> str:
    """Why a weights file did not load, in a few words (torch's own text spans lines and suggests
    weights_only=False, which would run code from the file: genai never does)."""
    if type(err).__name__ == "UnpicklingError":  # raised by torch.load(weights_only=True)
        return "it holds pickled objects beyond plain tensors, which genai does not load"
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {printable(first[:160])}" if first else type(err).__name__


def load_inception(path: str | None, device: torch.device) -> Extractor:
    weights = find_inception_weights(path)
    sha = file_sha256(weights)
    try:
        if _is_torchscript(weights):
            with warnings.catch_warnings():  # deprecated in general; used here only for this named network
                warnings.simplefilter("ignore", FutureWarning)
                net = torch.jit.load(str(weights), map_location=device).eval()
            takes_flags = len(net.forward.schema.arguments) > 2  # NVIDIA's: forward(img, return_features, ...)
            if takes_flags:
                fn = lambda x: (net(_to_rgb(x).float(), return_features=True), None)  # noqa: E731
                protocol = "NVIDIA TorchScript: [0, 255] input, resized inside the network"
            else:
                fn = lambda x: (net(_resize_299(x) / 128 - 1), None)  # noqa: E731
                protocol = "bilinear resize to 299, x/128 - 1, gray -> RGB"
            return Extractor("inception", str(weights), sha, protocol, fn, device)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        net = fid_inception_v3()
        net.load_state_dict(state)
    except GenaiError:
        raise
    except Exception as err:
        raise GenaiError(f"cannot load Inception weights {weights} ({load_failure(err)}); "
                         "use inception-2015-12-05.pt or pt_inception-2015-12-05-6726825d.pth") from err
    net = net.to(device).eval()

    def pool_and_logits(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pool = _inception_pool(net, _resize_299(x) / 127.5 - 1)
        return pool, net.fc(pool)

    return Extractor("inception", str(weights), sha, "bilinear resize to 299, x/127.5 - 1 (pytorch-fid), gray -> RGB",
                     pool_and_logits, device)


def _tf_pooling(block: type, pool: Callable[[torch.Tensor], torch.Tensor]) -> type:
    """An Inception block whose pooling branch pools like the TensorFlow graph the weights came from."""

    class Patched(block):  # type: ignore[misc, valid-type]
        def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            outputs = super()._forward(x)
            outputs[-1] = self.branch_pool(pool(x))
            return outputs

    return Patched


def fid_inception_v3() -> torchvision.models.Inception3:
    """torchvision's Inception-v3 with pytorch-fid's patches: 1008 classes, TF-style pooling."""
    from torchvision.models import inception as tv

    avg = lambda x: F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)  # noqa: E731
    peak = lambda x: F.max_pool2d(x, 3, stride=1, padding=1)  # noqa: E731
    net = tv.Inception3(num_classes=1008, aux_logits=False, init_weights=False)
    block_a, block_c, block_e = _tf_pooling(tv.InceptionA, avg), _tf_pooling(tv.InceptionC, avg), _tf_pooling(tv.InceptionE, avg)
    net.Mixed_5b, net.Mixed_5c, net.Mixed_5d = block_a(192, 32), block_a(256, 64), block_a(288, 64)
    net.Mixed_6b, net.Mixed_6c = block_c(768, 128), block_c(768, 160)
    net.Mixed_6d, net.Mixed_6e = block_c(768, 160), block_c(768, 192)
    net.Mixed_7b, net.Mixed_7c = block_e(1280), _tf_pooling(tv.InceptionE, peak)(2048)
    return net


def _inception_pool(net: torchvision.models.Inception3, x: torch.Tensor) -> torch.Tensor:
    """The 2048-d average-pool features (everything before dropout and fc)."""
    for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                 "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                 "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool"):
        x = getattr(net, name)(x)
    return x.flatten(1)


# ---------------------------------------------------------------- genai's classifier


class SmallCNN(nn.Module):
    """Two conv stages and a 128-d feature layer: 90% on Fashion-MNIST test after 3 epochs."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()

        def stage(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True),
                    nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True),
                    nn.MaxPool2d(2)]

        self.body = nn.Sequential(*stage(channels, 32), *stage(32, 64), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                                  nn.Linear(64 * 16, CLASSIFIER_DIM), nn.ReLU(True))
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(CLASSIFIER_DIM, num_classes))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return features, self.head(features)


CLASSIFIER_EPOCHS = 3
# CPU kernels split their sums by thread, so the judge trained in one thread is another network than
# the one trained in two (tensors' sha256 c4483915... against 225d48d0... on Fashion-MNIST, a few percent
# apart in FID). Training always on the CPU in two makes it one network on every machine with the same
# torch and instruction set, and the one benchmarks/RESULTS.md's classifier rows were scored with.
CLASSIFIER_THREADS = 2


def tensors_sha256(*tensors: torch.Tensor) -> str:
    """sha256 of the tensors' bytes, in order."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def fingerprint(*tensors: torch.Tensor) -> str:
    """Caches follow the data, not just its name."""
    return tensors_sha256(*tensors)[:12]


def classifier_path(dataset: str, channels: int, size: int, data_fingerprint: str) -> Path:
    """Named for the recipe too: a judge cached before training was pinned to the CPU's threads is not reused."""
    name = f"{Path(dataset).name}-{channels}x{size}-{data_fingerprint}-cpu{CLASSIFIER_THREADS}threads"
    return cache_dir() / "classifiers" / f"{name}.safetensors"


@contextmanager
def cpu_threads(count: int) -> Iterator[None]:
    """torch's CPU thread count set to `count` inside the block, the caller's again after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, device: torch.device,
                     epochs: int = CLASSIFIER_EPOCHS, seed: int = 0) -> SmallCNN:
    """Adam, batch 128, a fixed seed."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = SmallCNN(images.shape[1], num_classes).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    batch = min(128, len(images))
    net.train()
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images) - batch + 1, batch):
            index = order[start : start + batch]
            x = imgs.from_uint8(images[index].to(device))
            _, logits = net(x)
            loss = F.cross_entropy(logits, labels[index].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        console.info(f"classifier epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}")
    return net.eval()


def train_judge(images: torch.Tensor, labels: torch.Tensor, num_classes: int, epochs: int = CLASSIFIER_EPOCHS) -> SmallCNN:
    """The classifier genai judges samples with: on the CPU in CLASSIFIER_THREADS whatever the device and the
    caller's thread count, since other kernels or another split of the sums would train another judge."""
    with cpu_threads(CLASSIFIER_THREADS):
        return train_classifier(images, labels, num_classes, torch.device("cpu"), epochs)


@torch.no_grad()
def predict(net: SmallCNN, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 images -> the class each is judged to be, on the CPU."""
    return torch.cat([net(imgs.from_uint8(images[s : s + 500].to(device)))[1].argmax(1).cpu()
                      for s in range(0, len(images), 500)])


def per_class_accuracy(net: SmallCNN, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                       device: torch.device) -> list[float]:
    preds = predict(net, images, device)
    return [float((preds[labels == k] == k).float().mean()) if (labels == k).any() else float("nan")
            for k in range(num_classes)]


def load_classifier(dataset: str, device: torch.device, num_classes: int,
                    splits: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]) -> tuple[Extractor, dict]:
    """The cached classifier for these (train images, train labels, test images, test labels),
    trained on first use; its test accuracy per class is stored with it."""
    train_x, train_y, test_x, test_y = splits
    channels, size = train_x.shape[1], train_x.shape[2]
    path = classifier_path(dataset, channels, size, fingerprint(train_x, train_y))
    cached = read_classifier(path, channels, num_classes) if path.is_file() else None
    if cached is not None:
        net, info = cached
    else:
        console.info(f"training the {dataset} classifier once ({CLASSIFIER_EPOCHS} epochs); cached at {path}")
        net = train_judge(train_x, train_y, num_classes)
        accuracy = per_class_accuracy(net, test_x, test_y, num_classes, torch.device("cpu"))
        info = {"dataset": dataset, "test_accuracy": float((sum(accuracy) / num_classes)),
                "per_class_accuracy": accuracy, "epochs": CLASSIFIER_EPOCHS, "train_images": len(train_x)}
        weights = {k: v.contiguous() for k, v in net.state_dict().items()}
        atomic_write(path, save_tensors(weights, metadata={"format": "pt", "genai.classifier": json.dumps(info)}))
        console.info(f"classifier test accuracy {info['test_accuracy']:.4f}")
    net = net.to(device).eval()
    # Of the tensors, not the file: safetensors writes metadata keys in an order that varies by process,
    # so one network saved twice gets two file hashes.
    state = net.state_dict()
    extractor = Extractor("classifier", str(path), tensors_sha256(*(state[name] for name in sorted(state))),
                          "genai SmallCNN penultimate layer at the dataset's own size, x/127.5 - 1",
                          lambda x: net(imgs.from_uint8(x)), device)
    return extractor, info


def read_classifier(path: Path, channels: int, num_classes: int) -> tuple[SmallCNN, dict] | None:
    """A cached classifier and its stored accuracy; a damaged entry (truncated, no metadata, other
    shapes) is None with one warning, and is retrained and rewritten, never trusted."""
    net = SmallCNN(channels, num_classes)
    try:
        net.load_state_dict(load_tensors(path.read_bytes()))
        with safe_open(str(path), "pt") as handle:
            info = json.loads((handle.metadata() or {})["genai.classifier"])
        if not isinstance(info, dict) or len(info["per_class_accuracy"]) != num_classes:
            raise ValueError("its metadata does not describe this classifier")
        float(info["test_accuracy"])
    except Exception as err:  # safetensors, torch and json raise their own types for damaged files
        console.warn(f"ignoring damaged classifier cache {path} ({load_failure(err)}); training it again")
        return None
    return net, info


# ---------------------------------------------------------------- cache


def features_key(dataset: str, split: str, images: torch.Tensor, extractor: Extractor) -> str:
    """Cached features are valid only for the same pixels and the same network weights."""
    n, channels, size = len(images), images.shape[1], images.shape[2]
    return (f"{Path(dataset).name}-{split}-n{n}-{channels}x{size}-{fingerprint(images)}"
            f"-{extractor.name}-{extractor.weights_sha256[:12]}")


def cached_features(key: str, images: torch.Tensor, extractor: Extractor,
                    progress: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Real-data features, computed once and kept in ~/.cache/genai/features (safetensors)."""
    path = cache_dir() / "features" / f"{key}.safetensors"
    if path.is_file():
        try:
            tensors = load_tensors(path.read_bytes())
            return tensors["features"], tensors.get("logits")
        except Exception:  # a damaged cache entry is recomputed, never trusted
            console.warn(f"ignoring unreadable feature cache {path}")
    feats, logits = extractor(images, progress=progress)
    tensors = {"features": feats.contiguous()} | ({"logits": logits.contiguous()} if logits is not None else {})
    atomic_write(path, save_tensors(tensors, metadata={"format": "pt", "genai.features": key}))
    return feats, logits


STATS_FIX = "pass an .npz with 'mu' (D) and 'sigma' (D x D), as pytorch-fid writes, computed with the same network"


def read_reference_stats(path: str, dim: int) -> metrics.Statistics:
    """--ref-stats: a reference's feature mean and covariance from an .npz (never unpickled), checked
    against the extractor's feature size."""
    require_regular_file(Path(path), STATS_FIX, UsageError)
    try:
        with np.load(path, allow_pickle=False) as npz:
            mu, sigma = np.asarray(npz["mu"], dtype=np.float64), np.asarray(npz["sigma"], dtype=np.float64)
            n = int(npz["n"]) if "n" in npz.files else 0
    except FileNotFoundError:
        raise UsageError(f"--ref-stats {path} does not exist; {STATS_FIX}") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UsageError(f"--ref-stats {path} is not a statistics file ({printable(err)}); {STATS_FIX}") from None
    if mu.shape != (dim,) or sigma.shape != (dim, dim):
        raise UsageError(f"--ref-stats {path} holds statistics of shape {mu.shape} / {sigma.shape} but the extractor has "
                         f"{dim} features; {STATS_FIX}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise UsageError(f"--ref-stats {path} holds NaN or infinite values; {STATS_FIX}")
    return metrics.Statistics(mu, sigma, n)
