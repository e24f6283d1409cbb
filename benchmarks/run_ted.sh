#!/usr/bin/env bash
# Federated adaptation to real TED talks (data=ted: the official IWSLT 2017 de-en XML sets; 66 training talks,
# 6,582 pairs; valid tst2014; test tst2015-2017, talks no client holds), from a pre-trained start:
#   start   the tiny model with 2-bit QAT (seq), trained centrally for START_MINUTES (default 12) on Multi30k (what a
#           server could hold), with a tokenizer trained on Multi30k only, which every client then uses
#   rows    66 clients (partition=natural: one talk each; iid; dirichlet over topics), 10 a round, ROUNDS rounds
#           (default 12) of 8 local steps of 1,024 tokens, 2-bit QAT and uplink, the 4-bit delta downlink; each
#           client keeps its last 20 % of pairs out of training and is scored on them (partition.holdout=0.2):
#           whole     every weight trains and travels (the base's latent weights and steps, lr WHOLE_LR)
#           adapter   rank-ADAPTER_RANK FFA-LoRA adapters over the frozen 2-bit base; only they travel (lr ADAPTER_LR)
#           for seeds SEEDS (default "1 2"), and the topic partition for seed 1
# Results: $OUT/NAME/ (default outputs/ted); the table is python -m fedq.report over the rows ($OUT/report.md).
set -euo pipefail
out=${OUT:-outputs/ted}
mkdir -p "$out"
start=$out/start
if [ ! -f "$start/checkpoint/meta.json" ]; then
  python -m fedq.train data=textdir data.dir="${MULTI30K_DIR:-../shared/data/multi30k}" data.vocab_size=8000 model=tiny \
    quant.bits=2 train.max_minutes="${START_MINUTES:-12}" train.max_steps=100000 train.warmup_steps=400 train.log_every=200 \
    data.max_eval_pairs=500 \
    hydra.run.dir="$start" > "$out/start.log" 2>&1
  grep -E "^test|^valid" "$out/start.log"
fi
ckpt=$(cd "$start/checkpoint" && pwd)
common="data=ted data.dir=${TED_DIRS:-../shared/data/iwslt2017-devsets:../shared/data/iwslt2017-test}
        data.tokenizer=$ckpt/tokenizer.model init_from=$ckpt model=tiny quant.bits=2 clients=66 fl.clients_per_round=10
        fl.rounds=${ROUNDS:-12} fl.local_steps=8 data.max_tokens=1024 fl.warmup_steps=8 fl.eval_every=0
        partition.holdout=0.2"
whole="fl.local_lr=${WHOLE_LR:-5e-4}"
adapter="adapter.rank=${ADAPTER_RANK:-8} fl.local_lr=${ADAPTER_LR:-5e-3}"
declare -A row=(
  [whole_natural]="partition=natural $whole"
  [whole_iid]="partition=iid $whole"
  [adapter_natural]="partition=natural $adapter"
  [adapter_iid]="partition=iid $adapter"
  [adapter_topic]="partition=dirichlet partition.label=topic $adapter"
)
names=()
for seed in ${SEEDS:-1 2}; do
  for kind in ${KINDS:-whole adapter}; do for partition in natural iid; do names+=("${kind}_${partition}_s$seed"); done; done
done
names+=(adapter_topic_s1)
for name in ${ROWS:-${names[@]}}; do
  key=${name%_s*}; seed=${name##*_s}
  if [ ! -f "$out/$name/summary.json" ]; then
    # shellcheck disable=SC2086
    python -m fedq.simulate $common ${row[$key]} seed="$seed" hydra.run.dir="$out/$name" > "$out/$name.log" 2>&1 || echo "$name failed"
  fi
  grep -E "^final|^test BLEU of the start|^BLEU on each" "$out/$name.log" | sed "s/^/$name: /" || true
done
dirs=(); for d in "${names[@]}"; do if [ -f "$out/$d/summary.json" ]; then dirs+=("$out/$d"); fi; done
python -m fedq.report "${dirs[@]}" --out "$out"
