"""`genai train --tensorboard`: scalars, sample grids and eval results as TensorBoard events.

Written through `torch.utils.tensorboard` into RUN/tensorboard/, where stylegan2-ada and
Lightning users point `tensorboard --logdir`. The `tensorboard` package is an optional extra,
so it is imported only here and only when asked for.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from genai_cli import console, rundir
from genai_cli.errors import UsageError

TENSORBOARD_DIR = rundir.TENSORBOARD_DIR
INSTALL_HINT = "pip install 'genai-cli[tensorboard]'"


def require() -> None:
    """Refuse --tensorboard before any work when the extra is missing."""
    if importlib.util.find_spec("tensorboard") is None:
        raise UsageError(f"--tensorboard needs the tensorboard package, which is not installed: {INSTALL_HINT}")


class Log:
    """An event writer for one run; a run resumed at step N makes TensorBoard drop the events past N
    (`purge_step`), as it drops those lines of metrics.jsonl, since those steps are redone."""

    def __init__(self, run_dir: Path, resumed_at: int = 0) -> None:
        require()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=resumed_at + 1 if resumed_at else None)

    def __enter__(self) -> Log:
        return self

    def __exit__(self, *exc: object) -> None:
        self.writer.close()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()  # a log line's worth at a time: `tensorboard` shows a run as it trains

    def grid(self, step: int, pixels: np.ndarray) -> None:
        """A sample grid (H×W×C uint8) as the image 'samples' at this step."""
        self.writer.add_image("samples", pixels, step, dataformats="HWC")


def record_eval(run_dir: Path, step: int, metrics: dict[str, Any]) -> None:
    """`genai eval` of a run trained with --tensorboard adds its numbers as eval/<metric> at the checkpoint's step."""
    if not (run_dir / TENSORBOARD_DIR).is_dir() or importlib.util.find_spec("tensorboard") is None:
        return
    try:
        with Log(run_dir) as log:
            log.scalars(step, {f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    except OSError as err:  # the numbers are in metrics.jsonl and on the screen all the same
        console.warn(f"the result is not recorded in {run_dir / TENSORBOARD_DIR}: {err.strerror or err}")
