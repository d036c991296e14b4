"""Distillation methods as objective objects over one shared training loop.

An objective is an ``nn.Module`` holding the trainable parts (the student and, where the
method has one, its connector) and a ``FrozenTeacher`` (held outside the module tree, so
``objective.train()``, ``state_dict()``, the optimizer and DDP never see it)::

    terms, logits = objective(x, y)   # x (n, *input_shape), y (n,) int64
    terms["loss"].backward()          # terms: dict name -> scalar tensor, "loss" first
    logits = objective.predict(x)     # (n, K): what the student predicts with

Loss terms are logged unweighted; ``loss`` is the weighted total. All means: ``ce`` =
mean cross-entropy; ``kl`` = T² · KL(softmax(z_t/T) ‖ softmax(z_s/T)) averaged over the
batch (``KLDivLoss(reduction="batchmean")``, as in RepDistiller/SimKD ``DistillKL``);
``*_mse`` = mean over all elements (``nn.MSELoss()``), as in the reference code.

| method  | loss (reference defaults)                                           | predicts with |
|---------|---------------------------------------------------------------------|---------------|
| ce      | ce                                                                  | own head      |
| kd      | 0.1·ce + 0.9·kl, T = 4          (RepDistiller: -r 0.1 -a 0.9 -b 0)  | own head      |
| fitnet  | ce + 100·hint_mse               (RepDistiller: -a 0 -b 100)         | own head      |
| srrl    | ce + kl + 1·(feat_mse + logit_mse)   (SimKD repo: -c 1 -d 1 -b 1)   | own head      |
| simkd   | 1·feat_mse                      (SimKD repo: -c 0 -d 0 -b 1)        | teacher cls.  |
| ijckd   | ce(h_T(z_S)) + 1·logit_mse(h_T(z_S), h_T(z_T)) + 1·feat_mse          | teacher cls.  |
| ce_connector | ce(h_T(z_S)) only: the control of simkd/ijckd (same connector)  | teacher cls.  |

Maps are the last feature map of each model (``forward_with_map``; for MLPs the last
hidden vector). FitNet's hint here is at the *last* stage (RepDistiller's default
``--hint_layer 2`` is a middle stage; this toolkit only exposes the last map).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from typing_extensions import override

from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.models.base import ZooModel
from ijckd_bounds.models.connectors import (
    FitNetRegressor,
    PooledConnector,
    align_maps,
    bottleneck_for,
)
from ijckd_bounds.registry import Registry
from ijckd_bounds.train.config import MethodConfig

METHODS = Registry("method")

WEIGHT_NAMES = ("ce_weight", "kl_weight", "logit_weight", "feat_weight", "temperature",
                "reduction")


# ------------------------------------------------------------------------- loss formulas


def hinton_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
              temperature: float) -> torch.Tensor:
    """T² · KL(softmax(z_t/T) ‖ softmax(z_s/T)), summed over classes, averaged over the
    batch. Both logits (n, K); returns a scalar. Hinton et al. 2015; RepDistiller
    ``DistillKL``."""
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    p_t = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="batchmean") * temperature ** 2


# ---------------------------------------------------------------------------- the teacher


class FrozenTeacher:
    """The teacher: always in eval mode, never trained, its classifier without gradient.

    This is the one place the teacher is frozen. Not an ``nn.Module`` on purpose: stored
    on an objective it stays out of ``parameters()``, ``state_dict()``, ``train()``.
    """

    def __init__(self, model: ZooModel):
        self.model = model.eval()
        for param in self.model.parameters():
            param.requires_grad_(False)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logits (n, K), features (n, d), map)`` without building a graph."""
        if self.model.training:  # someone called .train() on the bare model: undo it
            self.model.eval()
        with torch.no_grad():
            return self.model.forward_with_map(x)

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        """``h_T(z) = W z + b`` (n, K) for z (n, d): gradients reach ``z``, not W or b."""
        return F.linear(z, self.model.classifier.weight, self.model.classifier.bias)

    def to(self, *args: Any, **kwargs: Any) -> FrozenTeacher:
        """Move the teacher model (``nn.Module.to`` arguments); returns self."""
        self.model.to(*args, **kwargs)
        return self


# ----------------------------------------------------------------------------- objectives


