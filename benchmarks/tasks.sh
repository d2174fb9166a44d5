#!/usr/bin/env bash
# The real runs behind benchmarks/results/accuracy.md: MiniLM-L6 on GLUE / IMDB / SQuAD and SmolLM2-135M on instructions.
#
#     bash benchmarks/tasks.sh sst2        # SST-2, full train set, 1 epoch: head, last-layers, lora (all-linear), full, lora q+v
#     bash benchmarks/tasks.sh glue imdb   # CoLA, STS-B, MRPC, RTE; IMDB (reduced): LoRA all-linear
#     bash benchmarks/tasks.sh squad       # SQuAD v1.1 dev split by article: head, lora, full
#     bash benchmarks/tasks.sh instruct    # SmolLM2-135M-Instruct on Code Alpaca records: lora, qlora
#     bash benchmarks/tasks.sh padding     # examples/s: length-grouped dynamic padding vs padding to 128 tokens
#     bash benchmarks/tasks.sh report      # the markdown tables of benchmarks/results/accuracy.md from the finished runs
#
# Every suite is `lorakit compare` (one process per method, each with its own peak memory) into runs/bench/<name>/,
# which writes comparison.md / .csv / .png there; a finished run with the same settings is reused. THREADS (default 1)
# is the torch threads per training process: two suites side by side on a 2-core machine use one each.
# Learning rates: LoRA runs pass --lr "$LORA_LR" (1e-3, the LoRA default, stated so the tables keep their meaning),
# other methods use their default (lorakit train --help): head 1e-3, last-layers 5e-4, full 5e-5.
# LoRA is r 8, alpha 8, all-linear unless said.
set -euo pipefail
cd "$(dirname "$0")/.."
LORAKIT=${LORAKIT:-.venv/bin/lorakit}
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/bench}
THREADS=${THREADS:-1}
LORA_LR=1e-3
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
compare() { "$LORAKIT" compare --threads "$THREADS" --seed 0 "$@"; }

sst2() {
  local common=(--model minilm --task sst2 --data-dir "$DATA/sst2" --epochs 1 --max-length 64)
  compare "${common[@]}" --methods head last-layers full --output "$OUT/sst2"
  compare "${common[@]}" --methods lora --lr "$LORA_LR" --output "$OUT/sst2"
  compare "${common[@]}" --methods lora --lr "$LORA_LR" --lora-query --lora-value --output "$OUT/sst2-qv"
  # all-linear LoRA with the pooler and classifier trained in full; and with alpha 16 (alpha / r = 2)
  compare "${common[@]}" --methods lora+head --lr "$LORA_LR" --output "$OUT/sst2-lora-head"
  compare "${common[@]}" --methods lora --lr "$LORA_LR" --lora-alpha 16 --output "$OUT/sst2-alpha16"
  # PEFT's kaiming-uniform init of A (about 7x smaller than N(0, 1/r) here) at lr 1e-3, seeds 0, 1 and 2
  compare "${common[@]}" --methods lora --lr 1e-3 --lora-init kaiming --output "$OUT/sst2-kaiming"
  for seed in 1 2; do
    compare "${common[@]}" --seed "$seed" --methods lora --lr 1e-3 --lora-init kaiming --output "$OUT/sst2-kaiming-seed$seed"
  done
  compare "${common[@]}" --methods lora+head --lr 3e-4 --output "$OUT/sst2-lora-head-lr3e-4"
  # all-linear LoRA at lower learning rates than 1e-3; lr 3e-4 and full again with seed 1
  for lr in 5e-4 3e-4 2e-4; do
    compare "${common[@]}" --methods lora --lr "$lr" --output "$OUT/sst2-lr$lr"
  done
  for seed in 1 2; do
    compare "${common[@]}" --seed "$seed" --methods lora --lr 3e-4 --output "$OUT/sst2-lr3e-4-seed$seed"
  done
  # rank 16 (alpha 16: the same alpha / r = 1) at lr 3e-4
  compare "${common[@]}" --methods lora --lr 3e-4 --lora-r 16 --lora-alpha 16 --output "$OUT/sst2-r16-lr3e-4"
  for seed in 1 2; do
    compare "${common[@]}" --seed "$seed" --methods full --output "$OUT/sst2-full-seed$seed"
  done
  # LoRA+ (B at 8x the learning rate of A), seeds 0 and 1
  for seed in 0 1; do
    compare "${common[@]}" --seed "$seed" --methods lora --lr 2e-4 --loraplus-ratio 8 --output "$OUT/sst2-loraplus-seed$seed"
  done
}

