#!/usr/bin/env bash
# Real TED talks as clients (data=ted: the official IWSLT 2017 de-en dev and test sets, 66 training talks,
# 6,582 training pairs; valid tst2014, test tst2015-2017), tiny model trained from scratch, 20 clients,
# 5 per round: IID shards against talks kept whole on one client (natural), and with PARTITIONS including
# "dirichlet" a Dirichlet split over topics (alpha 0.5); each in fp32 both ways and with 2-bit QAT, 2-bit
# uplink and 4-bit delta downlink. ROUNDS rounds (default 20; a round of this corpus takes about 45 s here).
# Results: $OUT/*/ and $OUT/report.md (default outputs/ted).
set -euo pipefail
out=${OUT:-outputs/ted}
data="data=ted data.dir=${TED_DIRS:-../shared/data/iwslt2017-devsets:../shared/data/iwslt2017-test}"
mkdir -p "$out"
run() { name=$1; shift; python -m fedq.simulate clients=20 seed=1 fl.rounds="${ROUNDS:-20}" $data "$@" hydra.run.dir="$out/$name" > "$out/$name.log" 2>&1 || echo "$name failed"; grep -E "^shards|^final" "$out/$name.log"; }
for partition in ${PARTITIONS:-iid natural}; do
  options="partition=$partition"
  [ "$partition" = dirichlet ] && options="$options partition.label=topic"
  run "${partition}_fp32" $options quant=fp32 comm=fp32
  run "${partition}_w2" $options quant.bits=2 comm.downlink.name=uniform comm.downlink.bits=4
done
python -m fedq.report "$out"
