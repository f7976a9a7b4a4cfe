"""Where a family's training plugs in: the `Objective` protocol, and the pieces objectives share.

The training loop, checkpoints and run directory ask an objective, never a model's type or a
loss's name: what one step does, which optimisers, moving average and companion modules it keeps (saved and
restored by name), which model users sample, what the run's sample grids show, which losses are
plotted, which loss signals that training has stopped learning, and which pictures it adds to the run. A step takes a batch of
real images in [-1, 1] (and labels) and returns its losses as detached device tensors; the loop
averages them and reads them back only at log time, so no step waits for the device.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np
import torch

from genai_cli import images as imgs
from genai_cli import sampling
from genai_cli.models import GenerativeModel

if TYPE_CHECKING:
    from genai_cli.config import TrainConfig
    from genai_cli.data import ImageSource
    from genai_cli.distributed import World

Losses = dict[str, torch.Tensor]
SampleGrid = Callable[[GenerativeModel, torch.device], np.ndarray]  # the model of this step -> the run's grid (H×W×C uint8)
SAMPLE_GRID_SIZE = 64  # images in an unconditional model's grid (8x8)


@dataclass(frozen=True)
class Health:
    """A loss that, staying below `floor` for `steps` steps, means training has stopped learning."""

    loss: str
    floor: float
    steps: int
    problem: str  # what has happened, e.g. "discriminator collapse"
    advice: str  # why it matters and what to do


class Objective(Protocol):
    """One family's training: what `training.py` calls, and all it knows about the family."""

    optimizers: dict[str, torch.optim.Optimizer]  # saved and restored under these names
    base_lrs: dict[str, float]  # per optimiser; the loop scales them by the schedule before every step
    ema: EMA | None  # the moving average users sample, checkpointed with the run
    companions: dict[str, torch.nn.Module]  # modules only training uses (a cvae's classifier), checkpointed by name
    loss_keys: tuple[str, ...]  # the losses loss.svg and the report plot, in this order
    health: Health | None  # the loss that says training has stopped learning, if there is one
    step_index: int  # the run's step, set by the loop before each update (for a step that varies with it)

    def step(self, real: torch.Tensor, labels: torch.Tensor | None) -> Losses: ...

    def sampling_model(self, source: ImageSource) -> GenerativeModel:
        """The model users get in model.safetensors (and so in sample, eval and export); `source` for
        what it is fed when sampling (a translating model's inputs)."""
        ...

    def finish(self, source: ImageSource, deadline: float | None) -> None:
        """Work once training ends, before the last checkpoint (the VAE fits its prior), to be done by
        `deadline` (time.monotonic()) where it can stop early."""
        ...

    def plan_finish(self, source: ImageSource, images_per_second: float, budget: float) -> float:
        """Fit `finish` into a --max-time budget of `budget` seconds, at training's speed; the seconds
        the plan keeps for it."""
        ...

    def sample_grid(self, source: ImageSource) -> SampleGrid:
        """What samples/step_*.png shows, from the same inputs at every step of a run."""
        ...

    def extra_pictures(self, source: ImageSource, seed: int) -> dict[str, bytes]:
        """PNG files (name -> bytes) written to the run directory beside the sample grid."""
        ...


@dataclass(frozen=True)
class ObjectiveSpec:
    """A registered objective: which model shape it trains, the --gan-loss value that picks it among
    that shape's objectives (None: the shape's only one), and defaults that beat the family's."""

    name: str
    trains: type[GenerativeModel]
    gan_loss: str | None
    description: str
    build: Callable[[GenerativeModel, TrainConfig, torch.device, World], Objective]
    lr: float | None = None  # the paper's learning rate, where it differs from the family's
    beta1: float | None = None  # the paper's Adam betas, likewise (beta2 has no flag)
    beta2: float | None = None
    # An objective with a warm-up has a `warmup_step` (same call as `step`) that the run's first `warmup`
    # of steps take (None: no warm-up); `warmup_cost` is a warm-up step's time over a full step's, which
    # lets a --max-time run plan both phases before it has timed the dearer one.
    warmup: float | None = None
    warmup_cost: float = 1.0
    # Its samples can be judged at each checkpoint (`--keep best`, genai_cli.selection): a model drawing
    # from noise, whose quality may fall late. Not a VAE, whose likelihood rises to the end and whose
    # fitted prior exists only then, nor pix2pix, whose translations have no class-based judge.
    judged: bool = False
    # It feeds its discriminator through `--augment` (genai_cli.augment); not pix2pix, whose D judges aligned
    # pairs that one image's transform would misalign, nor a VAE, which has no D.
    augments: bool = False
    # Its D step takes `--r1`: a logit-loss D, whose gradient at real images nothing else bounds (WGAN-GP has a
    # penalty of its own; pix2pix's D judges pairs).
    takes_r1: bool = False
    # Its step takes `--class-loss` for a family that has one (ModelSpec.class_loss): a logit-loss D reads its
    # projection as a classifier (cgan); the ELBO trains a classifier beside the decoder (cvae).
    takes_class_loss: bool = False

    @property
    def loss_keys(self) -> tuple[str, ...]:
        """The losses its objective logs and plots, known before any model exists (a report reads a finished run)."""
        return getattr(self.build, "loss_keys", ())


