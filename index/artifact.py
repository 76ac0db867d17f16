"""The artifact folder and its manifest: the contract between the index job and the service.

An artifact folder holds:
  manifest.json     what is here, how it was made, and the measured recall of the index
  index.faiss       FAISS index over item vectors (row i = items.parquet row i), inner product: the conversion
                    head's, which the default answer searches
  index_<head>.faiss  the same for every other head (manifest ``heads``): a utility's searches; its item
                    vectors are read back from it
  index_joint.faiss with one user vector per head and several heads (manifest ``joint``): an index over the heads'
                    item vectors side by side ([N, H * D], in the order of ``joint.heads``), so that a utility
                    on raw scores, sum_h w_h * u_h . v_h, is one search for the query [w_1 u_1, ..., w_H u_H]
  items.parquet     item_id, vector (the served conversion embedding), in_hist_* (what a history bag reads of
                    the item: its ID row and feature codes)
  users.parquet     user_id, vector (interests x embedding_dim values: one vector per interest; vector_<head> for
                    every other head),
                    purchased (catalogue rows the user converted on, for exclusion),
                    history / history_score (the user's history items and their full scores, inner product
                    plus the repeat term: merged into the index's answer, retrieval/repeat.py;
                    history_score_<head> for every other head),
                    tail_rows / tail_events / tail_ts / tail_dwell (the user's last events, which live events
                    follow: retrieval/live.py), in_* (the user tower's own inputs: ID row, features)
  popular.parquet   item_id, score (conversion popularity, ties by engagement: the answer for users never seen;
                    the service fills it with the rest of the catalogue)
  model.pt          item tower weights, its config and encoders (embeds new items; weights only, no pickle)

A folder is written under a temporary name and renamed when complete, so it is complete or absent.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from retrieval.calibration import Platt
from retrieval.heads import SERVED
from retrieval.utility import UtilityError, check_weights

# 2: users.parquet carries history items and their scores (the repeat term); 3: a user has `interests` vectors;
# 4: the live user state: users' event tails and tower inputs, items' history lookups (in_* columns);
# 5: one index, user vectors and history scores per head, each head's calibration (manifest ``heads``); later, an
# optional ``joint`` index: a version-5 manifest without it still loads (a raw-score utility then searches every
# head), and a service from before it refuses a manifest with it, naming the field
FORMAT_VERSION = 5
FILES = ("index.faiss", "items.parquet", "users.parquet", "popular.parquet", "model.pt")


def head_index_file(head: str, served: bool) -> str:
    """The index file of a head: index.faiss for the served (conversion) head, index_<head>.faiss otherwise."""
    return "index.faiss" if served else f"index_{head}.faiss"


JOINT_INDEX = "index_joint.faiss"


def head_column(name: str, head: str, served: bool) -> str:
    """A per-head column of users.parquet: ``vector`` / ``history_score`` for the served head, else
    ``<name>_<head>``."""
    return name if served else f"{name}_{head}"


class ArtifactError(ValueError):
    """An artifact folder that is missing, incomplete or inconsistent with its manifest."""


@dataclass
class Manifest:
    version: str  # the artifact version (its folder name)
    created_at: str  # ISO-8601 UTC
    checkpoint: dict[str, str]  # {"path": ..., "sha256": ...}
    embedding_dim: int
    metric: str  # always "inner_product"
    factory: str  # FAISS index factory string
    search_params: dict[str, Any]  # e.g. {"nprobe": 32} or {"efSearch": 128}
    n_items: int
    n_users: int
    item_id_type: str  # "int" or "str": ids are answered as typed in the data
    user_id_type: str
    recall_check: dict[str, Any]  # {"k", "users", "recall"}: the index against exact search
    repeat_scale: float = 0.0  # the model's repeat-term scale (0: none; history scores are then plain inner products)
    interests: int = 1  # vectors per user: each is searched, an item scores its best interest's inner product
    # head -> {"index": file, "repeat_scale": float, "calibration": {kind, a, b, window, target, k, users, pairs,
    # positives} or None (fitted on the checkpoint's validation window; None: none was possible)}; the served
    # (conversion) head first. Must equal model.pt's heads.
    heads: dict[str, dict[str, Any]] = field(default_factory=dict)
    utility_presets: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> {head: weight}
    # {"index": "index_joint.faiss", "heads": [every head, in the order of its vectors]} or None (one head, or
    # several interest vectors per user: a sum of per-head maxima over interests is no single inner product)
    joint: dict[str, Any] | None = None
    files: dict[str, int] = field(default_factory=dict)  # file -> size in bytes
    format_version: int = FORMAT_VERSION

    @property
    def model_version(self) -> str:
        return f"{self.version}@{self.checkpoint['sha256'][:12]}"

    @property
    def file_names(self) -> list[str]:
        """Every file the artifact holds: the fixed ones and each head's index."""
        joint = [self.joint["index"]] if isinstance(self.joint, dict) and "index" in self.joint else []
        return [*FILES, *(h["index"] for h in self.heads.values() if h.get("index") not in FILES), *joint]


def sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def write_manifest(folder: Path, manifest: Manifest) -> None:
    manifest.files = {f: (folder / f).stat().st_size for f in manifest.file_names}
    (folder / "manifest.json").write_text(json.dumps(asdict(manifest), indent=2))


def read_manifest(folder: str | Path) -> Manifest:
    """Read and check a manifest and the presence and sizes of the files it names."""
    folder = Path(folder)
    path = folder / "manifest.json"
    if not folder.is_dir():
        raise ArtifactError(f"artifact {folder}: no such folder")
    if not path.exists():
        raise ArtifactError(f"artifact {folder}: no manifest.json (an incomplete or foreign folder)")
    try:
        raw = json.loads(path.read_text())
        m = Manifest(**raw)
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"artifact {folder}: manifest.json is not a valid manifest ({e})") from None
    if m.format_version != FORMAT_VERSION:
        raise ArtifactError(f"artifact {folder}: format version {m.format_version}, this service reads {FORMAT_VERSION}")
    if m.metric != "inner_product":
        raise ArtifactError(f"artifact {folder}: metric '{m.metric}', the service serves inner_product only")
    check_heads(folder, m)
    unlisted = [f for f in m.file_names if f not in m.files]
    if unlisted:
        raise ArtifactError(f"artifact {folder}: manifest.json lists no size for {unlisted}")
    real = folder.resolve()
    for f in m.file_names:
        p = folder / f
        if not p.exists():
            raise ArtifactError(f"artifact {folder}: missing file {f}")
        if not p.resolve().is_relative_to(real):  # a link out of the folder: the artifact is not what was built
            raise ArtifactError(f"artifact {folder}: {f} is a link to outside the artifact folder")
        if p.stat().st_size != m.files[f]:
            raise ArtifactError(f"artifact {folder}: {f} is {p.stat().st_size} bytes, the manifest says {m.files[f]}")
    return m


def check_heads(folder: Path, m: Manifest) -> None:
    """The manifest's heads: the served head first, each with its own index file and a readable calibration."""
    if not isinstance(m.heads, dict) or not m.heads or next(iter(m.heads)) != SERVED:
        raise ArtifactError(f"artifact {folder}: manifest heads {list(m.heads or {})} do not start with the served "
                            f"head '{SERVED}'")
    for name, h in m.heads.items():
        if not isinstance(h, dict) or h.get("index") != head_index_file(name, name == SERVED):
            raise ArtifactError(f"artifact {folder}: head {name}: expected index {head_index_file(name, name == SERVED)}"
                                f", the manifest says {h.get('index') if isinstance(h, dict) else h!r}")
        if h.get("calibration") is not None:
            try:
                Platt.from_dict(h["calibration"])
            except ValueError as e:
                raise ArtifactError(f"artifact {folder}: head {name}: {e}") from None
    if m.joint is not None:
        if (not isinstance(m.joint, dict) or m.joint.get("index") != JOINT_INDEX
                or m.joint.get("heads") != list(m.heads)):
            raise ArtifactError(f"artifact {folder}: manifest joint is {m.joint!r}; expected {{index: {JOINT_INDEX}, "
                                f"heads: {list(m.heads)}}}")
        if m.interests != 1:
            raise ArtifactError(f"artifact {folder}: a joint index with {m.interests} interest vectors per user; "
                                f"it answers one vector per head only")
    for preset, weights in m.utility_presets.items():
        try:
            check_weights(weights, list(m.heads))
        except UtilityError as e:
            raise ArtifactError(f"artifact {folder}: utility preset {preset}: {e}") from None


class StagingFolder:
    """Write into a hidden sibling folder; rename onto the target only on success (else remove it)."""

    def __init__(self, target: str | Path):
        self.target = Path(target)
        self.tmp = self.target.parent / f".{self.target.name}.partial-{os.getpid()}"

    def __enter__(self) -> Path:
        if self.target.exists():
            raise ArtifactError(f"artifact {self.target}: already exists; artifacts are immutable, choose a new version")
        self.target.parent.mkdir(parents=True, exist_ok=True)
        # Leftovers of a build of this version that was killed: never loadable (no manifest under the
        # version's name), removed here so they do not pile up.
        for stale in self.target.parent.glob(f".{self.target.name}.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            os.replace(self.tmp, self.target)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
