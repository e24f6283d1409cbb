#!/usr/bin/env bash
# The README's QAT table: Multi30k De->En, model=small, each row QAT-fine-tuned for
# train.max_minutes from the fp32 baseline checkpoint (the fp32 row gets the same
# fine-tune), then scored in its packed form.
#   bash benchmarks/run_qat_table.sh outputs/m30k_fp32/checkpoint [OUT_DIR] [MINUTES]
# Two runs at a time, one torch thread each (2 cores).
set -euo pipefail
ckpt=${1:?give the fp32 baseline checkpoint}
out=${2:-outputs/qat_table}
minutes=${3:-3}
mkdir -p "$out"
run() {  # name overrides...
  local name=$1; shift
  python -m fedq.train +experiment=multi30k_qat init_from="$ckpt" threads=1 train.max_minutes="$minutes" \
    "$@" hydra.run.dir="$out/$name" > "$out/$name.log" 2>&1
}
configs=(
  "fp32 quant.bits=32"  # the same fine-tune without quantization: the row to compare against
  "attn_w8 quant.bits=8 quant.scope=attention"
  "attn_w4 quant.bits=4 quant.scope=attention"
  "attn_w2 quant.bits=2 quant.method=lsq quant.scope=attention"
  "attn_binary quant.bits=1 quant.method=binary quant.scope=attention"
  "attn_ternary quant.bits=2 quant.method=ternary quant.scope=attention"
  "attn_emb_w8 quant.bits=8 quant.scope=attention+embedding"
  "linear_w8 quant.bits=8 quant.scope=linear"
  "linear_w4 quant.bits=4 quant.scope=linear"
  "linear_binary quant.bits=1 quant.method=binary quant.scope=linear"
)
for ((i = 0; i < ${#configs[@]}; i += 2)); do
  run ${configs[i]} &
  if ((i + 1 < ${#configs[@]})); then run ${configs[i + 1]} & fi
  wait
done
python -m fedq.report "$out"
