"""The trainer's typed, frozen configuration, loadable from YAML with overrides::

    from ijckd_bounds.config import load_config
    cfg = load_config(TrainConfig, "experiments/digits_student.yaml", ["method.name=kd"])

Sections: ``data`` (DataConfig), ``model`` (ModelConfig), ``optim`` (OptimConfig),
``method`` (MethodConfig), ``run`` (RunConfig). Method weights left at ``None`` take the
method's reference default (see ``ijckd_bounds.train.objectives``).
"""

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from ijckd_bounds.errors import IJCKDError


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, which splits, and how batches are drawn."""

    name: str = "digits"
    seed: int = 0  # seeds the train/fit/eval split of the dataset
    data_dir: Optional[str] = None
    options: dict[str, Any] = field(default_factory=dict)  # extra build_dataset keywords
    batch_size: int = 64  # global batch: split evenly over DDP ranks
    eval_batch_size: int = 512
    num_workers: int = 0

    def __post_init__(self):
        for name in ("batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise IJCKDError(f"data.{name} must be a positive integer, "
                                 f"got {getattr(self, name)}")
        if self.num_workers < 0:
            raise IJCKDError(f"data.num_workers must be >= 0, got {self.num_workers}")


@dataclass(frozen=True)
class ModelConfig:
    """Teacher and student zoo models (``ijckd_bounds.models`` names and keywords)."""

    teacher: Optional[str] = None  # train-teacher: the model to train; distill: a check
    student: str = "cnn_small"
    teacher_options: dict[str, Any] = field(default_factory=dict)
    student_options: dict[str, Any] = field(default_factory=dict)
    teacher_checkpoint: Optional[str] = None  # distill: a teacher run's teacher.pt


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and per-epoch learning-rate schedule."""

    name: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    epochs: int = 10
    schedule: Literal["cosine", "multistep", "constant"] = "cosine"
    milestones: tuple[int, ...] = ()  # multistep: epochs after which lr *= gamma
    gamma: float = 0.1

    def __post_init__(self):
        if self.epochs < 1:
            raise IJCKDError(f"optim.epochs must be a positive integer, got {self.epochs}")
        if self.lr <= 0:
            raise IJCKDError(f"optim.lr must be positive, got {self.lr}")
        if self.schedule == "multistep" and not self.milestones:
            raise IJCKDError("optim.milestones must list at least one epoch for the multistep "
                             "schedule, e.g. optim.milestones=[150,180,210]")


@dataclass(frozen=True)
class MethodConfig:
    """Distillation method and its weights; ``None`` = the method's reference default.

    ce_weight: cross-entropy; kl_weight: Hinton KL; alpha: logit (prediction) MSE (IJCKD);
    beta: feature term (FitNet hint, SRRL, SimKD, IJCKD feature MSE); temperature: KD
    temperature; reduction: bottleneck connector reduction (SimKD, IJCKD).
    """

    name: str = "ce"  # train-teacher needs "ce"; distill: any of METHODS
    ce_weight: Optional[float] = None
    kl_weight: Optional[float] = None
    alpha: Optional[float] = None
    beta: Optional[float] = None
    temperature: Optional[float] = None
    reduction: Optional[int] = None


@dataclass(frozen=True)
class RunConfig:
    """Where and how a run executes."""

    run_dir: str = "runs/default"
    seed: int = 0  # model init, data order, dropout/augmentation
    ckpt_every: int = 1  # epochs between checkpoints (the last epoch always gets one)
    device: str = "auto"  # "auto" (cuda:LOCAL_RANK if available), "cpu", "cuda", "cuda:1"
    amp: Literal["none", "bf16", "fp16"] = "none"  # CUDA only
    channels_last: bool = False  # CUDA only, 2-d image models
    sync_bn: bool = False  # CUDA DDP only: SyncBatchNorm across ranks
    progress: Optional[bool] = None  # tqdm bars; None = only on a terminal

    def __post_init__(self):
        if self.ckpt_every < 1:
            raise IJCKDError(f"run.ckpt_every must be a positive integer, got {self.ckpt_every}")


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    run: RunConfig = field(default_factory=RunConfig)


__all__ = ["DataConfig", "MethodConfig", "ModelConfig", "OptimConfig", "RunConfig",
           "TrainConfig"]
