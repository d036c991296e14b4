"""Connector modules that map a student's features into the teacher's feature space.

Not registered as models. Each connector works on the three kinds of "map" the zoo
produces (``ZooModel.forward_with_map``):

- 2-d maps (n, C, H, W)  -> ``Conv2d`` / ``BatchNorm2d``,
- 1-d maps (n, C, L)     -> ``Conv1d`` / ``BatchNorm1d``,
- vectors  (n, D)        -> ``Linear`` / ``BatchNorm1d`` (a 1x1 convolution on a vector
  is a linear layer; a 3x3 one too, as a vector has no neighbours).

Every connector carries ``spec``, a plain dict (``{"kind": ..., **arguments}``) from which
``build_connector(spec)`` rebuilds it, so a checkpoint can store a connector as
``spec`` + ``state_dict`` and be loaded with ``torch.load(weights_only=True)``.

References (checked against the public code, none copied):

- ``BottleneckConnector``: SimKD's projector (DefangChen/SimKD, ``models/util.py``,
  class ``SimKD``): conv1x1(s->t/r) - BN - ReLU - conv3x3(t/r->t/r) - BN - ReLU -
  conv1x1(t/r->t) - BN - ReLU, all convolutions without bias, reduction r = 2. The last
  convolution *is* followed by BN and ReLU there, and so it is here. Spatial alignment as
  there: when the student's map is larger, it is average-pooled to the teacher's size
  *before* the projector (``input_size``); when it is smaller, the teacher's map is pooled
  to the student's size in the loss (``align_maps``).
- ``PooledConnector``: SRRL's connector as in the SimKD repository (class ``SRRL``):
  conv1x1 without bias - BN - ReLU, applied to the student's *pooled* feature vector
  (n, d_s, 1, 1), hence Linear - BN1d - ReLU on (n, d_s). The original SRRL
  (jingyang2017/KD_SRRL ``transfer_conv``) has the same layers but applies them to the
  student's last feature map, before pooling: its feature loss compares the spatial means
  of the connected map and of the teacher's map. This package implements the pooled
  variant only.
- ``FitNetRegressor``: RepDistiller's ``ConvReg`` (HobbitLong/RepDistiller,
  ``models/util.py``): a convolution chosen by the spatial sizes (3x3 stride 2 when the
  student map is twice the teacher's, 4x4 stride-2 transposed when half, a
  (1+s-t)-sized kernel when larger or equal), with bias, then BN and ReLU. Where
  RepDistiller raises for other smaller student maps, this follows the SimKD repository's
  variant: 3x3 padding-1 convolution and the teacher's map pooled to the student's size.
"""

import torch.nn as nn

from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.models.base import ZooModel, pool_to

_CONV = {1: nn.Conv1d, 2: nn.Conv2d}
_CONV_T = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d}
_NORM = {0: nn.BatchNorm1d, 1: nn.BatchNorm1d, 2: nn.BatchNorm2d}


def _describe(shape):
    return "(n, " + ", ".join(str(s) for s in shape) + ")"


def map_kind(shape, who):
    """Number of spatial dimensions (0, 1 or 2) of a map with per-sample ``shape``."""
    if len(shape) not in (1, 2, 3):
        raise IJCKDError(f"the {who} map must have shape (n, D), (n, C, L) or (n, C, H, W), "
                         f"got {_describe(shape)}")
    return len(shape) - 1


def check_same_kind(student_shape, teacher_shape):
    """The spatial rank (0, 1 or 2) the connector works at.

    Maps of the same kind keep theirs. A vector on one side and a map on the other meet
    as vectors: the map is globally average-pooled (the larger map is pooled to the
    smaller size, a vector being the smallest). A 1-d and a 2-d map cannot meet.
    """
    s_dims = map_kind(student_shape, "student")
    t_dims = map_kind(teacher_shape, "teacher")
    if s_dims != t_dims and min(s_dims, t_dims) > 0:
        raise IJCKDError(f"the student map {_describe(student_shape)} and the teacher map "
                         f"{_describe(teacher_shape)} must be of the same kind (or one a "
                         f"vector) for a feature connector")
    return min(s_dims, t_dims)


