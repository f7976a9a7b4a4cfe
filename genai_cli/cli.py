"""The `genai` command: flags in, one engine call, result out, errors to exit codes.

Each command parses its flags, calls one engine function, and prints the result (JSON on
stdout with --json). torch is imported only inside commands, so `genai --help` and shell
completion stay fast.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from types import FrameType
from typing import Annotated, Any, Iterator, Optional

import typer

from genai_cli import __version__, choices, console
from genai_cli.config import DataConfig, ModelConfig, TrainConfig, check_paths, parse_duration
from genai_cli.errors import ExitCode, GateFailed, GenaiError, Terminated, UsageError
from genai_cli.flags import GenaiTyper, choice, complete_from

EXIT_CODES = """Exit codes:

  0    success
  1    runtime error: missing or corrupt data or checkpoint, unwritable output, internal error
  2    usage error: unknown or conflicting flags and values
  3    genai eval --fail-if: a quality gate failed
  4    genai export --check: the export differs from the PyTorch model beyond --tolerance
  5    training diverged (NaN/inf); the last good checkpoint is kept: resume with a lower --lr
  130  interrupted (Ctrl-C); training saved a checkpoint
  143  terminated (SIGTERM); training saved a checkpoint"""


app = GenaiTyper(
    name="genai",
    help="Train, sample, evaluate and export image generative models (GAN, DCGAN, cGAN, VAE, pix2pix).",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.", envvar="GENAI_DEBUG")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object with the result on stdout.")]
Force = Annotated[bool, typer.Option("--force", "-f", help="Overwrite an existing --out.")]
Device = Annotated[Optional[str], typer.Option(
    metavar="auto|cpu|cuda[:N]|mps", autocompletion=complete_from(choices.DEVICES),
    help="auto: CUDA, then MPS, then CPU; cuda:N picks a GPU.")]
Checkpoint = Annotated[Optional[str], typer.Option(
    "--checkpoint", "-c", metavar="RUN", help="Run directory or model.safetensors. \\[default: runs/latest]")]
PickBestOf = Annotated[Optional[int], typer.Option(
    "--best-of", metavar="K", help="cvae trained with --best-of: its classifier picks each sample among K candidates "
    "instead of the trained count; 1 is the plain draw. \\[default: as trained]")]

_M, _D, _T = ModelConfig(), DataConfig(), TrainConfig()


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


@contextmanager
def terminated_like_interrupted() -> Iterator[None]:
    """SIGTERM raises Terminated (a KeyboardInterrupt) for the command's duration, so every command
    cleans up on SIGTERM as on Ctrl-C; training's own handler replaces it while it trains."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def reporting_errors(quiet: bool, debug: bool) -> Iterator[None]:
    """One line on stderr and a documented exit code for every failure; tracebacks only with --debug."""
    console.configure(quiet=quiet)
    try:
        with terminated_like_interrupted():
            yield
    except GenaiError as err:
        if debug:
            console.print_exception()
        console.error(str(err))
        raise typer.Exit(err.exit_code) from None
    except Terminated:
        console.error("terminated (SIGTERM)")
        raise typer.Exit(ExitCode.SIGTERM) from None
    except KeyboardInterrupt:
        console.error("interrupted")
        raise typer.Exit(ExitCode.SIGINT) from None
    except typer.Exit:
        raise
    except BrokenPipeError:  # the reader of stdout went away (`genai sample --out - | head`): not a bug
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes at exit
        console.error("stdout was closed before all output was written (broken pipe)")
        raise typer.Exit(ExitCode.RUNTIME) from None
    except Exception as err:  # a bug: say so plainly, keep the traceback for --debug
        if debug:
            console.print_exception()
        detail = " ".join(str(err).split())  # one line, even for multi-line exception messages
        if out_of_memory(err):  # beyond what the up-front estimates caught (other programs took the memory since)
            console.error(f"out of memory ({detail[:160]}); ask for less: a smaller --batch-size, --width or --image-size "
                          "to train, a smaller --n to sample or evaluate")
            raise typer.Exit(ExitCode.RUNTIME) from None
        console.error(f"internal error: {type(err).__name__}: {detail} (rerun with --debug for the traceback and report it)")
        raise typer.Exit(ExitCode.RUNTIME) from None


