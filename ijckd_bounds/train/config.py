"""The trainer's typed, frozen configuration, loadable from YAML with overrides::

    from ijckd_bounds.typed_yaml import load_config
    cfg = load_config(TrainConfig, "experiments/digits_student.yaml", ["method.name=kd"])

Sections: ``data`` (DataConfig), ``model`` (ModelConfig), ``optim`` (OptimConfig),
``method`` (MethodConfig), ``run`` (RunConfig), ``track``
(``ijckd_bounds.track_config.TrackConfig``: how ``distill --track`` estimates the bound terms;
the trainer itself ignores it). Method weights left at ``None`` take the method's reference
default (see ``ijckd_bounds.train.objectives``).
"""

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Optional

from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.track_config import EVAL_BATCH_SIZE, TrackConfig


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, which splits, and how batches are drawn."""

    name: str = "digits"
    seed: int = 0  # seeds the train/fit/eval split of the dataset
    data_dir: Optional[str] = None
    options: dict[str, Any] = field(default_factory=dict)  # extra build_dataset keywords
    batch_size: int = 64  # global batch: split evenly over DDP ranks
    eval_batch_size: int = EVAL_BATCH_SIZE
    # DataLoader processes per rank (0: load in the main process); in-memory splits without
    # augmentation skip the DataLoader when this is 0
    num_workers: int = 0
    pin_memory: Optional[bool] = None  # page-locked batches; None: on CUDA only
    persistent_workers: bool = False  # keep the workers alive across epochs
    prefetch_factor: Optional[int] = None  # batches each worker loads ahead; None: torch's 2

    def __post_init__(self):
        for name in ("batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise IJCKDError(f"data.{name} must be a positive integer, "
                                 f"got {getattr(self, name)}")
        if self.num_workers < 0:
            raise IJCKDError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.num_workers == 0:
            for name in ("persistent_workers", "prefetch_factor"):
                if getattr(self, name) not in (None, False):
                    raise IJCKDError(f"data.{name} needs worker processes: set "
                                     f"data.num_workers > 0 (e.g. data.num_workers=8)")
        if self.prefetch_factor is not None and self.prefetch_factor < 1:
            raise IJCKDError(f"data.prefetch_factor must be a positive integer, "
                             f"got {self.prefetch_factor}")

    def loader_options(self) -> dict[str, Any]:
        """DataLoader keywords for the worker settings (pin_memory is the caller's)."""
        options = {"num_workers": self.num_workers}
        if self.num_workers > 0:
            options["persistent_workers"] = self.persistent_workers
            if self.prefetch_factor is not None:
                options["prefetch_factor"] = self.prefetch_factor
        return options


@dataclass(frozen=True)
class ModelConfig:
    """Teacher and student zoo models (``ijckd_bounds.models`` names and keywords)."""

    # train-teacher: the model to train; distill: a check of the teacher checkpoint's
    # model, or the architecture that model.teacher_weights loads into
    teacher: Optional[str] = None
    student: str = "cnn_small"
    teacher_options: dict[str, Any] = field(default_factory=dict)
    student_options: dict[str, Any] = field(default_factory=dict)
    teacher_checkpoint: Optional[str] = None  # distill: a teacher run's teacher.pt
    # distill: a state dict in torchvision's layout (e.g. resnet34-b627a593.pth) for the
    # model.teacher architecture, instead of model.teacher_checkpoint
    teacher_weights: Optional[str] = None

    def __post_init__(self):
        if self.teacher_checkpoint is not None and self.teacher_weights is not None:
            raise IJCKDError("give model.teacher_checkpoint (a teacher run's teacher.pt) or "
                             "model.teacher_weights (a torchvision-layout weights file), "
                             "not both")
        if self.teacher_weights is not None and self.teacher is None:
            raise IJCKDError("model.teacher_weights needs model.teacher: the architecture the "
                             "file holds (e.g. model.teacher=resnet34)")


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
        for name in ("momentum", "weight_decay"):
            if getattr(self, name) < 0:
                raise IJCKDError(f"optim.{name} must be >= 0, got {getattr(self, name)}")
        if self.schedule == "multistep" and not self.milestones:
            raise IJCKDError("optim.milestones must list at least one epoch for the multistep "
                             "schedule, e.g. optim.milestones=[150,180,210]")


@dataclass(frozen=True)
class MethodConfig:
    """Distillation method and its weights; ``None`` = the method's reference default.

    ce_weight: cross-entropy; kl_weight: Hinton KL; logit_weight: the logit (prediction)
    MSE of IJCKD; feat_weight: the feature term (FitNet hint, SRRL's feature and logit
    MSEs, SimKD, IJCKD's feature MSE); temperature: KD temperature; reduction: bottleneck
    connector reduction (SimKD, IJCKD). The old names ``alpha`` and ``beta`` (which meant
    different terms in SRRL and IJCKD) are read as logit_weight and feat_weight, with a
    warning.
    """

    RENAMED_KEYS: ClassVar[dict] = {"alpha": "logit_weight", "beta": "feat_weight"}

    name: str = "ce"  # train-teacher needs "ce"; distill: any of METHODS
    ce_weight: Optional[float] = None
    kl_weight: Optional[float] = None
    logit_weight: Optional[float] = None
    feat_weight: Optional[float] = None
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
    # tqdm bars on a terminal and one line per epoch on stdout when it is not one (a log
    # file, a pipe); True: bars always; False: neither
    progress: Optional[bool] = None
    tensorboard: bool = False  # also log loss and bound terms to RUN_DIR/tensorboard

    def __post_init__(self):
        if self.ckpt_every < 1:
            raise IJCKDError(f"run.ckpt_every must be a positive integer, got {self.ckpt_every}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run reads, one frozen section per component (see the module
    docstring); ``load_config(TrainConfig, path, overrides)`` builds it from YAML."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    run: RunConfig = field(default_factory=RunConfig)
    track: TrackConfig = field(default_factory=TrackConfig)


def with_teacher_weights(cfg, path):
    """``cfg`` distilling from the torchvision-layout weights file ``path`` (the
    ``--teacher-weights`` flag): sets model.teacher_weights and clears
    model.teacher_checkpoint. ``path`` None leaves ``cfg`` as it is."""
    import dataclasses

    if path is None:
        return cfg
    model = dataclasses.replace(cfg.model, teacher_weights=str(path), teacher_checkpoint=None)
    return dataclasses.replace(cfg, model=model)


__all__ = ["DataConfig", "MethodConfig", "ModelConfig", "OptimConfig", "RunConfig",
           "TrackConfig", "TrainConfig", "with_teacher_weights"]
