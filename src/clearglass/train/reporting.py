"""Where a run's scalars go besides ``metrics.jsonl``: TensorBoard and Weights & Biases (``report_to``), in the
spirit of open_clip's ``--report-to``. Each gets exactly the numeric values of the rows written to the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clearglass.errors import ClearglassError


class Reporters:
    """The configured loggers of one run (rank 0 only); ``log(row)`` sends a metrics row's numbers to each."""

    def __init__(self, report_to: list[str], out: Path, config: dict) -> None:
        self.tensorboard = self.wandb = None
        if "tensorboard" in report_to:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ClearglassError("report_to: tensorboard is not installed: pip install 'clearglass[tensorboard]'"
                                      ) from None
            self.tensorboard = SummaryWriter(str(out / "tensorboard"))
        if "wandb" in report_to:
            try:
                import wandb
            except ImportError:
                raise ClearglassError("report_to: wandb is not installed: pip install 'clearglass[wandb]' (set "
                                      "WANDB_MODE=offline to log without a network)") from None
            self.wandb = wandb.init(project="clearglass", name=out.name, dir=str(out), config=config,
                                    resume="allow", id=_wandb_id(out))

    def log(self, row: dict[str, Any]) -> None:
        """Send every float/int of ``row`` (but step and time) at ``row['step']``: train/... and val/... scalars."""
        step = row["step"]
        scalars = {(k if k.startswith("val/") else f"train/{k}"): float(v) for k, v in row.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "time")}
        if self.tensorboard is not None:
            for k, v in scalars.items():
                self.tensorboard.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def close(self) -> None:
        """Flush and close every logger."""
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()


def _wandb_id(out: Path) -> str:
    """A stable run id per output folder, so a resumed run continues the same W&B run."""
    import hashlib

    return hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:16]
