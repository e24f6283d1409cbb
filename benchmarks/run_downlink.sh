#!/usr/bin/env bash
# Both directions on the main job (built-in corpus, tiny model, 20 clients, 5 per round, 2-bit QAT, 20 rounds,
# seed 1): fp32 both ways (the reference), the whole model at fp32 down with the 2-bit uplink (the old default),
# and compressed deltas against what each client holds (fedq.comm.downlink) at 8, 4 (the default) and 2 bits.
# Results: $OUT/*/ (default outputs/downlink); python -m fedq.report $OUT prints the table.
set -euo pipefail
out=${OUT:-outputs/downlink}
mkdir -p "$out"
run() { name=$1; shift; python -m fedq.simulate clients=20 quant.bits=2 seed=1 "$@" hydra.run.dir="$out/$name" > "$out/$name.log" 2>&1 || echo "$name failed"; grep -E "^traffic|^final" "$out/$name.log"; }
run both_fp32 comm=fp32
run down_fp32 comm.downlink.name=fp32
run down_uniform8 comm.downlink.bits=8
run down_uniform4  # the default: python -m fedq.simulate clients=20 quant.bits=2
run down_uniform2 comm.downlink.bits=2
python -m fedq.report "$out"
