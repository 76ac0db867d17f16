"""End to end through the real commands: synth -> fit -> index build -> a real uvicorn process -> an answer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from helpers import ROOT, fit_args, free_port


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{args}: {r.stderr[-3000:]}"
    return r


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_fit_to_served_answer(tmp_path):
    world = tmp_path / "data"
    run("-m", "retrieval.synth", "--out", str(world), "--users", "300", "--items", "150", "--seed", "3", cwd=tmp_path)
    run("-m", "retrieval", "fit", *fit_args(world, tmp_path / "runs"), cwd=tmp_path)
    ckpt = tmp_path / "runs" / "checkpoints" / "last.ckpt"
    out = run("-m", "index", "build", "--checkpoint", str(ckpt), "--out", str(tmp_path / "artifacts" / "v1"),
              "--no-progress", cwd=tmp_path)
    assert json.loads(out.stdout)["n_items"] == 150
    port = free_port()
    env = {**os.environ, "RETRIEVAL_ADMIN_TOKEN": "t"}
    server = subprocess.Popen([sys.executable, "-m", "serve", "--artifacts", str(tmp_path / "artifacts" / "v1"),
                               "--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(150):
            try:
                if get(f"{base}/readyz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        else:
            raise AssertionError("service did not become ready")
        status, body = get(f"{base}/candidates?user=1&k=5")
        assert status == 200 and body["fallback"] is None and len(body["candidates"]) == 5
        assert body["model_version"].startswith("v1@")
        status, body = get(f"{base}/candidates?user=1&k=5000")
        assert status == 422 and body["detail"][0]["loc"] == ["query", "k"]
        # A user the artifact has never seen, with fresh events: the user tower answers at request time.
        seen = [c["item_id"] for c in get(f"{base}/candidates?user=1&k=5")[1]["candidates"]]
        events = [{"item_id": seen[0], "event": "view", "ts": 1_800_000_000}, {"item_id": seen[1], "event": "click",
                                                                             "ts": 1_800_000_030}]
        req = urllib.request.Request(f"{base}/candidates", json.dumps({"user": "new-user", "k": 5, "events": events})
                                     .encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            live = json.loads(r.read())
        popular = get(f"{base}/candidates?user=new-user&k=5")[1]
        assert live["fallback"] is None and popular["fallback"] == "popular" and live["ignored_events"] == 0
        assert len(live["candidates"]) == 5 and live["candidates"] != popular["candidates"]
    finally:
        server.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught
        assert server.wait(timeout=20) in (0, -signal.SIGTERM)
    assert b"Application shutdown complete" in server.stdout.read()


def test_serve_refuses_a_missing_artifact_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "serve", "--artifacts", str(tmp_path / "nope")], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "no such folder" in r.stderr and "Traceback" not in r.stderr
