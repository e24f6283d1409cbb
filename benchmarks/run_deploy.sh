#!/usr/bin/env bash
# Edge deployment tables (python -m fedq.deploy), each measured side by side in one run on one machine:
#   demo      the tiny model on the built-in corpus, fp32, 800 steps (the FL table's centralized recipe)
#   demo_w8   the same with 8-bit QAT (through int8 and ct2-int8)
#   fourier   the same model with FNet mixing in the encoder (model.mixer=fourier), 800 steps
#   multi30k  model=small on Multi30k, the README's centralized baseline recipe (40 minutes; MULTI30K_MINUTES=N for less)
#   multi30k_codes  2-bit seq QAT fine-tuned from the multi30k checkpoint (+experiment=multi30k_qat, 3 minutes), run as
#             trained (onnx-nbits, ct2-codes) beside the engines that re-quantize it (needs the multi30k part's checkpoint)
#   codes     QAT checkpoints run as trained (onnx-nbits, ct2-codes) beside the engines that re-quantize them: the tiny
#             model at 2-bit seq, 8-bit LSQ, ternary and binary, 800 steps each
# Every table has each variant's peak memory translating the test set (deploy.memory, a process per variant).
# PARTS picks parts (default: all, in this order); CODES picks the codes part's checkpoints (default: w2 w8 ternary binary);
# REUSE=1 deploys the checkpoints already in OUT_DIR again instead of retraining them.
# lowrank rows without and with a fine-tune (deploy.finetune_steps) come from a second deploy of the same checkpoint;
# the engines measured slower than fp32 eager (fp32-compiled, int8-torchao) are measured on the demo model.
#   [PARTS="demo codes"] bash benchmarks/run_deploy.sh [OUT_DIR]     (Multi30k files in ../shared/data/multi30k, or MULTI30K=DIR)
set -euo pipefail
out=${1:-outputs/deploy}
mkdir -p "$out"
train() {  # REUSE=1: a checkpoint already trained in $out/NAME is deployed again, not retrained
  name=$1; shift
  if [ "${REUSE:-0}" = 1 ] && [ -f "$out/$name/checkpoint/model.fedq" ]; then echo "reusing $out/$name/checkpoint"; return; fi
  python -m fedq.train "$@" hydra.run.dir="$out/$name" > "$out/$name.train.log" 2>&1
}
deploy() {  # deploy NAME TABLE ARGS...: NAME's checkpoint, the table and log kept as $out/TABLE.{table.md,deploy.log}
  name=$1 table=$2; shift 2
  python -m fedq.deploy ckpt="$out/$name/checkpoint" "$@" hydra.run.dir="$out/$name/deploy-run" > "$out/$table.deploy.log" 2>&1
  cp "$out/$name/checkpoint/deploy/table.md" "$out/$table.table.md"
}
all="deploy.variants=[fp32,int8,packed,lowrank,lowrank-int8,onnx,onnx-int8,ct2,ct2-int8]"
# the engines measured slower than fp32 eager, on 200 sentences (int8-torchao decodes about 2 sentences/s at batch 32)
slow="deploy.variants=[fp32,fp32-compiled,int8,int8-torchao] deploy.test_sentences=200"

codes="deploy.variants=[fp32,packed,onnx,onnx-int8,onnx-nbits,ct2,ct2-codes,ct2-int8]"

for part in ${PARTS:-demo fourier multi30k multi30k_codes codes}; do
  case $part in
    demo)
      train demo train.max_steps=800
      deploy demo demo "$all"
      deploy demo demo.engines $slow
      deploy demo demo.lowrank-finetuned "deploy.variants=[fp32,lowrank,lowrank-int8]" deploy.finetune_steps=300
      train demo_w8 train.max_steps=800 quant=w8
      deploy demo_w8 demo_w8 "deploy.variants=[fp32,packed,int8,ct2-int8]" ;;
    fourier)
      train fourier train.max_steps=800 model.mixer=fourier
      deploy fourier fourier "deploy.variants=[fp32,int8,packed,lowrank,ct2]" ;;
    multi30k)
      train multi30k +experiment=multi30k_small train.max_minutes=${MULTI30K_MINUTES:-40} data.dir="${MULTI30K:-../shared/data/multi30k}"
      deploy multi30k multi30k "$all"
      deploy multi30k multi30k.lowrank-finetuned "deploy.variants=[fp32,lowrank,lowrank-int8]" deploy.finetune_steps=300 ;;
    multi30k_codes)
      train multi30k_w2 +experiment=multi30k_qat init_from="$out/multi30k/checkpoint" quant=w2 data.dir="${MULTI30K:-../shared/data/multi30k}"
      deploy multi30k_w2 multi30k_w2 "$codes" ;;
    codes)
      for quant in ${CODES:-w2 w8 ternary binary}; do
        train "codes_$quant" train.max_steps=800 quant=$quant
        deploy "codes_$quant" "codes_$quant" "$codes"
        grep -E "^\| (fp32|packed|onnx|ct2)" "$out/codes_$quant.table.md"
      done ;;
    *) echo "unknown part $part (demo, fourier, multi30k, multi30k_codes, codes)"; exit 2 ;;
  esac
done