glue() {
  local cola=(--model minilm --task cola --data-dir "$DATA/cola")
  compare "${cola[@]}" --epochs 2 --methods full --output "$OUT/cola"
  compare "${cola[@]}" --epochs 2 --methods lora --lr "$LORA_LR" --output "$OUT/cola"
  compare "${cola[@]}" --epochs 4 --methods lora --lr "$LORA_LR" --output "$OUT/cola-4ep"
  # CoLA: LoRA at lr 1e-3 predicts the majority class; twice that learning rate with alpha 8 and 16, 4 epochs
  "$LORAKIT" search "${cola[@]}" --epochs 4 --method lora \
    --space lr=2e-3 --space lora_alpha=8,16 --workers 2 --threads "$THREADS" --output "$OUT/cola-search"
  # 3 epochs at lower learning rates: LoRA at 5e-4 and 3e-4, LoRA with the pooler and classifier trained in full
  # (lora+head) at 3e-4, and LoRA with PEFT's kaiming init of A at 1e-3
  for lr in 5e-4 3e-4; do
    compare "${cola[@]}" --epochs 3 --methods lora --lr "$lr" --output "$OUT/cola-lr$lr"
  done
  compare "${cola[@]}" --epochs 3 --methods lora --lr 1e-3 --lora-init kaiming --output "$OUT/cola-kaiming"
  compare "${cola[@]}" --epochs 3 --methods lora+head --lr 3e-4 --output "$OUT/cola-lora-head-lr3e-4"
  compare --model minilm --task stsb --data-dir "$DATA/sts_b" --epochs 2 --methods lora --lr "$LORA_LR" --output "$OUT/stsb"
  compare --model minilm --task mrpc --data-dir "$DATA/mrpc" --epochs 2 --methods lora --lr "$LORA_LR" --output "$OUT/mrpc"
  compare --model minilm --task rte --data-dir "$DATA/rte_superglue" --epochs 2 --methods lora --lr "$LORA_LR" --output "$OUT/rte"
}

imdb() {
  # reduced: 2,000 training reviews; evaluated on 1,000 reviews of the validation split carved from train and on
  # 1,000 of the official test split (seeded samples); the first 256 tokens of each review
  compare --model minilm --task imdb --data-dir "$DATA/imdb" --epochs 1 --max-length 256 --eval-test \
    --max-train-samples 2000 --max-eval-samples 1000 --methods lora --lr "$LORA_LR" --output "$OUT/imdb"
}

squad() {
  # ../shared/data has only the dev set: half of its articles train, the other half evaluate (--split-from-eval);
  # 2,000 training questions and 500 evaluation questions of those halves (seeded samples)
  local squad=(--model minilm --task squad --data-dir "$DATA/squad_v1.1" --split-from-eval 0.5 --max-length 256
               --max-train-samples 2000 --max-eval-samples 500 --epochs 1 --batch-size 16 --output "$OUT/squad")
  compare "${squad[@]}" --methods head full
  compare "${squad[@]}" --methods lora --lr "$LORA_LR"
}

instruct() {
  # Code Alpaca: 300 training records, 50 held-out records carved from the same file (seeded, disjoint)
  compare --model smollm2 --task instruct --data-dir "$DATA/code_alpaca_2k" --max-train-samples 300 \
    --max-eval-samples 50 --max-length 256 --epochs 1 --batch-size 8 --methods lora qlora --lr "$LORA_LR" --output "$OUT/instruct"
  # the saved adapters reload and give the same held-out loss
  for method in lora qlora; do
    "$LORAKIT" eval --adapter "$OUT/instruct/$method" --output "$OUT/instruct/$method/reloaded_eval.json"
  done
}

padding() {
  .venv/bin/python benchmarks/padding.py --threads "$THREADS"
}

report() {
  .venv/bin/python benchmarks/collect.py --runs "$OUT"
}

for suite in "${@:-sst2}"; do
  "$suite"
done
