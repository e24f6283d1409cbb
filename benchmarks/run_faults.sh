#!/usr/bin/env bash
# Faults on the main job (built-in corpus, tiny model, 20 clients, 2-bit QAT + 2-bit uplink, 20 rounds),
# 10 clients sampled per round, on a mixed fleet (30% flagship phones on Wi-Fi, 50% mid-range phones on
# 4G, 20% boards on a slow link), one seed:
#   clean    no faults (FedAvg): the reference
#   defended 30% dropout, a 120 s deadline that the slow boards miss (about 275 s of their round;
#            a mid-range phone needs about 80 s), one sign-flip attacker,
#            update checks (norm <= 3x the round's median) and FedTrimmedAvg (beta 0.2)
#   attacked the same faults and attacker, plain FedAvg, no checks
# then simulated hours to a valid BLEU on a fleet of mid-range 4G phones for fp32, 2-bit and 2-bit + sign
# (python -m fedq.report $OUT/tta_* --target-bleu 80). The downlink is the whole model at fp32 (the default when
# these were measured).
# Results: $OUT/*/ (default outputs/faults).
set -euo pipefail
out=${OUT:-outputs/faults}
common="clients=20 quant.bits=2 fl.clients_per_round=10 seed=1 comm.downlink.name=fp32"
faults="fl.devices=mixed fl.round_deadline=120 fl.dropout_rate=0.3 fl.attack=sign_flip fl.attackers=0.05 fl.min_replies=2"
run() { name=$1; shift; python -m fedq.simulate "$@" hydra.run.dir="$out/$name" > "$out/$name.log" 2>&1 || echo "$name failed"; tail -3 "$out/$name.log"; }
mkdir -p "$out"
run clean $common fl.devices=mixed
run defended $common $faults fl.strategy=fedtrimmedavg fl.trim_beta=0.2 fl.max_update_norm_ratio=3
run attacked $common $faults fl.strategy=fedavg
tta="fl.devices=midrange-4g fl.eval_every=1 data.max_eval_pairs=300 comm.downlink.name=fp32"
run tta_fp32 clients=20 $tta quant=fp32 comm=fp32
run tta_w2 clients=20 $tta quant.bits=2
run tta_w2_sign clients=20 $tta quant.bits=2 comm=sign
