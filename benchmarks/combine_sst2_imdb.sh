#!/usr/bin/env bash
# Combining adapters (issue 17): an SST-2 adapter and an IMDB adapter trained separately on MiniLM-L6, then
# combined with `lorakit merge` (linear 0.5/0.5, linear 1/1, ties 1/1 density 0.5) and evaluated on both tasks.
#
#     bash benchmarks/combine_sst2_imdb.sh train     # the two adapters (side by side, THREADS torch threads each)
#     bash benchmarks/combine_sst2_imdb.sh merge     # the combinations, each twice: SST-2's head and IMDB's head
#     bash benchmarks/combine_sst2_imdb.sh eval-early  # the SST-2 adapter on IMDB (may run while IMDB trains)
#     bash benchmarks/combine_sst2_imdb.sh eval      # the rest: every adapter on SST-2 dev, the others on IMDB
#     bash benchmarks/combine_sst2_imdb.sh report    # the markdown table of benchmarks/results/combine.md
#
# Both adapters: LoRA r 8, alpha 8, all linear layers below the head (the defaults), lr 1e-3 (given explicitly; the
# current default for lora), 1 epoch, seed 42. SST-2: 4,000 GLUE train sentences, first 128 tokens, batch 32.
# IMDB: 2,000 train reviews, first 256 tokens, batch IMDB_BATCH (default 32; benchmarks/results/combine.md's table 2: 16).
# Each adapter trains its own classifier head; a combination keeps one of them (--modules-from 1 = SST-2's,
# 2 = IMDB's) and is evaluated on that head's task. Both tasks use 0 = negative, 1 = positive (tasks/glue.py,
# tasks/imdb.py), so each single adapter is also evaluated across tasks with its own head.
# Evaluation: SST-2 dev (all 872 sentences); IMDB: 1,000 seeded reviews of the validation split carved from train
# (seed 42, the training runs' carve, so disjoint from the 2,000 training reviews). The official IMDB test split
# would need --eval-test, which evaluates the validation split too: twice the time, too much on a loaded 2-core box.
# With no stage given, all stages run in order; a finished step (its output present) is skipped.
# Outputs, logs and timings go to OUT (default runs/combine, gitignored).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}  # from a git worktree without .venv: PYTHON=/work/main/.venv/bin/python
LORAKIT=("$PYTHON" -m lorakit)
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/combine}
THREADS=${THREADS:-1}
IMDB_BATCH=${IMDB_BATCH:-32}  # the IMDB adapter's batch size (16: 125 steps instead of 63)
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=src  # this checkout's lorakit
mkdir -p "$OUT"

# run NAME CMD...: the command, its output in OUT/NAME.log, its wall time appended to OUT/times.tsv
run() {
  local name=$1; shift
  echo "+ $*" | tee "$OUT/$name.log"
  local start=$SECONDS
  "$@" 2>&1 | tee -a "$OUT/$name.log"
  printf '%s\t%s\t%s\n' "$name" "$((SECONDS - start))" "$*" >> "$OUT/times.tsv"
}

SST2=(--task sst2 --data-dir "$DATA/sst2" --max-length 128 --seed 42)
IMDB=(--task imdb --data-dir "$DATA/imdb" --max-length 256 --seed 42)

train() {
  local common=(--model minilm --method lora --lr 1e-3 --epochs 1 --threads "$THREADS")
  [ -f "$OUT/sst2/metrics.json" ] || run train-sst2 "${LORAKIT[@]}" train "${common[@]}" "${SST2[@]}" \
      --max-train-samples 4000 --output "$OUT/sst2" &
  # the training run evaluates 200 held-out reviews only (the full evaluation is the eval stage)
  [ -f "$OUT/imdb/metrics.json" ] || run train-imdb "${LORAKIT[@]}" train "${common[@]}" "${IMDB[@]}" \
      --max-train-samples 2000 --max-eval-samples 200 --batch-size "$IMDB_BATCH" --output "$OUT/imdb" &
  wait
}

