"""The parsers of `lorakit eval`, `predict`, `params` and `export` (train's, merge's, search's and compare's are in
flags.py, merge.py, search.py and compare.py); cli.main ties each to the command it runs."""
from __future__ import annotations

import argparse

from lorakit.training.config import TrainConfig
from lorakit.cli.flags import add_lora_flags, add_setting_flags, command_parser, config_flag, trained_model_flags

EVAL_DESCRIPTION = """\
Evaluate on the task's evaluation splits. Task, data and max length default to the recorded run's settings.

examples:
  lorakit eval --adapter runs/sst2-lora
  lorakit eval --model runs/sst2-merged --max-eval-samples 200
  lorakit eval --adapter runs/sst2-lora --max-eval-samples all"""

PREDICT_DESCRIPTION = """\
Classification: one line per text: label, probability (or score), text.
Question answering: the answer, one line per input. Instruction tuning: each answer as generated, a blank line
between answers (streamed on a terminal). --model alone (no --adapter, no --task): a causal LM such as smollm2
follows prompts (task instruct), greedy unless --temperature; another model classifies (task sst2).

examples:
  lorakit predict --adapter runs/sst2-lora "a gripping film" "flat and dull"
  lorakit predict --adapter runs/mrpc-lora --file pairs.txt  # TAB-separated
  lorakit predict --adapter runs/squad --question "Who wrote it?" --context "It was written by Ann."
  lorakit predict --adapter runs/instruct --prompt "Name three colours."
  lorakit predict --model smollm2 --prompt "Name three colours." --max-new-tokens 32
  lorakit predict --adapter runs/instruct --prompt "Write a haiku." --temperature 0.7 --top-p 0.9 --seed 1"""

EXPORT_DESCRIPTION = """\
GGUF for llama.cpp, Ollama and LM Studio (Llama-family causal LMs).

examples:
  lorakit export --adapter runs/instruct --gguf merged.gguf --gguf-type q8_0
  lorakit export --adapter runs/instruct --gguf adapter.gguf --lora-only"""



def add_eval_parser(sub) -> argparse.ArgumentParser:
    p = command_parser(sub, "eval", "evaluate a trained adapter or a (merged) model", EVAL_DESCRIPTION)
    trained_model_flags(p, several=True)
    add_setting_flags(p, ("data",), recorded=True)
    add_setting_flags(p, ("runtime",))
    p.add_argument("--output", metavar="FILE", help="also write the metrics as JSON to FILE")
    return p


def add_predict_parser(sub) -> argparse.ArgumentParser:
    p = command_parser(sub, "predict", "classify texts, answer questions or follow prompts", PREDICT_DESCRIPTION)
    trained_model_flags(p, several=True)
    p.add_argument("texts", nargs="*", help="texts to classify (sentence pairs: 'first<TAB>second'; "
                   "QA: 'question<TAB>context'; instruct: prompts)")
    p.add_argument("--file", metavar="FILE", help="one text a line")
    p.add_argument("--question", help="question answering: the question (with --context)")
    p.add_argument("--context", help="question answering: the passage that holds the answer")
    p.add_argument("--prompt", action="append", metavar="TEXT", help="instruction tuning: a prompt to answer "
                   "(repeatable); answers are printed as generated, a blank line between them")
    p.add_argument("--max-new-tokens", type=int, metavar="N", help="instruction tuning: tokens to generate at most "
                                                                   "(default: 128)")
    p.add_argument("--temperature", type=float, metavar="T", help="instruction tuning: 0 = greedy (default), "
                                                                  "> 0 samples (with --seed)")
    p.add_argument("--top-p", type=float, metavar="P", help="instruction tuning, with --temperature: nucleus "
                                                            "sampling over the top tokens of mass P (default: 1)")
    p.add_argument("--task", help="the task (default: the recorded one)")
    p.add_argument("--max-length", type=int, metavar="T", help="tokens per text (default: the recorded one)")
    add_setting_flags(p, ("runtime",))
    return p


def add_params_parser(sub, defaults: dict) -> argparse.ArgumentParser:
    p = command_parser(sub, "params", "the per-module trainable-parameter table for a model and LoRA settings")
    config_flag(p)
    p.add_argument("--model", default=TrainConfig.model, help=f"hub id, local directory, or 'minilm' (default: "
                                                                 f"{TrainConfig.model})")
    p.add_argument("--num-labels", type=int, default=2, help="outputs of the classification head (default: 2)")
    p.add_argument("--all", action="store_true", help="list frozen parameters too")
    add_lora_flags(p)
    p.set_defaults(**defaults)
    return p


def add_export_parser(sub) -> argparse.ArgumentParser:
    p = command_parser(sub, "export", "write the adapter as GGUF for llama.cpp / Ollama: merged, or --lora-only",
                       EXPORT_DESCRIPTION)
    p.add_argument("--adapter", required=True, help="a `lorakit train` output or an adapter directory")
    p.add_argument("--model", help="the base model (default: the recorded one)")
    p.add_argument("--gguf", required=True, metavar="OUT.gguf", help="the GGUF file to write")
    p.add_argument("--gguf-type", default="f16", metavar="TYPE", help="merged model: f16 (default), q8_0, f32, or "
                   "base (each tensor in the base GGUF file's own type, e.g. SmolLM2's Q4_1)")
    p.add_argument("--lora-only", action="store_true", help="write the adapter alone as a llama.cpp LoRA file")
    p.add_argument("--base-gguf", metavar="FILE", help="the base model's GGUF file: its tokenizer and chat template "
                   "are copied (default: SmolLM2's packaged file for the smollm2 base, else built from the tokenizer)")
    return p
