"""Temporal train / validation / test split: evaluation always predicts the future."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retrieval.contract import DataError


@dataclass(frozen=True)
class Split:
    """Half-open time windows: train [.., val_start), validation [val_start, test_start), test [test_start, ..]."""

    val_start: int  # epoch seconds
    test_start: int  # epoch seconds

    def window(self, ts: np.ndarray) -> np.ndarray:
        """[E] int8: 0 train, 1 validation, 2 test."""
        return (ts >= self.val_start).astype(np.int8) + (ts >= self.test_start).astype(np.int8)


def temporal_split(ts: np.ndarray, val_fraction: float = 0.1, test_fraction: float = 0.1,
                   val_start: int | None = None, test_start: int | None = None) -> Split:
    """Cut the time span: the last test_fraction of it is test, the val_fraction before it validation.

    Explicit timestamps override the fractions.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(f"config: split fractions val={val_fraction}, test={test_fraction} must be in [0, 1) "
                        "and sum to less than 1")
    t0, t1 = int(ts.min()), int(ts.max()) + 1
    span = t1 - t0
    test = int(test_start) if test_start is not None else t1 - int(round(span * test_fraction))
    val = int(val_start) if val_start is not None else test - int(round(span * val_fraction))
    if not val <= test:
        raise DataError(f"config: split.val_start ({val}) is after split.test_start ({test})")
    if val <= t0:
        raise DataError(f"config: the validation window starts at {val}, at or before the first event ({t0}): "
                        "no training events would be left")
    return Split(val_start=val, test_start=test)