merge() {
  local head
  for head in 1 2; do
    local both=(--adapter "$OUT/sst2" --adapter "$OUT/imdb" --modules-from "$head")
    [ -d "$OUT/linear05-h$head" ] || run "merge-linear05-h$head" "${LORAKIT[@]}" merge "${both[@]}" \
        --weights 0.5 0.5 --combination linear --output "$OUT/linear05-h$head"
    [ -d "$OUT/linear11-h$head" ] || run "merge-linear11-h$head" "${LORAKIT[@]}" merge "${both[@]}" \
        --weights 1 1 --combination linear --output "$OUT/linear11-h$head"
    [ -d "$OUT/ties11-h$head" ] || run "merge-ties11-h$head" "${LORAKIT[@]}" merge "${both[@]}" \
        --weights 1 1 --combination ties --density 0.5 --output "$OUT/ties11-h$head"
    # for reference: cat, whose update is exactly ΔW_1 + ΔW_2 (linear's has the cross terms B_1·A_2 + B_2·A_1)
    [ -d "$OUT/cat11-h$head" ] || run "merge-cat11-h$head" "${LORAKIT[@]}" merge "${both[@]}" \
        --weights 1 1 --combination cat --output "$OUT/cat11-h$head"
  done
}

# evaluate NAME TASK_ARRAY_NAME NAME=DIR...: the adapters given on one task, one model load, results in OUT/eval-NAME.json
evaluate() {
  local name=$1; local -n task=$2; shift 2
  local adapters=() a
  for a in "$@"; do adapters+=(--adapter "$a"); done
  [ -f "$OUT/eval-$name.json" ] || run "eval-$name" "${LORAKIT[@]}" eval --threads "$THREADS" "${adapters[@]}" \
      "${task[@]}" --output "$OUT/eval-$name.json"
}

# SST-2: every sentence of dev; IMDB: 1,000 seeded reviews of the validation split carved from train
SST2_EVAL=("${SST2[@]}" --max-eval-samples all)
IMDB_EVAL=("${IMDB[@]}" --max-eval-samples 1000)

# the SST-2 adapter on IMDB: it needs no IMDB adapter, so it may run while the IMDB adapter trains
eval_early() {
  evaluate imdb-sst2adapter IMDB_EVAL "sst2=$OUT/sst2"
}

# the combinations keeping SST-2's head on SST-2, those keeping IMDB's head on IMDB
eval_rest() {
  evaluate sst2 SST2_EVAL "sst2=$OUT/sst2" "imdb=$OUT/imdb" "linear05=$OUT/linear05-h1" \
      "linear11=$OUT/linear11-h1" "ties11=$OUT/ties11-h1" "cat11=$OUT/cat11-h1" &
  evaluate imdb IMDB_EVAL "imdb=$OUT/imdb" "linear05=$OUT/linear05-h2" "linear11=$OUT/linear11-h2" \
      "ties11=$OUT/ties11-h2" "cat11=$OUT/cat11-h2" &
  wait
}

report() {
  "$PYTHON" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def results(name):
    record = json.loads((out / f"eval-{name}.json").read_text())
    return record["adapters"] if "adapters" in record else {None: record["eval"]}
sst2 = {k: v["validation"]["accuracy"] for k, v in results("sst2").items()}
imdb = {k: v["validation"]["accuracy"] for k, v in results("imdb").items()}
imdb["sst2"] = results("imdb-sst2adapter")[None]["validation"]["accuracy"]
rows = [("SST-2 adapter", "sst2"), ("IMDB adapter", "imdb"), ("linear 0.5 / 0.5", "linear05"),
        ("linear 1 / 1", "linear11"), ("ties 1 / 1, density 0.5", "ties11"), ("cat 1 / 1 (reference)", "cat11")]
print("| adapter | SST-2 dev accuracy (872) | vs SST-2 adapter | IMDB accuracy (1,000) | vs IMDB adapter |")
print("|---|---:|---:|---:|---:|")
for title, key in rows:
    s, i = sst2[key], imdb[key]
    print(f"| {title} | {100 * s:.2f}% | {100 * (s - sst2['sst2']):+.2f} | {100 * i:.2f}% | {100 * (i - imdb['imdb']):+.2f} |")
EOF
}

for stage in "${@:-train merge eval-early eval report}"; do
  for s in $stage; do
    case $s in
      train) train ;; merge) merge ;; eval-early) eval_early ;; eval) eval_rest ;; report) report ;;
      *) echo "unknown stage $s (train, merge, eval-early, eval, report)" >&2; exit 2 ;;
    esac
  done
done
