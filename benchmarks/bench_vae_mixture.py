"""The VAE's mixture prior against its settings, on one trained run's weights: for each setting
(components, codes fitted, EM iterations) the prior is fitted to the train split's posteriors as
`genai train` fits it, then 10k samples (seeds 0-9999; a CVAE's classes in turn) are scored with
genai's classifier against the test split. Prints one line per setting, with the fit's wall time
and, for a CVAE, the judged accuracy of each asked class.

    python benchmarks/bench_vae_mixture.py runs/vae-fashion-mnist-001 1,20000,1 100,20000,30 100,20000,100
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from genai_cli import checkpoint as ckpt
from genai_cli import evaluation, metrics
from genai_cli.data import load_dataset
from genai_cli.models import vae
from genai_cli.objectives.elbo import posterior_moments

SAMPLES = 10_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("settings", nargs="+", metavar="K,CODES,ITERATIONS")
    args = parser.parse_args()
    device = torch.device("cpu")
    model, loaded = ckpt.load_model(args.run, device)
    shape, data = loaded.config.model, loaded.config.data
    assert shape.channels and shape.image_size and model.decoder.prior is not None
    judge, _ = evaluation.load_judge(data.name, data.data_dir, (shape.channels, shape.image_size), device)
    test, train = (load_dataset(data.name, data_dir=data.data_dir, split=split, channels=shape.channels,
                                image_size=shape.image_size) for split in ("test", "train"))
    reference = evaluation.split_features(test, data.name, "test", SAMPLES, judge)
    means, variances = posterior_moments(model, train.in_order(500, device))
    labels = train.all_labels() if model.conditional else None
    for setting in args.settings:
        k, codes, iterations = (int(v) for v in setting.split(","))
        vae.EM_CODES, vae.EM_ITERATIONS = codes, iterations
        prior = vae.FittedPrior(model.latent_dim, shape.num_classes, k)
        started = time.perf_counter()
        prior.fit(means, variances, labels, seed=loaded.config.train.seed)
        fit_seconds = time.perf_counter() - started
        model.decoder.prior = prior
        images, asked = evaluation.seeded_samples(model, 0, SAMPLES, device)
        features, logits = judge(images)
        precision, recall = metrics.precision_recall(reference, features)
        row = {"components": k, "codes": codes, "iterations": iterations, "fit_seconds": round(fit_seconds, 1),
               "fid": round(metrics.fid(reference, features), 2), "precision": precision, "recall": recall}
        if asked is not None and logits is not None:
            right = (logits.argmax(1) == asked).double()
            row["accuracy"] = [round(float(right[asked == c].mean()), 3) for c in range(shape.num_classes)]
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
