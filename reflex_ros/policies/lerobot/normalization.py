"""LeRobot's (un)normalization of state and actions, in numpy float32.

The formulas and the order of the float32 operations follow LeRobot's
``_NormalizationMixin._apply_transform`` so the results are bit-identical, including its
epsilon quirks: MEAN_STD adds ``eps`` to ``std`` when normalizing but not when
un-normalizing; MIN_MAX and the quantile modes substitute ``eps`` only where the range is
exactly zero. Where LeRobot silently skips a feature whose stats are missing, we raise:
serving a policy on un-normalized inputs produces garbage actions with no error.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from reflex_ros.policies.lerobot.errors import CheckpointError

#: mode -> the two stats it needs, (offset, scale) in LeRobot's naming
REQUIRED_STATS: dict[str, tuple[str, str]] = {
    "MEAN_STD": ("mean", "std"),
    "MIN_MAX": ("min", "max"),
    "QUANTILES": ("q01", "q99"),
    "QUANTILE10": ("q10", "q90"),
}
MODES = ("IDENTITY", *REQUIRED_STATS)


class FeatureNormalizer:
    """Normalize / un-normalize one feature (``observation.state`` or ``action``)."""

    def __init__(self, key: str, mode: str, stats: Mapping[str, np.ndarray], eps: float) -> None:
        mode = str(mode).upper()
        if mode not in MODES:
            raise CheckpointError(f"normalization mode {mode!r} for {key!r} is not supported; known: {MODES}")
        self.key = key
        self.mode = mode
        self.eps = np.float32(eps)
        self.stats: dict[str, np.ndarray] = {}
        if mode != "IDENTITY":
            for name in REQUIRED_STATS[mode]:
                if name not in stats:
                    raise CheckpointError(
                        f"{mode} normalization of {key!r} needs the statistic '{key}.{name}', which the "
                        f"checkpoint's normalizer file does not have (it has: {sorted(stats) or 'nothing'})"
                    )
                self.stats[name] = np.asarray(stats[name], dtype=np.float32).reshape(-1)

    def _range(self, lo: str, hi: str) -> np.ndarray:
        denom = self.stats[hi] - self.stats[lo]
        return np.where(denom == 0, self.eps, denom).astype(np.float32)

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """Raw values -> the model's space (float32)."""
        x = np.asarray(x, dtype=np.float32)
        if self.mode == "IDENTITY":
            return x
        if self.mode == "MEAN_STD":
            return (x - self.stats["mean"]) / (self.stats["std"] + self.eps)
        if self.mode == "MIN_MAX":
            return np.float32(2) * (x - self.stats["min"]) / self._range("min", "max") - np.float32(1)
        lo, hi = REQUIRED_STATS[self.mode]
        return np.float32(2.0) * (x - self.stats[lo]) / self._range(lo, hi) - np.float32(1.0)

    def unnormalize(self, x: np.ndarray) -> np.ndarray:
        """The model's space -> raw values (float32)."""
        x = np.asarray(x, dtype=np.float32)
        if self.mode == "IDENTITY":
            return x
        if self.mode == "MEAN_STD":
            return x * self.stats["std"] + self.stats["mean"]
        if self.mode == "MIN_MAX":
            return (x + np.float32(1)) / np.float32(2) * self._range("min", "max") + self.stats["min"]
        lo, hi = REQUIRED_STATS[self.mode]
        return (x + np.float32(1.0)) * self._range(lo, hi) / np.float32(2.0) + self.stats[lo]

    def to_dict(self) -> dict:
        """JSON form (stats as lists) for an export."""
        return {
            "key": self.key,
            "mode": self.mode,
            "eps": float(self.eps),
            "stats": {k: v.tolist() for k, v in self.stats.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> FeatureNormalizer:
        stats = {k: np.asarray(v, dtype=np.float32) for k, v in data["stats"].items()}
        return cls(data["key"], data["mode"], stats, data["eps"])


def feature_stats(flat: Mapping[str, np.ndarray], key: str) -> dict[str, np.ndarray]:
    """The ``{stat: array}`` of ``key`` from a flat ``{"<key>.<stat>": array}`` stats file."""
    prefix = key + "."
    return {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix) and "." not in k[len(prefix):]}
