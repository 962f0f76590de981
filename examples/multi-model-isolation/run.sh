#!/bin/bash
# Three models laid out alike (code/inference.py, code/helper.py, code/utils/text.py),
# each file saying its own model's name, loaded into one `serve --multi-model` with two
# workers; each model is invoked four times on fresh connections. Every answer should
# name its own model, from whichever worker gave it (the pid).
#
#   bash examples/multi-model-isolation/run.sh [port]
set -euo pipefail
port=${1:-8091}
here=$(cd "$(dirname "$0")/../.." && pwd)
serve=${SERVE:-$here/.venv/bin/serve}
work=$(mktemp -d)
for m in alpha beta gamma; do
  mkdir -p "$work/$m/code/utils"
  cat > "$work/$m/code/inference.py" <<'PY'
import os

import helper
from utils.text import tag


def model_fn(model_dir):
    return None


def predict_fn(data, model):
    return {"helper": helper.NAME, "tag": tag(), "pid": os.getpid(), "module": __name__}
PY
  echo "NAME = \"$m\"" > "$work/$m/code/helper.py"
  touch "$work/$m/code/utils/__init__.py"
  printf 'import helper\n\n\ndef tag():\n    return "tag-" + helper.NAME\n' \
    > "$work/$m/code/utils/text.py"
done
"$serve" --multi-model --model-dir "$work/none" --workers 2 --port "$port" \
  > "$work/serve.log" 2>&1 &
pid=$!
trap 'kill $pid; wait $pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do curl -sf -o /dev/null "localhost:$port/ping" && break; sleep 0.2; done
for m in alpha beta gamma; do
  curl -s -X POST "localhost:$port/models" -H 'Content-Type: application/json' \
       -d "{\"model_name\": \"$m\", \"url\": \"$work/$m\"}"
  echo
done
for _ in 1 2 3 4; do
  for m in alpha beta gamma; do
    echo "$m -> $(curl -s -H 'Connection: close' -H 'Content-Type: application/json' \
                   -X POST "localhost:$port/models/$m/invoke" -d '[1]')"
  done
done
