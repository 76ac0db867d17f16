"""``python -m retrieval tune``: the command line of retrieval/tune.py (fits) and retrieval/tune_utility.py
(serving utility weights of one model, no fits)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from retrieval.checkpoint import CheckpointError
from retrieval.contract import DataError
from retrieval.tune import DEFAULT_SPACE, TuneError, refit, tune
from retrieval.tune import __doc__ as TUNE_DOC
from retrieval.tune_utility import tune_utility
from retrieval.utility import PROBABILITY, SCALES


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m retrieval tune", description=TUNE_DOC.split("\n")[0])
    p.add_argument("--config", action="append", help="a fit config (repeatable, merged in order)")
    p.add_argument("--utility", metavar="CHECKPOINT", default=None,
                   help="tune the serving utility's weights of this trained model instead (no fits)")
    p.add_argument("--utility-scale", choices=SCALES, default=PROBABILITY,
                   help="with --utility: weigh calibrated probabilities (default) or the heads' raw scores, as "
                        "the service's utility_scale")
    p.add_argument("--space", default=str(DEFAULT_SPACE), help="the search space YAML (default configs/tune.yaml)")
    p.add_argument("--trials", type=int, default=12, help="fits in all, trial 0 (the starting config) included")
    p.add_argument("--out", default=None, help="the run's folder (default work/tune/<first config's name>)")
    p.add_argument("--refit", action="store_true", help="then fit the chosen settings on the whole log")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not a.config and not a.utility:
        p.error("--config is required (or --utility CHECKPOINT)")
    out = Path(a.out or (f"work/tune/{Path(a.config[0]).stem}" if a.config else "work/tune/utility"))
    try:
        if a.trials < 1:
            raise TuneError(f"tune: --trials {a.trials}: at least 1 (the starting config)")
        if a.utility:
            utility = tune_utility(a.utility, a.trials, out, scale=a.utility_scale)
            print((out / "trials.md").read_text())
            print(f"chosen utility: {utility} on the {a.utility_scale} scale (python -m index build ... "
                  f"--preset tuned={utility}; then utility=tuned&utility_scale={a.utility_scale})")
            return
        tune(a.config, a.space, a.trials, out)
        print((out / "trials.md").read_text())
        print(f"chosen overrides: {out / 'best.yaml'} (add with --config)")
        if a.refit:
            print(f"deployable checkpoint: {refit(a.config, out)}")
    except (TuneError, DataError, CheckpointError) as e:
        logging.getLogger("retrieval").error("%s", e)
        sys.exit(2)