class Objective(nn.Module):
    """Base class. Subclasses set ``name``, ``predicts_with``, ``defaults`` (the weights
    they use with their reference values) and ``term_names`` ("loss" first)."""

    name = None
    predicts_with = "own_head"
    needs_teacher = True
    defaults = {}
    term_names = ("loss",)

    def __init__(self, student: ZooModel, teacher: ZooModel | None = None,
                 connector: nn.Module | None = None, **weights: float):
        super().__init__()
        self.student = student
        self.connector = connector
        self.teacher = None if teacher is None else FrozenTeacher(teacher)
        self.weights = {**self.defaults, **weights}
        if self.predicts_with == "teacher_classifier":
            # The student's own head is never used: keep it out of the optimizer and DDP.
            self.student.classifier.requires_grad_(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``(terms, logits)`` for a batch ``x`` (n, *input_shape), ``y`` (n,): ``terms``
        maps each of ``term_names`` to its batch mean (``loss`` is minimised); ``logits``
        (n, K) are what the student predicts with. Every method overrides it."""
        raise NotImplementedError(f"{type(self).__name__} does not define its loss")

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the optimizer updates: the student's and the connector's."""
        return [p for p in self.parameters() if p.requires_grad]

    def student_logits(self, s_map: torch.Tensor, own_logits: torch.Tensor) -> torch.Tensor:
        """What the student predicts with, from its map (n, C, ...) and own logits (n, K)."""
        if self.predicts_with == "teacher_classifier":
            return self.teacher.classify(ZooModel.pool(self.connector(s_map)))
        return own_logits

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted logits (n, K) for x (n, *input_shape); call in eval mode."""
        own_logits, _, s_map = self.student.forward_with_map(x)
        return self.student_logits(s_map, own_logits)

    def to(self, *args: Any, **kwargs: Any) -> Objective:
        """Move the objective and its frozen teacher (``nn.Module.to`` arguments)."""
        if self.teacher is not None:
            self.teacher.to(*args, **kwargs)
        return super().to(*args, **kwargs)

    @classmethod
    def build(cls, student: ZooModel, teacher: ZooModel | None, example_x: torch.Tensor,
              **weights: float) -> Objective:
        """Build the objective (and its connector, shaped on ``example_x`` (n, ...))."""
        return cls(student, teacher, None, **weights)


@METHODS.register("ce")
class CrossEntropy(Objective):
    """loss = ce_weight · CE(z_s, y)."""

    name = "ce"
    needs_teacher = False
    defaults = {"ce_weight": 1.0}
    term_names = ("loss", "ce")

    @override
    def forward(self, x: torch.Tensor, y: torch.Tensor
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        logits, _ = self.student(x)
        ce = F.cross_entropy(logits, y)
        return {"loss": self.weights["ce_weight"] * ce, "ce": ce}, logits


@METHODS.register("kd")
class HintonKD(Objective):
    """loss = ce_weight · CE(z_s, y) + kl_weight · T² · KL(softmax(z_t/T) ‖ softmax(z_s/T)).

    Defaults 0.1 / 0.9 / T = 4 as RepDistiller's CIFAR script (``-r 0.1 -a 0.9``,
    ``--kd_T 4``)."""

    name = "kd"
    defaults = {"ce_weight": 0.1, "kl_weight": 0.9, "temperature": 4.0}
    term_names = ("loss", "ce", "kl")

    @override
    def forward(self, x: torch.Tensor, y: torch.Tensor
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        t_logits, _, _ = self.teacher(x)
        logits, _ = self.student(x)
        ce = F.cross_entropy(logits, y)
        kl = hinton_kl(logits, t_logits, self.weights["temperature"])
        loss = self.weights["ce_weight"] * ce + self.weights["kl_weight"] * kl
        return {"loss": loss, "ce": ce, "kl": kl}, logits


@METHODS.register("fitnet")
class FitNet(Objective):
    """loss = ce_weight · CE(z_s, y) + kl_weight · KL_T + feat_weight · MSE(r(s map), t map).

    ``r`` = ``FitNetRegressor`` (RepDistiller ``ConvReg``: conv - BN - ReLU), at the last
    stage. Defaults ce 1, kl 0, feat 100 (RepDistiller: ``-a 0 -b 100``); the KL term is
    skipped while kl_weight is 0 (the SimKD repo's script uses ``-d 1``)."""

    name = "fitnet"
    defaults = {"ce_weight": 1.0, "kl_weight": 0.0, "feat_weight": 100.0, "temperature": 4.0}
    term_names = ("loss", "ce", "kl", "hint_mse")

    @classmethod
    def build(cls, student: ZooModel, teacher: ZooModel | None, example_x: torch.Tensor,
              **weights: float) -> Objective:
        """Build FitNet with a ``FitNetRegressor`` shaped on the maps of ``example_x``."""
        s_map, t_map = _example_maps(student, teacher, example_x)
        return cls(student, teacher, FitNetRegressor(s_map.shape[1:], t_map.shape[1:]),
                   **weights)

    @override
    def forward(self, x: torch.Tensor, y: torch.Tensor
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        t_logits, _, t_map = self.teacher(x)
        logits, _, s_map = self.student.forward_with_map(x)
        projected = self.connector(s_map)
        hint = F.mse_loss(projected, align_maps(projected, t_map))
        ce = F.cross_entropy(logits, y)
        kl = (hinton_kl(logits, t_logits, self.weights["temperature"])
              if self.weights["kl_weight"] else torch.zeros((), device=ce.device))
        loss = (self.weights["ce_weight"] * ce + self.weights["kl_weight"] * kl
                + self.weights["feat_weight"] * hint)
        return {"loss": loss, "ce": ce, "kl": kl, "hint_mse": hint}, logits


@METHODS.register("srrl")
class SRRL(Objective):
    """loss = ce_weight · CE(z_s, y) + kl_weight · KL_T
              + feat_weight · [MSE(p(s), t) + MSE(W_T p(s) + b_T, z_t)].

    ``s``, ``t``: pooled student/teacher features; ``p`` = Linear(no bias) - BN - ReLU
    (a 1x1 conv on the pooled vector, SimKD repo class ``SRRL``); ``z_t`` teacher logits.
    ``feat_weight`` weights both MSEs alike (the script's single ``-b``). Defaults ce 1,
    kl 1, feat 1, T = 4 follow the SimKD repository's script (``-c 1 -d 1 -b 1``).

    This is the SimKD repository's variant: the connector acts on the pooled vector. The
    original SRRL (Yang et al. 2021, jingyang2017/KD_SRRL) puts its connector on the
    student's last feature map and pools after it (the losses compare spatial means of
    the connected map), and has no KL term; ``kl_weight=0`` removes the KL term but does
    not give the original, whose connector sees every spatial position."""

    name = "srrl"
    defaults = {"ce_weight": 1.0, "kl_weight": 1.0, "feat_weight": 1.0, "temperature": 4.0}
    term_names = ("loss", "ce", "kl", "feat_mse", "logit_mse")

    @classmethod
    def build(cls, student: ZooModel, teacher: ZooModel | None, example_x: torch.Tensor,
              **weights: float) -> Objective:
        """Build SRRL with a ``PooledConnector`` from the student's feature width to the
        teacher's."""
        return cls(student, teacher, PooledConnector(student.feature_dim, teacher.feature_dim),
                   **weights)

    @override
    def forward(self, x: torch.Tensor, y: torch.Tensor
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        t_logits, t_features, _ = self.teacher(x)
        logits, s_features = self.student(x)
        projected = self.connector(s_features)
        feat = F.mse_loss(projected, t_features)
        logit = F.mse_loss(self.teacher.classify(projected), t_logits)
        ce = F.cross_entropy(logits, y)
        kl = hinton_kl(logits, t_logits, self.weights["temperature"])
        loss = (self.weights["ce_weight"] * ce + self.weights["kl_weight"] * kl
                + self.weights["feat_weight"] * (feat + logit))
        return {"loss": loss, "ce": ce, "kl": kl, "feat_mse": feat, "logit_mse": logit}, logits


def _example_maps(student, teacher, example_x):
    """Student and teacher maps of a small example batch (eval mode, no graph)."""
    was_training = student.training
    student.eval()
    teacher.eval()
    with torch.no_grad():
        _, _, s_map = student.forward_with_map(example_x)
        _, _, t_map = teacher.forward_with_map(example_x)
    student.train(was_training)
    return s_map, t_map


class _TeacherClassifierObjective(Objective):
    """Shared by SimKD and IJCKD: bottleneck connector ``p`` on the student's map; the
    student predicts with the teacher classifier on ``z_S = pool(p(s map))``."""

    predicts_with = "teacher_classifier"

    @classmethod
    def build(cls, student: ZooModel, teacher: ZooModel | None, example_x: torch.Tensor,
              **weights: float) -> Objective:
        s_map, t_map = _example_maps(student, teacher, example_x)
        reduction = weights.get("reduction", cls.defaults["reduction"])
        return cls(student, teacher, bottleneck_for(s_map.shape[1:], t_map.shape[1:], reduction),
                   **weights)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(h_T(z_S) (n, K), feat_mse, teacher logits)``: the shared forward."""
        t_logits, _, t_map = self.teacher(x)
        _, _, s_map = self.student.forward_with_map(x)
        projected = self.connector(s_map)
        feat = F.mse_loss(projected, align_maps(projected, t_map))
        logits = self.teacher.classify(ZooModel.pool(projected))
        return logits, feat, t_logits


@METHODS.register("simkd")
class SimKD(_TeacherClassifierObjective):
    """loss = feat_weight · MSE(p(s map), t map), the larger map average-pooled to the smaller
    size. ``p`` = SimKD's bottleneck (1x1 - 3x3 - 1x1 conv, BN + ReLU after each,
    reduction 2). Defaults feat 1 (SimKD repo ``-c 0 -d 0 -b 1``)."""

    name = "simkd"
    defaults = {"feat_weight": 1.0, "reduction": 2}
    term_names = ("loss", "feat_mse")

    @override
    def forward(self, x: torch.Tensor, y: torch.Tensor
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        logits, feat, _ = self.project(x)
        return {"loss": self.weights["feat_weight"] * feat, "feat_mse": feat}, logits


@METHODS.register("ijckd")
class IJCKD(_TeacherClassifierObjective):
    """loss = ce_weight · CE(h_T(z_S), y) + logit_weight · MSE(h_T(z_S), h_T(z_T))
              + feat_weight · MSE(p(s map), t map),

    ``z_S = pool(p(s map))``, ``p`` the SimKD bottleneck, ``h_T(z_T)`` the teacher's
    logits. Defaults ce 1, logit 1, feat 1, reduction 2."""

    name = "ijckd"
    defaults = {"ce_weight": 1.0, "logit_weight": 1.0, "feat_weight": 1.0, "reduction": 2}
    term_names = ("loss", "ce", "logit_mse", "feat_mse")

    @override
    def forward(self, x: torch.Tensor, y: torch.Tensor
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        logits, feat, t_logits = self.project(x)
        ce = F.cross_entropy(logits, y)
        logit = F.mse_loss(logits, t_logits)
        loss = (self.weights["ce_weight"] * ce + self.weights["logit_weight"] * logit
                + self.weights["feat_weight"] * feat)
        return {"loss": loss, "ce": ce, "logit_mse": logit, "feat_mse": feat}, logits


# ------------------------------------------------------------------------------- controls


@METHODS.register("ce_connector")
class CEThroughConnector(_TeacherClassifierObjective):
    """The control of SimKD and IJCKD: loss = ce_weight · CE(h_T(z_S), y), nothing else.

    The same trainable parts as they have (student body + SimKD bottleneck ``p`` of
    ``reduction``, its own head unused) and the same frozen teacher classifier, trained
    with labels only: no feature or logit matching. Compared with simkd/ijckd at the same
    reduction and schedule it tells how much of their accuracy comes from the connector's
    parameters rather than from distillation. The teacher's features are never computed:
    only its classifier and map shape (to build ``p``) are used."""

    name = "ce_connector"
    defaults = {"ce_weight": 1.0, "reduction": 2}
    term_names = ("loss", "ce")

    @override
    def forward(self, x: torch.Tensor, y: torch.Tensor
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        own_logits, _, s_map = self.student.forward_with_map(x)
        logits = self.student_logits(s_map, own_logits)
        ce = F.cross_entropy(logits, y)
        return {"loss": self.weights["ce_weight"] * ce, "ce": ce}, logits


# --------------------------------------------------------------------------------- build


def method_weights(method_cfg: MethodConfig) -> dict[str, float]:
    """The weights of ``method_cfg`` (MethodConfig) resolved against the method's
    defaults; a weight the method does not use is an error."""
    cls = METHODS.get(method_cfg.name)
    weights = {}
    for key in WEIGHT_NAMES:
        value = getattr(method_cfg, key)
        if value is None:
            continue
        if key not in cls.defaults:
            raise IJCKDError(f"method.{key} is not used by method {method_cfg.name!r}; it uses "
                             f"{', '.join(sorted(cls.defaults)) or 'no weights'}")
        weights[key] = value
    weights = {**cls.defaults, **weights}
    if "temperature" in weights and weights["temperature"] <= 0:
        raise IJCKDError(f"method.temperature must be positive, got {weights['temperature']}")
    if "reduction" in weights:
        weights["reduction"] = int(weights["reduction"])
    return weights


def build_objective(method_cfg: MethodConfig, student: ZooModel, teacher: ZooModel | None,
                    example_x: torch.Tensor) -> Objective:
    """The objective for ``method_cfg`` (MethodConfig) on ``student``/``teacher`` models;
    ``example_x`` (n >= 2, *input_shape) shapes the connectors."""
    cls = METHODS.get(method_cfg.name)
    weights = method_weights(method_cfg)
    if cls.needs_teacher and teacher is None:
        raise IJCKDError(f"method {method_cfg.name!r} needs a teacher: set "
                         f"model.teacher_checkpoint to a teacher run's teacher.pt")
    return cls.build(student, teacher, example_x, **weights)


__all__ = ["METHODS", "CEThroughConnector", "CrossEntropy", "FitNet", "FrozenTeacher", "HintonKD",
           "IJCKD", "Objective", "SRRL", "SimKD", "build_objective", "hinton_kl", "method_weights"]
