#!/usr/bin/env bash
# `unifer bench serve` against `unifer serve` on the CUDA backend. The checkpoint has Llama-3.2-1B's layer shapes
# (hidden 2048, 16 layers, 32/8 heads, intermediate 8192) with the tests' 512-token byte-level tokenizer, since a
# text load generator needs a tokenizer and none can be downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
ckpt=/tmp/llama-1b-layers
python3 - "$ckpt" <<'PY'
import sys, torch
sys.path.insert(0, "tests")
from pathlib import Path
from checkpoints import make_checkpoint
with torch.device("cuda"):
    make_checkpoint(Path(sys.argv[1]), "LlamaForCausalLM", num_layers=16, hidden_size=2048, num_attention_heads=32,
                    num_key_value_heads=8, intermediate_size=8192, rope_scaling=None, max_positions=4096,
                    std=0.02, shard_size="2GB", save_dtype=torch.bfloat16, tie_word_embeddings=True)
PY
# Each load twice, on fresh servers: asynchronous scheduling (the default on CUDA), then synchronous. SERVE_MODES
# sets the servers' flags instead, one server per comma-separated entry (the first server on a fresh machine also
# pays Triton's first compilations).
IFS=',' read -ra modes <<< "${SERVE_MODES:---async-scheduling,--no-async-scheduling}"
for mode in "${modes[@]}"; do
  echo "=== unifer serve $mode"
  python3 -m unifer.cli serve "$ckpt" --backend cuda --port 8123 --log-level warning $mode > /tmp/serve.log 2>&1 &
  pid=$!
  trap 'kill $pid 2>/dev/null' EXIT
  python3 - <<'PY'
import time, urllib.request
for _ in range(180):
    try:
        urllib.request.urlopen("http://127.0.0.1:8123/health", timeout=2)
        break
    except OSError:
        time.sleep(1)
PY
  for rate in 20 100; do
    python3 -m unifer.cli bench serve --url http://127.0.0.1:8123 --model "$ckpt" --num-prompts 500 \
      --request-rate $rate --input-words 256 --output-len 256
  done
  tail -3 /tmp/serve.log
  kill $pid
  wait $pid 2>/dev/null || true
done
