"""Teacher training and distillation: one loop, methods as objective objects.

``train_teacher(cfg)`` / ``distill(cfg)`` take a ``TrainConfig`` (``ijckd_bounds.typed_yaml.
load_config(TrainConfig, path, overrides)``); the command line runs them:
``ijckd-bounds train-teacher`` / ``distill --config F.yaml [key=value ...] [--resume]``
(``python -m ijckd_bounds distill ...`` under torchrun).
"""

from ijckd_bounds.train.config import (
    DataConfig,
    MethodConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrackConfig,
    TrainConfig,
)
from ijckd_bounds.train.loop import Callback, TrainState, fit
from ijckd_bounds.train.objectives import METHODS, Objective, build_objective
from ijckd_bounds.train.runner import (
    RunResult,
    checkpoint_path,
    distill,
    latest_checkpoint,
    method_names,
    train_teacher,
)

__all__ = ["Callback", "DataConfig", "METHODS", "MethodConfig", "ModelConfig", "Objective",
           "OptimConfig", "RunConfig", "RunResult", "TrackConfig", "TrainConfig", "TrainState",
           "build_objective", "checkpoint_path", "distill", "fit", "latest_checkpoint",
           "method_names", "train_teacher"]
