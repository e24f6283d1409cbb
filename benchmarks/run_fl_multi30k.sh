#!/usr/bin/env bash
# The Multi30k federated table (configs/experiment/multi30k_fl.yaml): model=small,
# 20 clients IID, 2 per round x 50 local steps x 20 rounds, against centralized fp32
# training for the same 1000 steps; 2-bit QAT with the integer-level lsq grid and with
# the balanced seq grid (the default at 2 bits). The first rows were measured with fp32
# downlinks; `fed_w2seq_default` is the 2-bit seq row with the default compressed
# downlink (4-bit deltas), to set beside `fed_fp32` (fp32 both ways). Minutes per row
# on 2 CPU cores: central_fp32 12, fed_fp32 25, fed_w2_uniform2 27, fed_w2seq_uniform2 32,
# fed_w2seq_default 32; a `_rerun` suffix runs a row again (Flower samples clients at
# random, so a rerun shows the run-to-run spread).
#   [ROWS="central_fp32 fed_fp32 ..."] bash benchmarks/run_fl_multi30k.sh [OUT_DIR]
set -euo pipefail
out=${1:-outputs/fl_multi30k}
rows=${ROWS:-central_fp32 fed_fp32 fed_w2_uniform2 fed_w2seq_uniform2 fed_w2seq_default}
mkdir -p "$out"
exp=+experiment=multi30k_fl
for name in $rows; do
  case ${name%_rerun} in
    central_fp32) cmd=(fedq.train) ;;
    fed_fp32) cmd=(fedq.simulate quant.bits=32 comm=fp32) ;;
    fed_w2_uniform2) cmd=(fedq.simulate quant.bits=2 quant.method=lsq comm.downlink.name=fp32) ;;
    fed_w2seq_uniform2) cmd=(fedq.simulate quant.bits=2 comm.downlink.name=fp32) ;;
    fed_w2seq_default) cmd=(fedq.simulate quant.bits=2) ;;
    *) echo "unknown row: $name" >&2; exit 2 ;;
  esac
  echo "$(date +%T) $name"
  python -m "${cmd[0]}" $exp "${cmd[@]:1}" hydra.run.dir="$out/$name" > "$out/$name.log" 2>&1
done

python -m fedq.report "$out"
