#!/usr/bin/env bash
# The uplink frontier beyond 100x on the main job (2-bit QAT, 20 clients, 5 per round, 20 rounds, seed 1,
# default 4-bit delta downlink): top-k with 2-bit values and error feedback at 3 %. Compare with
# run_downlink.sh's both_fp32 and down_uniform4 rows. (A per-block selection, commit d1b99a5, measured
# 12.7 BLEU worse at the same bytes and was removed.)
# Results: $OUT/*/ (default outputs/uplink); python -m fedq.report $OUT prints the table.
set -euo pipefail
out=${OUT:-outputs/uplink}
mkdir -p "$out"
run() { name=$1; shift; python -m fedq.simulate clients=20 quant.bits=2 seed=1 comm=topk comm.uplink.bits=2 "$@" hydra.run.dir="$out/$name" > "$out/$name.log" 2>&1 || echo "$name failed"; grep -E "^traffic|^final" "$out/$name.log"; }
run topk3_b2 comm.uplink.density=0.03
python -m fedq.report "$out"
