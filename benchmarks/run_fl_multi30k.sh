#!/usr/bin/env bash
# The Multi30k federated table (configs/experiment/multi30k_fl.yaml): model=small,
# 20 clients IID, 2 per round x 50 local steps x 20 rounds, against centralized fp32
# training for the same 1000 steps; 2-bit QAT with the integer-level lsq grid and with
# the balanced seq grid (the default at 2 bits). About 100 minutes on 2 CPU cores
# (12 + 25 + 27 + 32).
#   bash benchmarks/run_fl_multi30k.sh [OUT_DIR]
set -euo pipefail
out=${1:-outputs/fl_multi30k}
mkdir -p "$out"
exp=+experiment=multi30k_fl
python -m fedq.train $exp hydra.run.dir="$out/central_fp32" > "$out/central_fp32.log" 2>&1
python -m fedq.simulate $exp quant.bits=32 comm=fp32 hydra.run.dir="$out/fed_fp32" > "$out/fed_fp32.log" 2>&1
python -m fedq.simulate $exp quant.bits=2 quant.method=lsq hydra.run.dir="$out/fed_w2_uniform2" > "$out/fed_w2_uniform2.log" 2>&1
python -m fedq.simulate $exp quant.bits=2 hydra.run.dir="$out/fed_w2seq_uniform2" > "$out/fed_w2seq_uniform2.log" 2>&1
python benchmarks/results_table.py "$out/central_fp32"
python benchmarks/results_table.py --federated "$out"/fed_*/
