#!/usr/bin/env bash
# The main job end to end on the embedded default: generate the synthetic world, train, build the index,
# start the service, ask it for candidates, stop it. Everything lands under work/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
W=work/demo
PORT=${PORT:-8000}
VERSION=${VERSION:-v$(date +%Y%m%d-%H%M%S)}

echo "== 1/4 synthetic shopping world -> $W/data"
python -m retrieval.synth --out "$W/data"

echo "== 2/4 train the two towers (configs/demo.yaml; stops when validation stops improving)"
python -m retrieval fit --config configs/demo.yaml
CKPT=$(ls -t "$W"/runs/demo/version_*/checkpoints/best.ckpt | head -1)  # best validation conversion recall@100
# How good it is, as the service answers, on the validation window (the test window stays unread).
python -m retrieval.evaluate --checkpoint "$CKPT" --window validation --baselines popularity \
  --json "$W/validation.json" > "$W/validation.txt"

echo "== 3/4 build the index -> $W/artifacts/$VERSION"
python -m index build --checkpoint "$CKPT" --out "$W/artifacts/$VERSION" --no-progress

echo "== 4/4 serve on 127.0.0.1:$PORT and ask for candidates"
python -m serve --artifacts "$W/artifacts/$VERSION" --port "$PORT" > "$W/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  python - "$PORT" 2>/dev/null <<'PY' && break || sleep 0.2
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/readyz", timeout=1)
PY
done
python - "$PORT" <<'PY'
import json, sys, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
answers = {}
for user in ("1", "someone-new"):
    with urllib.request.urlopen(f"{base}/candidates?user={user}&k=5") as r:
        answers[user] = json.loads(r.read())
        print(f"GET /candidates?user={user}&k=5 ->")
        print(json.dumps(answers[user], indent=2))
# A user the service has never seen, with three fresh events: the user tower runs at request time.
items = [c["item_id"] for c in answers["1"]["candidates"][:2]]
events = [{"item_id": items[0], "event": "view", "ts": 1_800_000_000, "dwell_s": 40.0},
          {"item_id": items[0], "event": "add_to_cart", "ts": 1_800_000_050},
          {"item_id": items[1], "event": "view", "ts": 1_800_000_090}]
body = json.dumps({"user": "someone-new", "k": 5, "events": events}).encode()
req = urllib.request.Request(f"{base}/candidates", body, {"Content-Type": "application/json"})
with urllib.request.urlopen(req) as r:
    print("POST /candidates (someone-new, with 3 fresh events) ->")
    print(json.dumps(json.loads(r.read()), indent=2))
PY
python - "$W/validation.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
line = lambda name: "{:.3f} [{:.3f}, {:.3f}]".format(*r["results"][name]["conv_recall@100"][:3])
print(f"== validation conversion recall@100 over {r['users']} users: model {line('two-tower')}, "
      f"popularity {line('popularity (conversions)')} (95% bootstrap; full table: {sys.argv[1][:-4]}txt)")
PY
echo "== done: artifact $W/artifacts/$VERSION, training logs under $W/runs, service log $W/serve.log"
