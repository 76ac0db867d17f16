"""Load a trained model and what it was trained on from a checkpoint, without running any code from it.

A checkpoint (Lightning's, or the slim ``model.pt`` an artifact carries) holds the model's config
(``hyper_parameters``), its weights, the data config (``datamodule_hyper_parameters``) and the towers'
vocabularies and encoders (``RetrievalData``). It is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from retrieval.corpus import Corpus, DwellWeighting, HistoryConfig, SplitConfig
from retrieval.events import DwellConfig, EventRoles
from retrieval.model import TwoTowerModel

KEYS = ("hyper_parameters", "state_dict", "datamodule_hyper_parameters", "RetrievalData")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or lacks what the index job needs."""


@dataclass
class Trained:
    model: TwoTowerModel  # in eval mode, on the CPU
    data: dict[str, Any]  # the data config it was trained with
    vocab: dict[str, Any]  # TowerVocab states of items and users

    def slim(self) -> dict[str, Any]:
        """What an artifact keeps: config, weights, vocabularies (no optimizer or loop state)."""
        return {"hyper_parameters": dict(self.model.hparams), "state_dict": self.model.state_dict(),
                "datamodule_hyper_parameters": self.data, "RetrievalData": self.vocab}

    def corpus(self, events: str | None = None, items: str | None = None, users: str | None = None,
               split: bool = False) -> Corpus:
        """The corpus encoded with the trained vocabularies; paths default to the training data.

        split: cut the training run's temporal split too (for evaluation on its validation or test window).
        """
        d = self.data
        return Corpus(events or d["events"], items or d["items"], users or d["users"],
                      roles=EventRoles(**d["roles"]), sessions=DwellConfig(**d["sessions"]),
                      dwell_weighting=DwellWeighting(**d["dwell_weighting"]), history=HistoryConfig(**d["history"]),
                      split=SplitConfig(**d["split"]) if split else None, item_features=d["item_features"], user_features=d["user_features"],
                      state=self.vocab)


def load_trained(path: str | Path) -> Trained:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"checkpoint {path}: cannot be read as a weights-only checkpoint ({e})") from None
    missing = [k for k in KEYS if not isinstance(ck, dict) or k not in ck]
    if missing:
        raise CheckpointError(f"checkpoint {path}: lacks {missing}; was it written by `python -m retrieval fit`?")
    hp = {k: v for k, v in ck["hyper_parameters"].items() if not k.startswith("_")}
    try:
        model = TwoTowerModel(**hp)
        model.load_state_dict(ck["state_dict"])
    except ValueError as e:  # the model's own checks on its hyperparameters (towers, loss weights)
        raise CheckpointError(f"checkpoint {path}: its hyperparameters describe no valid model ({e})") from None
    except (TypeError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path}: weights do not fit the model it describes ({e})") from None
    model.eval()
    return Trained(model=model, data=ck["datamodule_hyper_parameters"], vocab=ck["RetrievalData"])
