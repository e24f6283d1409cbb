#!/usr/bin/env bash
# Federated adaptation to real TED talks (data=ted: the official IWSLT 2017 de-en XML sets; valid tst2014, test
# tst2015-2017, talks no client holds), from a pre-trained start:
#   start   the tiny model with 2-bit QAT (seq), trained centrally for START_MINUTES (default 15) on what a server
#           could hold: Multi30k and the talks of SERVER_SETS (default tst2011 tst2012: 31 talks), with a tokenizer
#           trained on that text, which every client then uses
#   rows    the talks of CLIENT_SETS (default dev2010, tst2010, tst2013: 35 talks) among CLIENTS clients (default 35;
#           partition=natural: one talk each; iid; dirichlet over topics), 10 a round, ROUNDS rounds (default 12) of 8
#           local steps of 1,024 tokens, 2-bit QAT and uplink, the 4-bit delta downlink; each client keeps its last
#           20 % of pairs out of training and is scored on them (partition.holdout=0.2):
#           whole     every weight trains and travels (the base's latent weights and steps, lr WHOLE_LR)
#           adapter   rank-ADAPTER_RANK FFA-LoRA adapters over the frozen 2-bit base; only they travel (lr ADAPTER_LR)
#           for seeds SEEDS (default "1 2"); the topic partition with adapters for SEEDS, with whole updates for seed 1;
#           after the last round each client trains PERSONAL_STEPS (default 8) more local steps on its own pairs and is
#           scored on its held-out pairs again (fl.personal_steps: its personal model, kept on the device)
# START_STEPS trains the start for that many steps instead of START_MINUTES (the same start again: its meta.json
# says how many steps a timed start took).
# Results: $OUT/NAME/ (default outputs/ted); the table is python -m fedq.report over the rows ($OUT/report.md).
set -euo pipefail
out=${OUT:-outputs/ted}
ted_dirs=${TED_DIRS:-../shared/data/iwslt2017-devsets:../shared/data/iwslt2017-test}
server_sets=${SERVER_SETS:-tst2011 tst2012}
client_sets=${CLIENT_SETS:-dev2010,tst2010,tst2013}
mkdir -p "$out"
start=$out/start
start_minutes=${START_MINUTES:-15}; if [ -n "${START_STEPS:-}" ]; then start_minutes=0; fi
if [ ! -f "$start/checkpoint/meta.json" ]; then
  # What the server holds: Multi30k's training pairs and the talks of SERVER_SETS (repeated TED_REPEAT times, default
  # 4); valid and test are Multi30k's. No client holds those talks; they are not in valid (tst2014) or test.
  python - "$out/server_corpus" "${MULTI30K_DIR:-../shared/data/multi30k}" "$ted_dirs" "${TED_REPEAT:-4}" $server_sets <<'PY'
import shutil, sys
from pathlib import Path
from fedq.data.tedxml import load_ted_xml
from fedq.data.textdir import read_parallel
folder, multi30k, dirs, repeat, sets = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5:]
folder.mkdir(parents=True, exist_ok=True)
talks = load_ted_xml(dirs, "de", "en", sets, [sets[0]], [sets[0]]).train
pairs = read_parallel(multi30k, "train", "de", "en") + talks * repeat
for side, lang in enumerate(("de", "en")):
    (folder / f"train.{lang}").write_text("".join(pair[side] + "\n" for pair in pairs))
    for split in ("val", "test_2016_flickr"):
        shutil.copy(multi30k / f"{split}.{lang}.gz", folder / f"{split}.{lang}.gz")
print(f"server corpus: {len(pairs) - len(talks) * repeat} Multi30k pairs + {len(talks)} TED pairs x {repeat} ({' '.join(sets)})")
PY
  python -m fedq.train data=textdir data.dir="$out/server_corpus" data.vocab_size=8000 model=tiny quant.bits=2 \
    train.max_minutes="$start_minutes" train.max_steps="${START_STEPS:-100000}" \
    train.warmup_steps=400 train.log_every=200 \
    data.max_eval_pairs=500 hydra.run.dir="$start" > "$out/start.log" 2>&1
  grep -E "^test|^valid" "$out/start.log"
fi
ckpt=$(cd "$start/checkpoint" && pwd)
common="data=ted data.dir=$ted_dirs data.train_splits=[$client_sets] data.tokenizer=$ckpt/tokenizer.model init_from=$ckpt
        model=tiny quant.bits=2 clients=${CLIENTS:-35} fl.clients_per_round=10 fl.rounds=${ROUNDS:-12} fl.local_steps=8
        data.max_tokens=1024 fl.warmup_steps=8 fl.eval_every=0 partition.holdout=0.2 fl.personal_steps=${PERSONAL_STEPS:-8}"
whole="fl.local_lr=${WHOLE_LR:-5e-4}"
adapter="adapter.rank=${ADAPTER_RANK:-8} fl.local_lr=${ADAPTER_LR:-5e-3}"
declare -A row=(
  [whole_natural]="partition=natural $whole"
  [whole_iid]="partition=iid $whole"
  [adapter_natural]="partition=natural $adapter"
  [adapter_iid]="partition=iid $adapter"
  [whole_topic]="partition=dirichlet partition.label=topic $whole"
  [adapter_topic]="partition=dirichlet partition.label=topic $adapter"
)
names=()
for seed in ${SEEDS:-1 2}; do
  for kind in ${KINDS:-whole adapter}; do for partition in natural iid; do names+=("${kind}_${partition}_s$seed"); done; done
done
for seed in ${SEEDS:-1 2}; do names+=("adapter_topic_s$seed"); done
names+=(whole_topic_s1)
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
