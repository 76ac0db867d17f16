"""``python -m retrieval {fit,validate,test,...}`` (LightningCLI) or ``python -m retrieval tune`` (retrieval/tune.py)."""

import sys

if __name__ == "__main__":
    if sys.argv[1:2] == ["tune"]:
        try:
            from retrieval.tune_cli import main as tune  # Ax loads only for tuning
        except ImportError as e:
            sys.exit(f"error: {e.name} is missing: tuning needs the tune extra (pip install -e '.[tune]')")
        tune(sys.argv[2:])
    else:
        from retrieval.cli import main

        main()
