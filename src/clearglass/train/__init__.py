"""Training: ``TrainConfig`` (`clearglass.train.config`) and the run (`clearglass.train.run`): ``train(config)``.

``python -m clearglass.train --config FILE [key=value ...] [--resume auto|PATH]`` is ``clearglass train`` (the
same code path and output), for torchrun.
"""

from clearglass.train.config import CONFIG_DIR, TrainConfig
from clearglass.train.run import Run, TrainingInterrupted, train

__all__ = ["CONFIG_DIR", "Run", "TrainConfig", "TrainingInterrupted", "train"]
