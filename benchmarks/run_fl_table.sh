#!/usr/bin/env bash
# The README's federated table on the built-in corpus (tiny model, 20 clients IID,
# 5 per round, 40 local steps, 20 rounds): federated fp32 vs 2-bit QAT with 2-bit
# updates (and other uplink codecs), against centralized fp32 training of the same
# model for as many sequential steps (20 rounds x 40 steps = 800). 2-bit rows compare
# the two learned-step grids: lsq (integer levels) and seq (balanced levels, the
# default at 2 bits); the other codecs run on lsq, as they were first measured.
#   bash benchmarks/run_fl_table.sh [OUT_DIR]
set -euo pipefail
out=${1:-outputs/fl_table}
mkdir -p "$out"
sim() {  # name overrides...
  local name=$1; shift
  python -m fedq.simulate clients=20 comm.downlink.name=fp32 "$@" hydra.run.dir="$out/$name" > "$out/$name.log" 2>&1  # the tables were measured with fp32 downlinks
}
python -m fedq.train train.max_steps=800 hydra.run.dir="$out/central_fp32" > "$out/central_fp32.log" 2>&1
python -m fedq.train train.max_steps=800 quant.bits=2 quant.method=lsq hydra.run.dir="$out/central_w2" > "$out/central_w2.log" 2>&1
python -m fedq.train train.max_steps=800 quant.bits=2 hydra.run.dir="$out/central_w2seq" > "$out/central_w2seq.log" 2>&1
sim fed_fp32 quant.bits=32 comm=fp32
sim fed_w2_fp32up quant.bits=2 quant.method=lsq comm=fp32
sim fed_w2_uniform2 quant.bits=2 quant.method=lsq
sim fed_w2seq_uniform2 quant.bits=2  # the main job: python -m fedq.simulate clients=20 quant.bits=2
sim fed_w2_sign quant.bits=2 quant.method=lsq comm=sign
sim fed_w2_topk quant.bits=2 quant.method=lsq comm=topk

python -m fedq.report "$out"