def align_maps(projected, target):
    """Average-pool the teacher's ``target`` map to the (smaller) size of ``projected``.

    ``projected`` (n, C, *S) comes out of a connector, which already pooled a larger
    student map down; so ``target`` (n, C, *T) is either the same size or larger.
    Vectors pass through.
    """
    if projected.dim() == 2:
        return ZooModel.pool(target)
    if tuple(target.shape[2:]) != tuple(projected.shape[2:]):
        target = pool_to(target, tuple(projected.shape[2:]))
    return target


def _pool_input(s_map, input_size):
    if input_size is None:
        return s_map
    if len(input_size) == 0:
        return ZooModel.pool(s_map)
    return pool_to(s_map, input_size)


def _linear_or_conv(dims, in_channels, out_channels, kernel_size, bias):
    if dims == 0:
        return nn.Linear(in_channels, out_channels, bias=bias)
    padding = kernel_size // 2
    return _CONV[dims](in_channels, out_channels, kernel_size, padding=padding, bias=bias)


class BottleneckConnector(nn.Module):
    """SimKD/IJCKD projector ``p``: student map (n, C_s, *S) -> (n, C_t, *S').

    ``S' = min(S, teacher size)`` per dimension: a student map larger than the teacher's
    is average-pooled to ``input_size`` first (``input_size=[]``: globally, to a vector,
    when the teacher's "map" is a vector). ``pooled(s_map)`` gives
    ``z_S = pool(p(s_map))`` (n, C_t), the vector the teacher classifier reads.
    """

    def __init__(self, s_channels, t_channels, dims, reduction=2, input_size=None):
        super().__init__()
        if reduction < 1 or t_channels // reduction < 1:
            raise IJCKDError(f"connector reduction must be between 1 and the teacher width "
                             f"{t_channels}, got {reduction}")
        self.spec = {"kind": "bottleneck", "s_channels": int(s_channels),
                     "t_channels": int(t_channels), "dims": int(dims),
                     "reduction": int(reduction),
                     "input_size": None if input_size is None else [int(s) for s in input_size]}
        self.input_size = None if input_size is None else tuple(int(s) for s in input_size)
        mid = t_channels // reduction
        norm = _NORM[dims]
        self.transfer = nn.Sequential(
            _linear_or_conv(dims, s_channels, mid, 1, bias=False), norm(mid), nn.ReLU(inplace=True),
            _linear_or_conv(dims, mid, mid, 3, bias=False), norm(mid), nn.ReLU(inplace=True),
            _linear_or_conv(dims, mid, t_channels, 1, bias=False), norm(t_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, s_map):
        """The projected map (n, C_t, *S') of the student map ``s_map`` (n, C_s, *S)."""
        s_map = _pool_input(s_map, self.input_size)
        return self.transfer(s_map)

    def pooled(self, s_map):
        """``z_S`` (n, C_t): the globally pooled projection of ``s_map``."""
        return ZooModel.pool(self(s_map))


class PooledConnector(nn.Module):
    """SRRL connector: pooled student features (n, d_s) -> (n, d_t), Linear-BN-ReLU."""

    def __init__(self, s_channels, t_channels):
        super().__init__()
        self.spec = {"kind": "pooled", "s_channels": int(s_channels),
                     "t_channels": int(t_channels)}
        self.transfer = nn.Sequential(nn.Linear(s_channels, t_channels, bias=False),
                                      nn.BatchNorm1d(t_channels), nn.ReLU(inplace=True))

    def forward(self, s_features):
        """The student's pooled features (n, d_s) mapped into the teacher's space (n, d_t)."""
        return self.transfer(s_features)


class FitNetRegressor(nn.Module):
    """FitNet hint regressor: student map (n, C_s, *S) -> (n, C_t, *S'') (see module doc).

    ``S''`` equals the teacher's size except in the fallback case (student smaller, not
    half), where it is the student's and ``align_maps`` pools the teacher's map down.
    """

    def __init__(self, s_shape, t_shape):
        super().__init__()
        s_shape, t_shape = tuple(int(v) for v in s_shape), tuple(int(v) for v in t_shape)
        dims = check_same_kind(s_shape, t_shape)
        self.spec = {"kind": "fitnet", "s_shape": list(s_shape), "t_shape": list(t_shape)}
        s_channels, t_channels = s_shape[0], t_shape[0]
        s_size, t_size = s_shape[1:], t_shape[1:]
        # A student map meeting a teacher vector is pooled to a vector first.
        self.input_size = [] if dims == 0 and len(s_shape) > 1 else None
        self.spec["input_size"] = self.input_size
        if dims == 0:
            layer = nn.Linear(s_channels, t_channels)
        elif all(s == 2 * t for s, t in zip(s_size, t_size, strict=True)):
            layer = _CONV[dims](s_channels, t_channels, 3, stride=2, padding=1)
        elif all(2 * s == t for s, t in zip(s_size, t_size, strict=True)):
            layer = _CONV_T[dims](s_channels, t_channels, 4, stride=2, padding=1)
        elif all(s >= t for s, t in zip(s_size, t_size, strict=True)):
            kernel = tuple(1 + s - t for s, t in zip(s_size, t_size, strict=True))
            layer = _CONV[dims](s_channels, t_channels, kernel)
        else:
            layer = _CONV[dims](s_channels, t_channels, 3, padding=1)
        self.conv = layer
        self.bn = _NORM[dims](t_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, s_map):
        """The hint (n, C_t, *S'') regressed from the student map ``s_map`` (n, C_s, *S)."""
        s_map = _pool_input(s_map, self.input_size)
        return self.relu(self.bn(self.conv(s_map)))


def bottleneck_for(s_shape, t_shape, reduction=2):
    """A ``BottleneckConnector`` for per-sample map shapes ``s_shape``, ``t_shape``."""
    dims = check_same_kind(s_shape, t_shape)
    input_size = None
    if dims == 0 and len(s_shape) > 1:
        input_size = []
    elif dims > 0 and any(s > t for s, t in zip(s_shape[1:], t_shape[1:], strict=True)):
        # The larger map is pooled to the smaller size (SimKD): here the student's, per
        # dimension, before the projector.
        input_size = [min(s, t) for s, t in zip(s_shape[1:], t_shape[1:], strict=True)]
    return BottleneckConnector(s_shape[0], t_shape[0], dims, reduction, input_size)


_KINDS = {
    "bottleneck": lambda spec: BottleneckConnector(spec["s_channels"], spec["t_channels"],
                                                   spec["dims"], spec["reduction"],
                                                   spec.get("input_size")),
    "pooled": lambda spec: PooledConnector(spec["s_channels"], spec["t_channels"]),
    "fitnet": lambda spec: FitNetRegressor(spec["s_shape"], spec["t_shape"]),
}


def build_connector(spec):
    """Rebuild a connector from its ``spec`` dict (as stored in a checkpoint)."""
    if not isinstance(spec, dict) or spec.get("kind") not in _KINDS:
        kind = spec.get("kind") if isinstance(spec, dict) else spec
        raise IJCKDError(f"unknown connector kind {kind!r}; valid: {', '.join(sorted(_KINDS))}")
    try:
        return _KINDS[spec["kind"]](spec)
    except KeyError as exc:
        raise IJCKDError(f"connector spec {spec!r} lacks the field {exc.args[0]!r}") from None


__all__ = ["BottleneckConnector", "PooledConnector", "FitNetRegressor", "align_maps",
           "bottleneck_for", "build_connector", "check_same_kind"]
