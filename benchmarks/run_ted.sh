#!/usr/bin/env bash
# Real TED talks as clients (data=ted: the official IWSLT 2017 de-en dev and test sets, 66 training talks,
# 6,582 training pairs; valid tst2014, test tst2015-2017), tiny model trained from scratch, 20 clients,
# 5 per round, 20 rounds: IID shards against talks kept whole on one client (natural) and a Dirichlet
# split over topics (alpha 0.5), each in fp32 both ways and with 2-bit QAT, 2-bit uplink and 4-bit
# delta downlink. Results: $OUT/*/ and $OUT/report.md (default outputs/ted).
set -euo pipefail
out=${OUT:-outputs/ted}
data="data=ted data.dir=${TED_DIRS:-../shared/data/iwslt2017-devsets:../shared/data/iwslt2017-test}"
mkdir -p "$out"
run() { name=$1; shift; python -m fedq.simulate clients=20 seed=1 $data "$@" hydra.run.dir="$out/$name" > "$out/$name.log" 2>&1 || echo "$name failed"; grep -E "^final" "$out/$name.log"; }
for partition in iid natural "dirichlet partition.label=topic"; do
  name=${partition%% *}
  run "${name}_fp32" partition=$partition quant=fp32 comm=fp32
  run "${name}_w2" partition=$partition quant.bits=2 comm.downlink.name=uniform comm.downlink.bits=4
done
python -m fedq.report "$out"
