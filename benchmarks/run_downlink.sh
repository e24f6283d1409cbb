#!/usr/bin/env bash
# The main job (built-in corpus, tiny model, 20 clients, 5 per round, 2-bit QAT + 2-bit uplink, 20 rounds, seed 1)
# with the whole model sent at fp32 every round (the old default) and with compressed deltas against what each
# client holds (fedq.comm.downlink) at 8, 4 and 2 bits. Results: $OUT/*/ (default outputs/downlink).
set -euo pipefail
out=${OUT:-outputs/downlink}
mkdir -p "$out"
run() { name=$1; shift; python -m fedq.simulate clients=20 quant.bits=2 seed=1 "$@" hydra.run.dir="$out/$name" > "$out/$name.log" 2>&1 || echo "$name failed"; grep -E "^traffic|^final" "$out/$name.log"; }
run down_fp32 comm.downlink.name=fp32
run down_uniform8 comm.downlink.name=uniform comm.downlink.bits=8
run down_uniform4 comm.downlink.name=uniform comm.downlink.bits=4
run down_uniform2 comm.downlink.name=uniform comm.downlink.bits=2
