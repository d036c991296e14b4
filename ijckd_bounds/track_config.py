"""``TrackConfig``: how the bound terms are estimated at a checkpoint and the features
extracted for them.

One typed config for the ``track`` section of a run's YAML (``TrainConfig.track``: what
``distill --track`` uses) and for the settings that ``ijckd-bounds track``, ``audit``, the
demo and the experiments pass. A field left at None is decided by the run (``resolved``):
the run config's ``track`` section, then (``batch_size``, ``num_workers``) its ``data``
section, then the defaults below. So ``ijckd-bounds track`` without flags estimates a run
with the settings it was tracked with online. Changing it never changes training, so a run
resumes with other values.

It lives beside ``train/`` and ``tracking/`` because both read it and tracking never
imports the trainer.
"""

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from ijckd_bounds import schema
from ijckd_bounds.errors import IJCKDError

SEED = 0
DEVICE = "auto"
EVAL_BATCH_SIZE = 512  # also data.eval_batch_size's default
NUM_WORKERS = 0
CHUNK_SIZE = 4096


@dataclass(frozen=True)
class TrackConfig:
    """The estimator and extraction settings; None: the run decides (see the module).

    - ``n_bootstrap``: paired-bootstrap resamples of every interval (``schema.N_BOOTSTRAP``);
    - ``n_permutations``: sign flips of the MMD² test (``schema.N_PERMUTATIONS``);
    - ``seed``: of the bootstrap, the permutations and the fitted probes (0);
    - ``mmd_max_n``: MMD² and the CKA interval on a seeded subsample of this many
      evaluation pairs; 0: all pairs (the default);
    - ``device``: where the models run for feature extraction ("cpu", "cuda", "cuda:1", or
      "auto": this rank's GPU when CUDA is available; "auto");
    - ``batch_size``: extraction batch (``data.eval_batch_size``, 512);
    - ``num_workers``: extraction DataLoader workers for image splits (``data.num_workers``,
      0);
    - ``chunk_size``: samples per resumable, sharded feature chunk of image splits (4096);
    - ``layers``: also write ``layers.csv``, the stage probes and the stage CKA matrix
      (False).
    """

    n_bootstrap: Optional[int] = None
    n_permutations: Optional[int] = None
    seed: Optional[int] = None
    mmd_max_n: Optional[int] = None
    device: Optional[str] = None
    batch_size: Optional[int] = None
    num_workers: Optional[int] = None
    chunk_size: Optional[int] = None
    layers: Optional[bool] = None

    def __post_init__(self):
        for name in ("n_bootstrap", "n_permutations", "chunk_size", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise IJCKDError(f"track.{name} must be a positive integer, got {value}")
        if self.mmd_max_n is not None and (self.mmd_max_n < 0 or 0 < self.mmd_max_n < 10):
            raise IJCKDError(f"track.mmd_max_n must be 0 (all pairs) or at least 10, "
                             f"got {self.mmd_max_n}")
        if self.num_workers is not None and self.num_workers < 0:
            raise IJCKDError(f"track.num_workers must be >= 0, got {self.num_workers}")

    def resolved(self, config: Optional[dict[str, Any]] = None) -> "TrackConfig":
        """These settings with every None filled in from the run's config dict (as the
        checkpoint records it), then the defaults. Resolving twice equals resolving once
        (``mmd_max_n`` 0, all pairs, stays 0 so that the run's subsample cannot return)."""
        config = config or {}
        track = dict(config.get("track") or {})
        data = dict(config.get("data") or {})

        def pick(name, *fallbacks):
            for value in (getattr(self, name), track.get(name), *fallbacks):
                if value is not None:
                    return value
            return None

        return dataclasses.replace(
            self,
            n_bootstrap=int(pick("n_bootstrap", schema.N_BOOTSTRAP)),
            n_permutations=int(pick("n_permutations", schema.N_PERMUTATIONS)),
            seed=int(pick("seed", SEED)),
            mmd_max_n=int(pick("mmd_max_n", 0)),
            device=str(pick("device", DEVICE)),
            batch_size=int(pick("batch_size", data.get("eval_batch_size"), EVAL_BATCH_SIZE)),
            num_workers=int(pick("num_workers", data.get("num_workers"), NUM_WORKERS)),
            chunk_size=int(pick("chunk_size", CHUNK_SIZE)),
            layers=bool(pick("layers", False)))


__all__ = ["TrackConfig"]
