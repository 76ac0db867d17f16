"""Bayesian optimisation of a config (``python -m retrieval tune``), timed: the demo config on the synthetic world
by default, or a real log's config (its adapter run first).

    python bench/bayes_tune.py [--config configs/demo.yaml] [--space S.yaml] [--trials 12] [--max-epochs N]
                               [--out work/tune/bench]

Runs ``python -m retrieval tune --config CONFIG --space S`` (the demo config's own space, configs/tune_demo.yaml:
the default space and the prior's weight; configs/tune.yaml for any other config) with
``--trials`` fits, each ended by the config's early stopping (``--max-epochs`` caps them further, for a shorter
run), and writes the "bayes_tune" section of docs/benchmarks.md ("bayes_tune_<config name>" for another config): every trial's validation objective, constraint,
best epoch and parameters, the chosen one, and the wall time. Validation window only: the test window is not
read here (the quality report scores a refit of the chosen setting).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import ROOT, publish  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--max-epochs", type=int, default=None, help="cap each trial's epochs (default: the config's)")
    p.add_argument("--out", default="work/tune/bench")
    p.add_argument("--config", default="configs/demo.yaml", help="the config to tune (its data must be there; the "
                   "demo's synthetic world is generated when missing)")
    p.add_argument("--space", default=None, help="search space (default: configs/tune_demo.yaml for the demo "
                   "config, configs/tune.yaml otherwise)")
    a = p.parse_args()
    demo = Path(a.config).name == "demo.yaml"
    space = a.space or ("configs/tune_demo.yaml" if demo else "configs/tune.yaml")
    events = ROOT / yaml.safe_load((ROOT / a.config).read_text())["data"]["events"]
    if demo and not events.exists():
        subprocess.run([sys.executable, "-m", "retrieval.synth", "--out", "work/demo/data"], cwd=ROOT, check=True)
    if not events.exists():
        sys.exit(f"error: {events} is missing: run the adapter the header of {a.config} names")
    configs = [a.config]
    if a.max_epochs:
        cap = Path(tempfile.mkdtemp()) / "cap.yaml"
        cap.write_text(f"trainer:\n  max_epochs: {a.max_epochs}\n")
        configs.append(str(cap))
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "retrieval", "tune", *(x for c in configs for x in ("--config", c)),
                    "--space", space,
                    "--trials", str(a.trials), "--out", a.out], cwd=ROOT, check=True)
    minutes = (time.time() - t0) / 60
    trials = (ROOT / a.out / "trials.md").read_text()
    name = Path(a.config).stem
    img = ROOT / "docs" / "img" / ("bayes_tune_trials.png" if demo else f"bayes_tune_{name}_trials.png")
    shutil.copyfile(ROOT / a.out / "trials.png", img)
    publish("bayes_tune" if demo else f"bayes_tune_{name}",
            "Bayesian optimisation of the demo config (synth, validation window)" if demo else
            f"Bayesian optimisation of configs/{name}.yaml (validation window)", [
        f"`python -m retrieval tune --config {a.config} --space {space}`: {a.trials} fits, trial 0 the config as shipped, then Sobol and GP (BoTorch) "
        f"trials; each fit ended by the config's early stopping"
        + (f", capped at {a.max_epochs} epochs" if a.max_epochs else "")
        + f". Objective and constraint on the validation window, scored as the service answers. Wall time "
          f"{minutes:.0f} min on this machine (a run that resumes earlier trials counts only the new ones).", "",
        trials, f"![trials]({img.relative_to(ROOT / 'docs')})"])


if __name__ == "__main__":
    main()
