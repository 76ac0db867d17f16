"""What a person watching a fit sees: Lightning's bar on a terminal; elsewhere (a log file, CI, a pipe) the bar's
carriage returns would be noise, so one line per epoch with the validation recall instead."""

from __future__ import annotations

import sys
import time

import lightning as L


class EpochLines(L.Callback):
    """One line per epoch: training loss, validation conversion and engagement recall@100, the best so far, time."""

    def __init__(self, stream=None, monitor: str = "val/conv_recall@100"):
        self.stream, self.monitor = stream, monitor
        self.best: tuple[float, int] | None = None
        self._t0 = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        m = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        epoch = trainer.current_epoch
        parts = [f"epoch {epoch + 1}/{trainer.max_epochs}"]
        if "train/loss" in m:
            parts.append(f"train loss {m['train/loss']:.4f}")
        if self.monitor in m:
            if self.best is None or m[self.monitor] > self.best[0]:
                self.best = (m[self.monitor], epoch + 1)
            parts.append(f"{self.monitor} {m[self.monitor]:.4f} (best {self.best[0]:.4f} at epoch {self.best[1]})")
        if "val/eng_recall@100" in m:
            parts.append(f"val/eng_recall@100 {m['val/eng_recall@100']:.4f}")
        parts.append(f"{time.perf_counter() - self._t0:.0f} s")
        print(" | ".join(parts), file=self.stream or sys.stdout, flush=True)


def use_lines(stream=None) -> bool:
    """Lines rather than a bar: the output is not a terminal."""
    return not (stream or sys.stderr).isatty()
