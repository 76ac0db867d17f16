"""``python -m index build --checkpoint CKPT --out artifacts/VERSION [--factory Flat ...]``"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict

from index.artifact import ArtifactError
from index.build import build
from index.faiss_index import FactoryError
from retrieval.checkpoint import CheckpointError
from retrieval.contract import DataError


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m index")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="embed items and users, build the FAISS index, write an artifact folder")
    b.add_argument("--checkpoint", required=True, help="a checkpoint written by `python -m retrieval fit`")
    b.add_argument("--out", required=True, help="artifact folder to create (its name is the version)")
    b.add_argument("--factory", default="Flat", help="FAISS index factory string: Flat, HNSW32, IVF1024,Flat, ...")
    b.add_argument("--events", help="event log to embed users from (default: the training log)")
    b.add_argument("--items", help="item feature table (default: the training one)")
    b.add_argument("--users", help="user feature table (default: the training one)")
    b.add_argument("--recall-k", type=int, default=100, help="K of the recall check against exact search")
    b.add_argument("--recall-users", type=int, default=1000, help="users sampled for the recall check")
    b.add_argument("--batch-size", type=int, default=8192)
    b.add_argument("--gpu", choices=("auto", "yes", "no"), default="auto", help="build on the GPU (auto: when present)")
    b.add_argument("--preset", action="append", default=[], metavar="NAME=HEAD:W,...",
                   help="a named utility the service answers as utility=NAME (repeatable), e.g. "
                        "engaging=conversion:1,engagement:0.3")
    b.add_argument("--calibration-users", type=int, default=2000,
                   help="validation users whose served candidates fit each head's calibration")
    b.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    presets = {}
    for raw in a.preset:
        name, sep, spec = raw.partition("=")
        if not sep or not name.isidentifier():
            p.error(f"--preset {raw!r}: expected NAME=head:weight,...")
        presets[name] = spec  # checked against the checkpoint's heads by build()
    try:
        m = build(a.checkpoint, a.out, a.factory, a.events, a.items, a.users, a.recall_k, a.recall_users,
                  a.batch_size, {"auto": None, "yes": True, "no": False}[a.gpu], not a.no_progress,
                  presets=presets, calibration_users=a.calibration_users)
    except (ArtifactError, CheckpointError, DataError, FactoryError, RuntimeError) as e:
        logging.getLogger("index").error("%s", e)
        sys.exit(2)
    print(json.dumps({k: v for k, v in asdict(m).items() if k != "files"}, indent=2))


if __name__ == "__main__":
    main()
