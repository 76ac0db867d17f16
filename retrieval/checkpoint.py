"""Load a trained model and what it was trained on from a checkpoint, without running any code from it.

A checkpoint (Lightning's, or the slim ``model.pt`` an artifact carries) holds the model's config
(``hyper_parameters``), its weights, the data config (``datamodule_hyper_parameters``) and the towers'
vocabularies and encoders (``RetrievalData``). It is read with ``torch.load(weights_only=True)`` into the plain
inference module (retrieval/inference.py): no Lightning is imported.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from retrieval.contract import DataError
from retrieval.corpus import Corpus, CorpusConfig
from retrieval.inference import TwoTower, load_state

KEYS = ("hyper_parameters", "state_dict", "datamodule_hyper_parameters", "RetrievalData")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or lacks what the index job needs."""


@dataclass
class Trained:
    model: TwoTower  # in eval mode, on the CPU
    hparams: dict[str, Any]  # the model config it was trained with (TwoTowerModel's hyperparameters)
    data: dict[str, Any]  # the data config it was trained with (CorpusConfig's values and the loader's)
    vocab: dict[str, Any]  # TowerVocab states of items and users
    config: CorpusConfig  # ``data`` as the corpus reads it

    def slim(self) -> dict[str, Any]:
        """What an artifact keeps: config, weights, vocabularies (no optimizer or loop state)."""
        return {"hyper_parameters": self.hparams, "state_dict": self.model.state_dict(),
                "datamodule_hyper_parameters": self.data, "RetrievalData": self.vocab}

    def corpus(self, events: str | None = None, items: str | None = None, users: str | None = None,
               split: bool = False) -> Corpus:
        """The corpus encoded with the trained vocabularies; paths default to the training data.

        split: cut the training run's temporal split too (for evaluation on its validation or test window).
        """
        c = self.config
        return Corpus(replace(c, events=events or c.events, items=items or c.items, users=users or c.users),
                      state=self.vocab, split=split)


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
        config = CorpusConfig.from_dict(ck["datamodule_hyper_parameters"])
    except (TypeError, DataError) as e:
        raise CheckpointError(f"checkpoint {path}: its data config is not one this version reads ({e})") from None
    try:
        model = TwoTower.from_hparams(hp)
        load_state(model, ck["state_dict"])
    except ValueError as e:  # the towers' own checks on their hyperparameters
        raise CheckpointError(f"checkpoint {path}: its hyperparameters describe no valid model ({e})") from None
    except (TypeError, RuntimeError, KeyError, AttributeError) as e:
        raise CheckpointError(f"checkpoint {path}: weights do not fit the model it describes ({e})") from None
    model.eval()
    return Trained(model=model, hparams=hp, data=ck["datamodule_hyper_parameters"], vocab=ck["RetrievalData"],
                   config=config)
