#!/usr/bin/env bash
# Faults and attacks on the main job's model and QAT (built-in corpus, tiny model, 2-bit QAT and uplink, the 4-bit
# delta downlink, 20 clients, 20 rounds, seed 1), 10 clients per round, on the mixed fleet (30 % flagship phones on
# Wi-Fi, 50 % mid-range phones on 4G, 20 % boards on a slow link: every client has a virtual clock), in three tables:
#   late work   clean (no faults) against 30 % dropout + a 120 s deadline that the slow boards miss, with the round
#               as it is (deadline), with over-selection (16 sampled, the round closes at the 10th arrival) and
#               asynchronous buffered aggregation (FedBuff: 10 arrivals a round, 20 in flight, staleness-weighted)
#   attacks     4 of the 20 clients colluding (fl.attackers=0.2): ALIE (Baruch et al. 2019) against FedAvg and
#               Flower's FedTrimmedAvg, FedMedian and Krum, and fedq's defences (centered clipping, nearest-neighbour
#               mixing, bucketing + FedMedian); then inner-product manipulation and sign flip against FedAvg and
#               centered clipping; no dropouts, no deadline
#   both        the faults and ALIE together, with over-selection and centered clipping
# ROWS picks rows (default: all, in this order). Results: $OUT/NAME/ (default outputs/faults); the tables are
# python -m fedq.report over each table's rows, printed at the end and written to $OUT/tables/{late_work,attacks,both}/.
set -euo pipefail
out=${OUT:-outputs/faults}
mkdir -p "$out"
common="clients=20 quant.bits=2 fl.clients_per_round=10 seed=1 fl.devices=mixed"
faults="fl.dropout_rate=0.3 fl.round_deadline=120 fl.min_replies=2"
declare -A row=(
  [clean]=""
  [faults_deadline]="$faults"
  [faults_overselect]="$faults fl.overselect=0.6"
  [faults_async]="fl.dropout_rate=0.3 fl.min_replies=2 fl.mode=async"
  [alie_fedavg]="fl.attack=alie fl.attackers=0.2"
  [alie_cclip]="fl.attack=alie fl.attackers=0.2 fl.defence=cclip"
  [alie_nnm]="fl.attack=alie fl.attackers=0.2 fl.defence=nnm fl.byzantine=2"
  [alie_trimmedavg]="fl.attack=alie fl.attackers=0.2 fl.strategy=fedtrimmedavg fl.trim_beta=0.2"
  [alie_median]="fl.attack=alie fl.attackers=0.2 fl.strategy=fedmedian"
  [alie_krum]="fl.attack=alie fl.attackers=0.2 fl.strategy=krum fl.byzantine=2"
  [alie_bucketing]="fl.attack=alie fl.attackers=0.2 fl.defence=bucketing fl.strategy=fedmedian"
  [ipm_fedavg]="fl.attack=ipm fl.attackers=0.2"
  [ipm_cclip]="fl.attack=ipm fl.attackers=0.2 fl.defence=cclip"
  [signflip_fedavg]="fl.attack=sign_flip fl.attackers=0.2"
  [signflip_cclip]="fl.attack=sign_flip fl.attackers=0.2 fl.defence=cclip"
  [both]="$faults fl.overselect=0.6 fl.attack=alie fl.attackers=0.2 fl.defence=cclip"
)
order="clean faults_deadline faults_overselect faults_async alie_fedavg alie_cclip alie_nnm alie_trimmedavg alie_median
       alie_krum alie_bucketing ipm_fedavg ipm_cclip signflip_fedavg signflip_cclip both"
for name in ${ROWS:-$order}; do
  # shellcheck disable=SC2086
  python -m fedq.simulate $common ${row[$name]} hydra.run.dir="$out/$name" > "$out/$name.log" 2>&1 || echo "$name failed"
  grep -E "^traffic|^final" "$out/$name.log" || true
done
table() {  # table NAME ROW...: the finished rows' table, written to $out/tables/NAME/report.md (not a row's folder)
  name=$1; shift; dirs=()
  for d in "$@"; do if [ -f "$out/$d/summary.json" ]; then dirs+=("$out/$d"); fi; done
  if [ ${#dirs[@]} -gt 0 ]; then python -m fedq.report "${dirs[@]}" --out "$out/tables/$name"; fi
}
table late_work clean faults_deadline faults_overselect faults_async
table attacks clean alie_fedavg alie_trimmedavg alie_median alie_krum alie_cclip alie_nnm alie_bucketing ipm_fedavg ipm_cclip \
  signflip_fedavg signflip_cclip
table both clean faults_overselect alie_cclip both
