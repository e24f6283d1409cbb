#!/usr/bin/env bash
# The CUDA path, end to end, on a machine with an NVIDIA GPU (run through the device tool):
# centralized QAT training with device=cuda, one client round on CUDA against CPU, and a
# Flower + Ray simulation whose clients share the GPU (fl.num_gpus=0.5). Results in $OUT.
# Needs fedq and its dependencies installed (the device tool installs carried wheels first).
set -uo pipefail
OUT=${OUT:-/tmp/fedq-gpu-check}
mkdir -p "$OUT"
cd "$OUT"  # not the checkout: python -m must import the installed fedq (its configs are package data)
export PYTHONUNBUFFERED=1
DEMO="data.demo_train_size=6000 data.demo_eval_size=200 data.cache_dir=$OUT/cache"
nvidia-smi -L
python3 -c "import torch, fedq; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0))"

echo "== 1. centralized 2-bit QAT training on CUDA"
timeout 240 python3 -m fedq.train device=cuda quant.bits=2 train.max_steps=400 train.log_every=100 $DEMO \
  hydra.run.dir="$OUT/train" 2>&1 | tail -12

echo "== 2. one client round (model=small, 2-bit QAT, 20 local steps) on CUDA and on CPU"
timeout 240 python3 - "$OUT" <<'PY'
import sys, time
import numpy as np
from fedq.config import compose_config
from fedq.comm.downlink import Broadcaster
from fedq.fl.client import client_round
from fedq.fl.client_state import ClientStore
from fedq.fl.federation import Federation
from fedq.fl.protocol import TrainRequest
out = sys.argv[1]
for device in ("cuda", "cpu"):
    cfg = compose_config(["model=small", "quant.bits=2", f"device={device}", "clients=4", "fl.local_steps=20",
                          "data.demo_train_size=6000", "data.demo_eval_size=50", f"data.cache_dir={out}/cache"])
    fed = Federation(cfg)
    broadcaster = Broadcaster(fed.downlink, fed.seeded)
    request = lambda p, r: TrainRequest(p, r, broadcaster.message_for(p, fed.initial_vector(), r))
    client_round(fed, request(0, 1), ClientStore(None))  # warm-up
    start = time.perf_counter()
    update = client_round(fed, request(1, 2), ClientStore(None))
    print(f"{device}: {update.metrics['steps']:.0f} steps in {update.metrics['train-seconds']:.2f}s, "
          f"loss {update.metrics['train-loss']:.3f}, payload {update.metrics['payload-bytes'] / 1e6:.2f} MB, "
          f"round {time.perf_counter() - start:.2f}s", flush=True)
PY

echo "== 3. Flower + Ray simulation, 4 clients sharing the GPU (fl.num_gpus=0.5)"
timeout 300 python3 -m fedq.simulate device=cuda clients=4 fl.clients_per_round=2 fl.rounds=3 fl.local_steps=40 \
  fl.num_gpus=0.5 fl.num_cpus=2 fl.eval_every=0 quant.bits=2 $DEMO hydra.run.dir="$OUT/sim" 2>&1 | tail -20
python3 -c "import json,sys; s=json.load(open('$OUT/sim/summary.json')); print('summary:', {k: s[k] for k in ('rounds','uplink_bytes','final_test_bleu')})"
