"""Raw ids from requests -> artifact rows, for ids typed int or str: only an id's canonical spelling matches it."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa

from index.artifact import ArtifactError
from retrieval.contract import is_int64

# The one spelling of an int64 id: "0", or an optional minus and digits without a leading zero (ASCII only;
# Python's int() also takes "+5", " 5 ", "1_0", "0005" and non-ASCII digits, which would alias other ids).
CANONICAL_INT = re.compile(r"(0|-?[1-9][0-9]{0,18})")


class IdLookup:
    """Raw id string from a request -> row, for ids typed int (sorted array) or str (dict)."""

    def __init__(self, ids: pa.Array | np.ndarray | list, id_type: str, rows: np.ndarray | None = None):
        """ids: the ids of rows 0..N-1 (or of ``rows``); int ids need not be sorted, each must be distinct."""
        self.id_type = id_type
        if isinstance(ids, pa.Array):
            ids = ids.to_numpy() if id_type == "int" else ids.to_pylist()
        rows = np.arange(len(ids)) if rows is None else np.asarray(rows)
        if id_type == "int":
            keys = np.asarray(ids, np.int64)
            order = np.argsort(keys, kind="stable")
            self._sorted, self._rows = keys[order], rows[order]
            if len(keys) > 1 and not (np.diff(self._sorted) > 0).all():
                raise ArtifactError("artifact: ids are not unique")
        else:
            self._dict = dict(zip(ids, rows.tolist(), strict=True))

    def parse(self, raw: str | int) -> int | str | None:
        """The id as typed in the data, or None when it cannot be one (so it is unknown): a string id as given;
        an int id as a JSON int or in its canonical spelling, so that no other string aliases it."""
        if self.id_type == "str":
            return raw if isinstance(raw, str) else None
        if isinstance(raw, str):
            if not CANONICAL_INT.fullmatch(raw):
                return None
            raw = int(raw)
        return raw if is_int64(raw) else None

    def row(self, value: int | str | None) -> int | None:
        if value is None:
            return None
        if self.id_type == "str":
            return self._dict.get(value) if isinstance(value, str) else None
        if not is_int64(value):
            return None
        i = int(np.searchsorted(self._sorted, value))
        return int(self._rows[i]) if i < len(self._sorted) and self._sorted[i] == value else None

    def rows(self, values: list) -> np.ndarray:
        """[n] rows of ``values`` (ids as typed), -1 where unknown."""
        if self.id_type == "str" or not all(is_int64(v) for v in values):
            return np.array([-1 if (r := self.row(v)) is None else r for v in values], np.int64)
        v = np.asarray(values, np.int64)
        i = np.searchsorted(self._sorted, v).clip(max=max(len(self._sorted) - 1, 0))
        found = (self._sorted[i] == v) if len(self._sorted) else np.zeros(len(v), bool)
        return np.where(found, self._rows[i] if len(self._rows) else -1, -1).astype(np.int64)

    def with_ids(self, ids: list, first_row: int) -> IdLookup:
        """This lookup and ``ids`` at rows first_row, first_row + 1, ..."""
        if self.id_type == "str":
            out = IdLookup([], "str")
            out._dict = {**self._dict, **{v: first_row + i for i, v in enumerate(ids)}}
            return out
        return IdLookup(np.concatenate([self._sorted, np.asarray(ids, np.int64)]), "int",
                        np.concatenate([self._rows, first_row + np.arange(len(ids))]))