def noise_grid(model: GenerativeModel) -> SampleGrid:
    """A model that samples from noise: the latents of seeds 0.. (64 in an 8x8 grid, or for a
    conditional model 10 per class, row k class k)."""
    classes = model.config.num_classes
    n = 10 * classes if model.conditional else SAMPLE_GRID_SIZE
    z = sampling.latents(list(range(n)), model.latent_dim)
    labels, per_row = sampling.class_rows(n, classes) if model.conditional else (None, math.isqrt(n))
    return lambda sampled, device: imgs.grid(sampling.generate(sampled, z, labels, device), per_row)


def adam(params, lr: float, betas: tuple[float, float], device: torch.device) -> torch.optim.Adam:
    """Adam with the fused kernel where PyTorch has one (CPU and CUDA): one launch per step."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=fused)


def lr_factor(step: int, total: int, decay_start: float) -> float:
    """Constant, then linear to zero over the run's last (1 - decay_start): the averaging that
    a falling rate gives ends the run on its best weights. A function of the step alone, so a
    resumed run follows the same curve."""
    start = decay_start * total
    if step < start or total <= start:
        return 1.0
    return max(0.0, (total - step) / (total - start))


def set_learning_rates(optimizers: dict[str, torch.optim.Optimizer], base: dict[str, float], factor: float) -> None:
    for name, optimizer in optimizers.items():
        for group in optimizer.param_groups:
            group["lr"] = base[name] * factor


class EMA:
    """Exponential moving average of a module's weights (Yazici et al. 2019), buffers copied.

    The decay warms up as min(decay, (1 + t) / (10 + t)) over t updates, so a short run is
    not dominated by the initial weights. t equals the training step, so resume restores it.
    """

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.decay, self.updates = decay, 0
        self.shadow = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        self.updates += 1
        weight = 1 - min(self.decay, (1 + self.updates) / (10 + self.updates))
        for shadow, live in zip(self.shadow.parameters(), module.parameters()):
            shadow.lerp_(live, weight)
        for shadow, live in zip(self.shadow.buffers(), module.buffers()):
            shadow.copy_(live)


# BatchNorm statistics are averages over images x positions: 500 images of 28x28 hold 392k positions per
# channel, and gave the FID of 2,000 or 10,000 within 0.6 (benchmarks/RESULTS.md) at a quarter of the
# cost, which a one-minute run drawing a grid every 200 steps feels; larger images need fewer (>= 64).
STANDING_POSITIONS, STANDING_MAX, STANDING_MIN, STANDING_BATCH = 400_000, 500, 64, 100
Inputs = Callable[[torch.Generator, int], tuple]  # (a seeded generator, a count) -> G's arguments, on the CPU


@torch.no_grad()
def standing_statistics(generator: torch.nn.Module, inputs: Inputs, image_size: int) -> torch.nn.Module:
    """A copy of G whose BatchNorm statistics are measured afresh on what it is fed when sampling
    (BigGAN's "standing statistics"), or G itself when it has none. Training's running averages follow
    the live weights over its last ~10 batches: noisy at a small batch, and not the statistics of the
    moving-average weights users sample. Measured, classifier FID: DCGAN 32.1 -> 29.1, pix2pix edges
    17.0 -> 14.9 (benchmarks/RESULTS.md). G is not changed, so neither are training and resume.

    Each BatchNorm normalises by its batch's own statistics (its running ones set aside, the module in
    eval mode, so SyncBatchNorm does not synchronise) while a hook records them; their mean becomes the
    running statistics. Seeded draws make the copy a function of the weights alone."""
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in generator.modules()):
        return generator
    measured = copy.deepcopy(generator).eval()
    norms = [m for m in measured.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    records: dict[torch.nn.Module, list[tuple[torch.Tensor, torch.Tensor]]] = {m: [] for m in norms}

    def record(module: torch.nn.Module, args: tuple) -> None:
        x = args[0].float()
        dims = [0, *range(2, x.dim())]
        records[module].append((x.mean(dims), x.var(dims)))  # unbiased, as BatchNorm's running_var

    hooks = [m.register_forward_pre_hook(record) for m in norms]
    kept = {m: (m.running_mean, m.running_var) for m in norms}
    for m in norms:
        m.running_mean = m.running_var = None
    device = next(measured.parameters()).device
    draws = torch.Generator().manual_seed(0)
    total = max(STANDING_MIN, min(STANDING_MAX, STANDING_POSITIONS // image_size**2))
    for start in range(0, total, STANDING_BATCH):
        measured(*(a.to(device) if a is not None else None for a in inputs(draws, min(STANDING_BATCH, total - start))))
    for hook in hooks:
        hook.remove()
    for m in norms:
        means, variances = zip(*records[m])
        m.running_mean = torch.stack(means).mean(0).to(kept[m][0].dtype)
        m.running_var = torch.stack(variances).mean(0).to(kept[m][1].dtype)
    return measured
