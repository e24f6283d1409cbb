#!/usr/bin/env bash
# The compression frontier of the main job (built-in corpus, tiny model, 2-bit QAT, 20 clients, 5 per round,
# 20 rounds, seed 1), every scheme side by side with fp32 both ways: which schemes keep BLEU, at how many bytes
# (up, down, total), and how many MB each needs to first reach valid BLEU 80 (every 2nd round scored).
# SCHEMES picks rows (default: the main setting's; mask50_grid1.6_corr and mask20_grid1.6_corr_carry0 are for
# PARTICIPATION=rare, which runs the rows at 1 % participation: 200 clients, 2 per round). Results: $OUT/NAME/ (default outputs/frontier[_rare]);
# the table is python -m fedq.report $OUT --target-bleu 80.
set -euo pipefail
if [ "${PARTICIPATION:-}" = rare ]; then
  base="clients=200 fl.clients_per_round=2"; out=${OUT:-outputs/frontier_rare}
else
  base="clients=20"; out=${OUT:-outputs/frontier}
fi
mkdir -p "$out"
declare -A scheme=(
  [fp32]="comm=fp32"
  [uniform2]=""  # the default: python -m fedq.simulate clients=20 quant.bits=2
  [uniform2_ans]="comm.uplink.entropy_coding=true comm.downlink.entropy_coding=true"
  [grid4]="comm.uplink.name=grid comm.uplink.step=4"
  [grid8_corr]="comm.uplink.name=grid comm.uplink.step=8 comm.uplink.correlated=true"
  [grid12_corr]="comm.uplink.name=grid comm.uplink.step=12 comm.uplink.correlated=true"
  [grid16_corr]="comm.uplink.name=grid comm.uplink.step=16 comm.uplink.correlated=true"
  [grid4_down_grid1]="comm.uplink.name=grid comm.uplink.step=4 comm.downlink.name=grid comm.downlink.step=1"
  [grid8_corr_down_grid1.5]="comm.uplink.name=grid comm.uplink.step=8 comm.uplink.correlated=true comm.downlink.name=grid comm.downlink.step=1.5"
  [mask24_ans]="comm.uplink.name=mask comm.uplink.density=0.24 comm.uplink.entropy_coding=true"
  [mask24_ans_corr]="comm.uplink.name=mask comm.uplink.density=0.24 comm.uplink.entropy_coding=true comm.uplink.correlated=true"
  [mask24_ans_corr_m0.5]="comm.uplink.name=mask comm.uplink.density=0.24 comm.uplink.entropy_coding=true comm.uplink.correlated=true fl.strategy=fedavgm fl.server_momentum=0.5"
  [mask24_ans_corr_m0.7]="comm.uplink.name=mask comm.uplink.density=0.24 comm.uplink.entropy_coding=true comm.uplink.correlated=true fl.strategy=fedavgm fl.server_momentum=0.7"
  [mask20_grid1.6_corr]="comm.uplink.name=mask comm.uplink.density=0.2 comm.uplink.step=1.6 comm.uplink.correlated=true"
  [mask20_grid1.6_corr_m0.5]="comm.uplink.name=mask comm.uplink.density=0.2 comm.uplink.step=1.6 comm.uplink.correlated=true fl.strategy=fedavgm fl.server_momentum=0.5"
  [mask50_grid1.6_corr]="comm.uplink.name=mask comm.uplink.density=0.5 comm.uplink.step=1.6 comm.uplink.correlated=true"
  [mask20_grid1.6_corr_carry0]="comm.uplink.name=mask comm.uplink.density=0.2 comm.uplink.step=1.6 comm.uplink.correlated=true comm.uplink.carry=0"
  [mask20_grid1.6_corr_down_grid1.5]="comm.uplink.name=mask comm.uplink.density=0.2 comm.uplink.step=1.6 comm.uplink.correlated=true comm.downlink.name=grid comm.downlink.step=1.5"
  [uniform2_m0.5]="fl.strategy=fedavgm fl.server_momentum=0.5"
)
for name in ${SCHEMES:-fp32 uniform2 uniform2_ans grid4 grid8_corr grid12_corr grid16_corr grid4_down_grid1 grid8_corr_down_grid1.5
            mask24_ans mask24_ans_corr mask24_ans_corr_m0.5 mask24_ans_corr_m0.7 mask20_grid1.6_corr mask20_grid1.6_corr_m0.5
            uniform2_m0.5 mask20_grid1.6_corr_down_grid1.5}; do
  # shellcheck disable=SC2086
  python -m fedq.simulate $base quant.bits=2 seed=1 fl.eval_every=2 ${scheme[$name]} hydra.run.dir="$out/$name" \
    > "$out/$name.log" 2>&1 || echo "$name failed"
  grep -E "^traffic|^final" "$out/$name.log" || true
done
python -m fedq.report "$out" --target-bleu 80