def out_of_memory(err: Exception) -> bool:
    """Python's MemoryError, torch.OutOfMemoryError, and the allocators' RuntimeErrors (no torch import here)."""
    text = str(err).lower()
    return (isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError"
            or isinstance(err, RuntimeError) and ("not enough memory" in text or "tried to allocate" in text))


def version_callback(value: bool) -> None:
    if value:
        console.emit_text(f"genai {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version.")] = False,
) -> None:
    """Train, sample, evaluate and export image generative models (GAN, DCGAN, cGAN, VAE, pix2pix)."""


def examples(*lines: str) -> str:
    """A command's help ends with these (rich keeps the line breaks of an epilog)."""
    return "Examples:\n\n" + "\n".join(f"  {line}" for line in lines)


DATA_HELP = f"{', '.join(choices.DATASETS)}, or an image folder."


@app.command(epilog=examples(
    "genai train --model dcgan --data fashion-mnist --max-time 10m",
    "genai train --model cgan --data mnist --epochs 10 --out runs/cgan",
    "genai train --model vae --data images/ --image-size 64",
    "genai train --resume runs/latest --epochs 20",
    "genai train --model dcgan --nproc-per-node 4   # 4 GPUs (torchrun, DDP)",
))
def train(
    model: Annotated[Optional[str], choice(choices.MODELS, "--model", "-m", help=f"Model family. \\[default: {_M.kind}]")] = None,
    data: Annotated[Optional[str], typer.Option("--data", "-d", metavar="NAME|DIR", autocompletion=complete_from(choices.DATASETS), help=f"{DATA_HELP} \\[default: {_D.name}]")] = None,
    data_dir: Annotated[Optional[str], typer.Option(metavar="DIR", help="Dataset root (else $GENAI_DATA_DIR, else ~/.cache/genai/datasets).")] = None,
    split: Annotated[Optional[str], typer.Option(help=f"Dataset split to train on. \\[default: {_D.split}]")] = None,
    pairs: Annotated[Optional[str], choice(choices.PAIRS, "--pairs", help="pix2pix pairs: folder (--data holds A|B images, or A/ and B/ whose files pair by name), or inputs derived from --data's images: edges, masked (inpainting) or downsampled (4x super-resolution). \\[default: folder for a folder, else edges]")] = None,
    direction: Annotated[Optional[str], choice(choices.DIRECTIONS, "--direction", help=f"pix2pix: AtoB (A is the input) or BtoA. \\[default: {_D.direction}]")] = None,
    epochs: Annotated[Optional[int], typer.Option(help=f"Passes over the data. \\[default: {_T.epochs}]")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Total optimisation steps (overrides --epochs).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b", help="Images per step, all processes together. \\[default: the family's: dcgan 32, pix2pix 16, gan 64, others 128; VAEs 64 and cgan 32 under a short --max-time alone]")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate. \\[default: the family's: dcgan 2e-3, gan 5e-4, cgan and pix2pix 2e-4 (cgan 2e-3 under a short --max-time alone), VAEs 1e-3; wgan-gp 1e-4]")] = None,
    lr_d: Annotated[Optional[float], typer.Option(help="Discriminator learning rate (TTUR). \\[default: --lr]")] = None,
    lr_decay_start: Annotated[Optional[float], typer.Option(help="Fraction of the run after which the learning rate falls linearly to 0 (1: constant). \\[default: the family's]")] = None,
    warmup: Annotated[Optional[float], typer.Option(help="Fraction of the run spent first on the objective's warm-up: pix2pix trains G on L1 alone, then adds D; 0 for none. \\[default: pix2pix 0.78 of its steps (about half its time), none elsewhere]")] = None,
    beta1: Annotated[Optional[float], typer.Option(help="Adam beta1. \\[default: 0.5 for GANs, 0.9 for VAEs; wgan-gp 0]")] = None,
    gan_loss: Annotated[Optional[str], choice(choices.GAN_LOSSES, "--gan-loss", help=f"GAN objective: bce (non-saturating), hinge or wgan-gp (critic with a gradient penalty); pix2pix: bce, or l1 (its U-Net alone, the baseline). \\[default: {_T.gan_loss}]")] = None,
    ema: Annotated[Optional[float], typer.Option(help="Decay of the generator's moving average, which samples and checkpoints use; 0 turns it off. \\[default: dcgan 0.9999, other GANs 0.999, VAEs 0]")] = None,
    augment: Annotated[Optional[str], choice(choices.AUGMENTS, "--augment", help="Differentiable augmentation (DiffAugment) of every image a GAN's discriminator sees, real and generated: random shifts of up to 1/8 of the side, a cutout of half the side, or both, so D memorises a small dataset less (on Fashion-MNIST's 60k images it made every GAN worse). \\[default: none]")] = None,
    r1: Annotated[Optional[float], typer.Option("--r1", metavar="GAMMA", help="Weight of the R1 penalty: D's squared gradient at real images (Mescheder et al. 2018), applied every 16th step as StyleGAN2 does; bce and hinge only. 0 turns it off. \\[default: dcgan and cgan 0.1, gan 1, pix2pix 0; 0 under --max-time of 5 min or less given alone]")] = None,
    class_loss: Annotated[Optional[float], typer.Option("--class-loss", metavar="WEIGHT", help="cgan, cvae: weight of an auxiliary class loss. cgan (AC-GAN, Odena et al. 2017; bce and hinge only): D's projection, read as a classifier, learns the real images' classes, and G learns to make samples it reads as the asked class: surer classes, less variety within each. cvae: a classifier trained beside it learns the real images' classes and a last one for decoded images, and the decoder learns to make images it reads as the asked class and not as decoded: sharper samples of surer classes. 0 turns it off. \\[default: cgan 0.03, cvae 10]")] = None,
    latent_dim: Annotated[Optional[int], typer.Option(help="Latent size. \\[default: 100 for GANs, 32 for VAEs]")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Square image side (28, 32, 64, ...). \\[default: the dataset's]")] = None,
    channels: Annotated[Optional[int], typer.Option(help="1 (gray) or 3 (RGB). \\[default: the dataset's]")] = None,
    width: Annotated[Optional[int], typer.Option(help=f"Base channel width of the networks. \\[default: {_M.width}; 32 for dcgan and VAEs under a short --max-time alone]")] = None,
    beta: Annotated[Optional[float], typer.Option(help=f"VAE KL weight (beta-VAE). \\[default: {_M.beta}]")] = None,
    prior: Annotated[Optional[str], choice(choices.PRIORS, "--prior", help="VAE latents: fitted (a mixture of Gaussians fitted to the training codes when training ends, one per class for cvae; sharper samples) or standard (N(0, I)). \\[default: fitted for VAEs]")] = None,
    prior_components: Annotated[Optional[int], typer.Option(help="Gaussians in a fitted prior (per class for cvae). \\[default: vae 100, cvae 10]")] = None,
    likelihood: Annotated[Optional[str], choice(choices.LIKELIHOODS, "--likelihood", help="VAE decoder: gaussian (one variance for all pixels, fitted to the data; sharp images) or bernoulli (per-pixel intensities; the classic VAE, blurrier). \\[default: gaussian]")] = None,
    class_norm: Annotated[Optional[bool], typer.Option("--class-norm/--no-class-norm", help="cgan, cvae: labels set the scale and shift of every normalisation in the generator or decoder (conditional BatchNorm), not only its input. \\[default: on for cgan, off for cvae]")] = None,
    best_of: Annotated[Optional[int], typer.Option("--best-of", metavar="K", help="cvae with a class loss: draw K candidates for each sample and keep the one its classifier (a copy stored in the model file) reads as most surely the asked class. 1 turns it off. \\[default: cvae 2]")] = None,
    full_res_conv: Annotated[Optional[bool], typer.Option("--full-res-conv/--no-full-res-conv", help="dcgan, cgan: the generator's last transposed conv gives width/2 feature maps and a 3x3 conv at full resolution makes the image from them (SNGAN's DCGAN generator), not the transposed conv itself. \\[default: on for dcgan (off under --max-time of 5 min or less given alone), off for cgan]")] = None,
    minibatch_std: Annotated[Optional[int], typer.Option("--minibatch-std", metavar="G", help="gan: the discriminator's last layer also sees how much its features differ within each group of G images (ProGAN's minibatch standard deviation), so a generator whose samples look alike is caught. 0 turns it off. \\[default: gan 4 (0 under --max-time of 5 min or less given alone)]")] = None,
    norm: Annotated[Optional[str], choice(choices.NORMS, "--norm", help=f"Normalisation layers: batch, group (independent of how processes split a batch) or none. \\[default: {_M.norm}]")] = None,
    seed: Annotated[Optional[int], typer.Option(help=f"Seed for weights, batches and noise. \\[default: {_T.seed}]")] = None,
    device: Device = None,
    precision: Annotated[Optional[str], choice(choices.PRECISIONS, "--precision", help="bf16: mixed precision (convolutions and matmuls in bfloat16, the rest float32); fp32: float32 throughout. \\[default: bf16 where the device computes it natively (CUDA, CPUs with AVX512-BF16 or AMX), else fp32]")] = None,
    out: Annotated[Optional[str], typer.Option("--out", "-o", metavar="DIR", help="Run directory. \\[default: runs/<model>-<data>-NNN]")] = None,
    resume: Annotated[Optional[str], typer.Option(metavar="RUN", help="Continue the run in this directory exactly where it stopped.")] = None,
    log_every: Annotated[Optional[int], typer.Option(help=f"Steps between log lines. \\[default: {_T.log_every}]")] = None,
    sample_every: Annotated[Optional[int], typer.Option(help=f"Steps between sample grids. \\[default: {_T.sample_every}]")] = None,
    save_every: Annotated[Optional[int], typer.Option(help=f"Steps between checkpoints. \\[default: {_T.save_every}]")] = None,
    max_time: Annotated[Optional[str], typer.Option(metavar="DURATION", help="Time budget (90s, 10m, 1h30m). Alone, the run plans its length to fit and its schedule ends inside it (from 10m, a GAN keeps its best checkpoint: --keep); with --steps/--epochs, training stops cleanly there, with a checkpoint. --resume continues.")] = None,
    keep: Annotated[Optional[str], choice(choices.KEEPS, "--keep", help="What model.safetensors holds: last (the newest checkpoint) or best (the checkpoint whose samples score the best FID with genai's classifier; GANs on labelled data). training_state.safetensors always holds the newest, for --resume. \\[default: best under --max-time of 10m or more alone, where samples can be judged; else last]")] = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="Replace an existing run in --out.")] = False,
    nproc_per_node: Annotated[Optional[int], typer.Option(help="Train on this many processes per machine through torchrun (DDP; gloo on CPU, nccl on GPUs).")] = None,
    nnodes: Annotated[str, typer.Option(metavar="N|MIN:MAX", help="Machines (or MIN:MAX) for torchrun; above 1 needs --rdzv-endpoint.")] = "1",
    rdzv_endpoint: Annotated[Optional[str], typer.Option(metavar="HOST:PORT", help="HOST:PORT where the machines of a multi-node run meet. \\[default: a free local port]")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved config as JSON and exit.")] = False,
    tensorboard: Annotated[bool, typer.Option("--tensorboard", help="Also write losses, images/s, learning rates and sample grids as TensorBoard events in RUN/tensorboard/ (needs genai-cli[tensorboard]).")] = False,
    json_out: Json = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Train a model; writes a run directory with model.safetensors, samples and metrics."""
    flags: dict[str, Any] = {
        "model.kind": model, "model.latent_dim": latent_dim, "model.image_size": image_size,
        "model.channels": channels, "model.width": width, "model.beta": beta, "model.norm": norm, "model.prior": prior,
        "model.prior_components": prior_components, "model.likelihood": likelihood, "model.class_norm": class_norm, "model.best_of": best_of,
        "model.full_res_conv": full_res_conv, "model.minibatch_std": minibatch_std,
        "data.name": data, "data.data_dir": data_dir, "data.split": split, "data.pairs": pairs, "data.direction": direction,
        "train.epochs": epochs, "train.steps": steps, "train.batch_size": batch_size, "train.lr": lr,
        "train.lr_d": lr_d, "train.lr_decay_start": lr_decay_start, "train.warmup": warmup, "train.beta1": beta1, "train.gan_loss": gan_loss, "train.ema": ema, "train.augment": augment, "train.r1": r1, "train.class_loss": class_loss, "train.seed": seed, "train.precision": precision,
        "train.device": device, "train.log_every": log_every, "train.sample_every": sample_every,
        "train.save_every": save_every, "train.keep": keep,
    }
    with reporting_errors(quiet, debug):
        check_paths({"--out": out, "--resume": resume, "--data": data, "--data-dir": data_dir})
        seconds = parse_duration(max_time) if max_time is not None else None
        from genai_cli import tboard, training

        if tensorboard:
            tboard.require()  # before any work, also before torchrun starts
        if (nproc_per_node is not None or rdzv_endpoint or nnodes != "1") and "WORLD_SIZE" not in os.environ:
            from genai_cli import distributed

            processes = 1 if nproc_per_node is None else nproc_per_node
            command = distributed.torchrun_command(distributed.strip_launch_flags(sys.argv[2:]), processes, nnodes, rdzv_endpoint)
            with console.info_held_back():  # every value checked before torchrun starts; rank 0 logs what it loads
                training.resolve(flags, resume, distributed.launch_world(processes, nnodes), seconds)
            raise typer.Exit(distributed.launch(command, processes))
        if dry_run:
            console.emit_text(training.resolve(flags, resume, max_time=seconds).to_json(indent=2))
            return
        from genai_cli.distributed import current_world

        result = training.train(flags, out=out, resume=resume, force=force, max_time=seconds, tensorboard=tensorboard)
        if not current_world().is_main:  # under torchrun, rank 0 alone reports
            return
        if json_out:
            console.emit_json(result.to_dict())
        else:
            kept = f" (step {result.kept_step}, the best judged)" if result.kept_step not in (None, result.step) else ""
            console.info(f"done: {result.step} steps, {result.images_per_sec:.0f} images/s; model {result.checkpoint}{kept}")


@app.command(epilog=examples(
    "genai sample --n 64 --out grid.png                # the newest run (runs/latest), an 8x8 grid",
    "genai sample --seeds 5 --out one.png              # one image, at its own size",
    "genai sample --class Sneaker --n 16 --trunc 0.7 --out sneakers.png",
    "genai sample --interpolate 3 17 --frames 30 --out walk.gif",
    "genai sample --seeds 0-49999 --out fakes.npz      # arr_0: N x H x W x C uint8, for FID tools",
    "genai sample --input sketches/ --out translated/  # pix2pix",
))
def sample(
    checkpoint: Checkpoint = None,
    n: Annotated[Optional[int], typer.Option("--n", "-n", metavar="N", help="Number of images. \\[default: 64]")] = None,
    out: Annotated[str, typer.Option("--out", "-o", metavar="PATH", help="NAME.png (a grid; one image: that image), NAME.gif (the --interpolate walk, animated), NAME.npz (arr_0: N x H x W x C uint8, labels), a folder (one PNG per image + manifest.jsonl), or - for PNG bytes on stdout.")] = "samples.png",
    seeds: Annotated[Optional[str], typer.Option(metavar="SEEDS", help="One image per seed: 0-99, 1,5,9 or a mix.")] = None,
    seed: Annotated[int, typer.Option(help="First seed when --seeds is not given (image i uses seed+i).")] = 0,
    label: Annotated[Optional[str], typer.Option("--label", "--class", metavar="CLASS", help="Class index or name, for conditional models.")] = None,
    trunc: Annotated[float, typer.Option(metavar="PSI", help="Truncation trick: every latent times PSI, pulled toward the mean (0) of the N(0, I) latents: 1 keeps them, 0.7 trades variety for typical images, 0 is the average image.")] = 1.0,
    nrow: Annotated[Optional[int], typer.Option(help="Images per grid row.")] = None,
    interpolate: Annotated[Optional[tuple[int, int]], typer.Option(metavar="A B", help="Latent walk between seeds A and B (spherical).")] = None,
    frames: Annotated[Optional[int], typer.Option(help="Images of the --interpolate walk, A and B included. \\[default: 10]")] = None,
    input: Annotated[Optional[str], typer.Option("--input", "-i", metavar="PATH", help="pix2pix: what to translate: an image, a folder of images, - for a PNG on stdin, or NAME[:SPLIT] (a dataset, or a folder with A/ and B/) for a grid of input | output | target.")] = None,
    steps: Annotated[Optional[int], typer.Option(hidden=True, help="Deprecated spelling of --frames.")] = None,
    best_of: PickBestOf = None,
    device: Device = None,
    force: Force = False,
    json_out: Json = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Generate images from a trained model, or translate --input images with a pix2pix model."""
    with reporting_errors(quiet, debug):
        check_paths({"--out": out, "--checkpoint": checkpoint, "--input": input})
        frames = renamed("sample --steps", "--frames", steps, frames, "train --steps counts optimisation steps")
        if out == "-" and console.stdout_is_terminal():
            raise UsageError("--out - writes PNG bytes to stdout, which is a terminal; pipe it or redirect it to a file")
        if out == "-" and json_out:
            raise UsageError("--out - and --json both use stdout; write the images to a file to get --json")
        from genai_cli import sampling

        result = sampling.run_sample(sampling.SampleRequest(
            out=out, checkpoint=checkpoint, n=n, seeds=seeds, seed=seed, label=label, per_row=nrow, trunc=trunc,
            interpolate=interpolate, frames=10 if frames is None else frames, device=device or "auto", force=force, input=input,
            best_of=best_of,
        ))
        if json_out:
            console.emit_json(result)
        else:
            where = "stdout" if out == "-" else out
            console.info(f"wrote {result['n']} images from {result['checkpoint']} to {where}")


def renamed(old: str, new: str, old_value: Any, new_value: Any, why: str) -> Any:
    """A flag's old spelling keeps working, with one warning line; both at once must agree."""
    if old_value is None:
        return new_value
    if new_value is not None and new_value != old_value:
        raise UsageError(f"{old.split()[-1]} {old_value} and {new} {new_value} disagree; give {new} alone")
    console.warn(f"{old} is deprecated: write {new} ({why})")
    return old_value


@app.command("eval", epilog=examples(
    "genai eval                                        # the newest run, every metric that applies",
    "genai eval --checkpoint runs/dcgan-fashion-mnist-001 --n 10000 --json",
    "genai eval --features inception --fail-if 'fid>30'   # exit 3 when the gate holds",
    "genai eval --images fakes.npz --data fashion-mnist",
    "genai eval --real --data fashion-mnist            # the real-data floor",
))
def evaluate(
    checkpoint: Checkpoint = None,
    n: Annotated[int, typer.Option("--n", "-n", metavar="N", help="Generated (and at most as many real reference) images.")] = 10_000,
    metrics: Annotated[Optional[str], typer.Option(metavar="LIST", help=f"Comma list of {', '.join(choices.METRICS)} (pix2pix: l1, psnr, ssim). \\[default: all that apply]")] = None,
    features: Annotated[str, choice(choices.FEATURES, "--features", help="classifier (fast, genai's per-dataset CNN) or inception (the FID network).")] = "classifier",
    inception_weights: Annotated[Optional[str], typer.Option(metavar="FILE", help="FID Inception file (else $GENAI_INCEPTION_WEIGHTS, the caches, a download).")] = None,
    real: Annotated[bool, typer.Option("--real", help="Score the train split instead of a model: the real-data floor.")] = False,
    images: Annotated[Optional[str], typer.Option(metavar="PATH", help="Score a folder of images, or an .npz of them, instead of a model.")] = None,
    data: Annotated[Optional[str], typer.Option("--data", "-d", metavar="NAME|DIR", autocompletion=complete_from(choices.DATASETS), help=f"Reference: {DATA_HELP} \\[default: the checkpoint's]")] = None,
    data_dir: Annotated[Optional[str], typer.Option(metavar="DIR", help="Dataset root.")] = None,
    split: Annotated[str, typer.Option(help="Reference split.")] = "test",
    seed: Annotated[int, typer.Option(help="First sampling seed (image i uses seed+i).")] = 0,
    iw_samples: Annotated[int, typer.Option(help="Importance samples for the VAE NLL bound.")] = 64,
    ref_stats: Annotated[Optional[str], typer.Option(metavar="FILE", help="Reference feature statistics (.npz with mu and sigma, as pytorch-fid writes) instead of the reference images' features: FID (and IS, acc, NLL) without recomputing them.")] = None,
    fail_if: Annotated[Optional[list[str]], typer.Option("--fail-if", metavar="GATE", help='Gate such as "fid>30"; exit 3 when it holds. Repeatable.')] = None,
    best_of: PickBestOf = None,
    device: Device = None,
    json_out: Json = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Measure sample quality (FID, KID, IS, precision/recall, density/coverage, accuracy, NLL)."""
    with reporting_errors(quiet, debug):
        check_paths({"--checkpoint": checkpoint, "--images": images, "--data": data, "--data-dir": data_dir,
                     "--inception-weights": inception_weights, "--ref-stats": ref_stats})
        from genai_cli import evaluation

        result = evaluation.run_eval(evaluation.EvalRequest(
            checkpoint=checkpoint, n=n, metrics=metrics.split(",") if metrics else None, features=features,
            inception_weights=inception_weights, real=real, images=images, data=data, data_dir=data_dir,
            split=split, seed=seed, device=device or "auto", iw_samples=iw_samples, gates=fail_if or [], ref_stats=ref_stats,
            best_of=best_of,
        ))
        console.emit_json(result) if json_out else console.eval_table(result)
        failed = [f"{v['gate']} ({v['reason']})" if "reason" in v else v["gate"] for v in result["gates"] if not v["passed"]]
        if failed:
            raise GateFailed(f"quality gate failed: {', '.join(failed)}")


@app.command("export", epilog=examples(
    "genai export --out generator.onnx                 # the newest run, checked against PyTorch",
    "genai export --checkpoint runs/cgan-mnist-002 --out g.pt2 --json",
    "genai export --format safetensors --out slim/ --dtype float16",
))
def export_command(
    out: Annotated[str, typer.Option("--out", "-o", metavar="PATH", help="NAME.onnx, NAME.pt2, or a folder for --format safetensors.")],
    fmt: Annotated[Optional[str], choice(choices.EXPORT_FORMATS, "--format", help="\\[default: from --out]")] = None,
    checkpoint: Checkpoint = None,
    dtype: Annotated[str, choice(choices.DTYPES, "--dtype", help="Weights of a safetensors folder.")] = "float32",
    check: Annotated[Optional[bool], typer.Option("--check/--no-check", help="Compare the export with the PyTorch model; exit 4 above --tolerance. \\[default: on; for ONNX when onnxruntime is installed]")] = None,
    tolerance: Annotated[Optional[float], typer.Option(help="Largest max |difference| --check accepts. \\[default: 1e-4; 1e-2 float16, 5e-2 bfloat16]")] = None,
    unit_range: Annotated[bool, typer.Option("--unit-range", help="ONNX/pt2 output in [0, 1] instead of [-1, 1].")] = False,
    best_of: PickBestOf = None,
    force: Force = False,
    json_out: Json = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Export the generator (decoder for VAEs) to ONNX, torch.export pt2 or a slim safetensors folder."""
    with reporting_errors(quiet, debug):
        check_paths({"--out": out, "--checkpoint": checkpoint})
        from genai_cli import export
        from genai_cli.errors import ExportCheckFailed

        request = export.ExportRequest(out=out, format=fmt, checkpoint=checkpoint, dtype=dtype, check=check,
                                       tolerance=tolerance, unit_range=unit_range, force=force, best_of=best_of)
        try:
            result = export.run_export(request)
        except ExportCheckFailed as err:
            if json_out:
                console.emit_json(err.result)
            raise
        console.emit_json(result) if json_out else console.info(export.export_summary_line(result))


@app.command("info", epilog=examples(
    "genai info                                        # runs/latest",
    "genai info runs/dcgan-fashion-mnist-001/model.safetensors --json",
    "genai info slim/",
))
def info_command(
    path: Annotated[Optional[str], typer.Argument(metavar="PATH", help="Run directory, model.safetensors, training_state.safetensors, slim export folder, or an .onnx/.pt2 export. \\[default: runs/latest]")] = None,
    json_out: Json = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Describe a checkpoint or export from its metadata alone: kind, config, step, dataset, parameters, sha256."""
    with reporting_errors(quiet, debug):
        check_paths({"PATH": path})
        from genai_cli import info

        summary = info.describe(path)
        console.emit_json(summary) if json_out else console.emit_text(info.info_text(summary))


@app.command("report", epilog=examples(
    "genai report                                      # runs/latest/report.html: open it in a browser",
    "genai report runs/dcgan-fashion-mnist-001 --out dcgan.html",
    "genai report --json                               # {report, run_dir, bytes}",
))
def report_command(
    run: Annotated[Optional[str], typer.Argument(metavar="RUN", help="Run directory or its model.safetensors. \\[default: runs/latest]")] = None,
    out: Annotated[Optional[str], typer.Option("--out", "-o", metavar="FILE", help="The HTML file to write. \\[default: RUN/report.html]")] = None,
    json_out: Json = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Write one self-contained HTML page about a run: config, speed, sample grids, losses, eval results, interpolation."""
    with reporting_errors(quiet, debug):
        check_paths({"RUN": run, "--out": out})
        from genai_cli import report

        result = report.write_report(run, out)
        console.emit_json(result) if json_out else console.emit_text(result["report"])


@app.command("data", epilog=examples(
    "genai data                                        # the registered datasets",
    "genai data fashion-mnist                          # where it is read from (downloads it when online)",
    "genai data cifar10 --split test --json",
))
def data_command(
    name: Annotated[Optional[str], typer.Argument(metavar="NAME|DIR", autocompletion=complete_from(choices.DATASETS), help="A dataset name or image folder; none lists the registered datasets.")] = None,
    data_dir: Annotated[Optional[str], typer.Option(metavar="DIR", help="Dataset root (else $GENAI_DATA_DIR, else ~/.cache/genai/datasets).")] = None,
    split: Annotated[str, typer.Option(help="train or test.")] = "train",
    json_out: Json = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Show where a dataset is read from, downloading it first when it is missing and the network answers."""
    with reporting_errors(quiet, debug):
        from genai_cli import data

        if name is None:
            names = data.dataset_names()
            console.emit_json({"datasets": names}) if json_out else console.emit_text("\n".join(names))
            return
        source = data.load_dataset(name, data_dir=data_dir, split=split)
        summary = {"name": source.name, "split": split, "images": len(source), "channels": source.channels,
                   "image_size": source.image_size, "classes": source.classes, "location": source.location}
        if json_out:
            console.emit_json(summary)
        else:
            console.emit_text(f"{source.name} ({split}): {len(source)} images, {source.channels}x{source.image_size}x"
                              f"{source.image_size}, {len(source.classes)} classes, from {source.location}")


def main() -> None:
    """Entry point of the `genai` command and `python -m genai_cli`."""
    app(prog_name="genai")


if __name__ == "__main__":
    sys.exit(main())
