"""``python -m retrieval {fit,validate,test,...}`` (LightningCLI) or ``python -m retrieval tune`` (retrieval/tune.py)."""

import sys

if __name__ == "__main__":
    if sys.argv[1:2] == ["tune"]:
        from retrieval.tune_cli import main as tune  # Ax loads only for tuning

        tune(sys.argv[2:])
    else:
        from retrieval.cli import main

        main()
