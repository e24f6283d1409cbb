#!/usr/bin/env bash
# The Multi30k federated table (configs/experiment/multi30k_fl.yaml): model=small,
# 20 clients IID, 2 per round x 50 local steps x 20 rounds, against centralized fp32
# training for the same 1000 steps; 2-bit QAT with the integer-level lsq grid and with
# the balanced seq grid (the default at 2 bits). About 100 minutes on 2 CPU cores
# (12 + 25 + 27 + 32). RERUN=1 then runs federated fp32 and 2-bit seq a second time
# (Flower samples clients at random, so a rerun shows the run-to-run spread): +60 min.
#   [RERUN=1] bash benchmarks/run_fl_multi30k.sh [OUT_DIR]
set -euo pipefail
out=${1:-outputs/fl_multi30k}
mkdir -p "$out"
exp=+experiment=multi30k_fl
sim() {  # name overrides...
  local name=$1; shift
  python -m fedq.simulate $exp comm.downlink.name=fp32 "$@" hydra.run.dir="$out/$name" > "$out/$name.log" 2>&1  # the tables were measured with fp32 downlinks
}
python -m fedq.train $exp hydra.run.dir="$out/central_fp32" > "$out/central_fp32.log" 2>&1
sim fed_fp32 quant.bits=32 comm=fp32
sim fed_w2_uniform2 quant.bits=2 quant.method=lsq
sim fed_w2seq_uniform2 quant.bits=2
if [[ ${RERUN:-0} == 1 ]]; then
  sim fed_fp32_rerun quant.bits=32 comm=fp32
  sim fed_w2seq_uniform2_rerun quant.bits=2
fi

python -m fedq.report "$out"
