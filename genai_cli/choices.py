"""The values of the CLI's enumerated flags, without importing the engine.

`--help` and shell completion list these, and every TAB runs `genai` anew: importing the
registries that own them (models, datasets, objectives, exporters) imports torch, 2.5 s per
TAB here. So the names live here as well, and tests/test_cli.py checks each tuple against the
registry it mirrors: a family, dataset or objective added there and not here fails that test.
The registries still check their own values, so the engine never depends on these tuples.
"""

from __future__ import annotations

MODELS = ("gan", "dcgan", "cgan", "vae", "cvae", "pix2pix")  # genai_cli.models.MODELS
DATASETS = ("mnist", "fashion-mnist", "kmnist", "cifar10")  # genai_cli.data.DATASETS (--data also takes folders)
GAN_LOSSES = ("bce", "hinge", "wgan-gp", "l1")  # genai_cli.objectives.gan_losses() (l1: pix2pix alone)
NORMS = ("batch", "group", "none")  # genai_cli.models.blocks.NORMS
PRIORS = ("fitted", "standard")  # the families' fitted prior, and N(0, I)
LIKELIHOODS = ("gaussian", "bernoulli")  # genai_cli.models.vae.LIKELIHOODS
PAIRS = ("folder", "edges", "masked", "downsampled")  # genai_cli.pairs.PAIRS
DIRECTIONS = ("AtoB", "BtoA")  # genai_cli.pairs.DIRECTIONS
METRICS = ("fid", "kid", "is", "pr", "dc", "acc", "cas", "nll", "paired")  # genai_cli.evaluation.METRICS
FEATURES = ("classifier", "inception")  # genai_cli.evaluation: the extractors `eval --features` picks
EXPORT_FORMATS = ("onnx", "pt2", "safetensors")  # genai_cli.export.FORMATS
DTYPES = ("float32", "float16", "bfloat16")  # genai_cli.export.DTYPES
AUGMENTS = ("none", "translation", "cutout", "translation,cutout")  # genai_cli.augment.POLICIES
KEEPS = ("best", "last")  # genai_cli.selection.KEEPS: what `train --keep` leaves in model.safetensors
PRECISIONS = ("bf16", "fp32")  # genai_cli.runtime.PRECISIONS
DEVICES = ("auto", "cpu", "cuda", "mps")  # genai_cli.runtime.DEVICE_CHOICES; cuda:N is accepted too
