"""``python -m retrieval {fit,validate,test} --config configs/NAME.yaml``: LightningCLI over the model and data."""

from __future__ import annotations

import logging
import sys

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from retrieval.contract import DataError
from retrieval.data import RetrievalData
from retrieval.model import TwoTowerModel
from retrieval.progress import EpochLines, use_lines

ATOMIC_IO = "retrieval.checkpoint_io.AtomicCheckpointIO"  # checkpoints a kill cannot tear, in every run


class RetrievalCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Tower input sizes come from the data (vocabularies, feature widths): linked, never retyped.
        parser.link_arguments("data.item_spec", "model.item_inputs", apply_on="instantiate")
        parser.link_arguments("data.user_spec", "model.user_inputs", apply_on="instantiate")
        parser.link_arguments("data.role_spec", "model.event_roles", apply_on="instantiate")  # what heads' events mean

    def before_fit(self) -> None:
        # A bar on a terminal; elsewhere one line per epoch with the validation recall (retrieval/progress.py).
        if use_lines():
            if self.trainer.progress_bar_callback is not None:
                self.trainer.progress_bar_callback.disable()
            self.trainer.callbacks.append(EpochLines())


def main(args: list[str] | None = None) -> RetrievalCLI:
    """Run a LightningCLI subcommand; returns the CLI (its trainer holds the metrics)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return RetrievalCLI(TwoTowerModel, RetrievalData, args=args, save_config_kwargs={"overwrite": True},
                            trainer_defaults={"plugins": [{"class_path": ATOMIC_IO}]})
    except DataError as e:
        # A bad log or config is the user's to fix: say what is wrong, without a stack trace.
        logging.getLogger("retrieval").error("%s", e)
        sys.exit(2)
