"""The flags of the `lorakit` commands and how given flags become settings.

    parser = train_flags_parser()          # `lorakit train`'s flags, which search and compare take over
    cfg = train_config_from_args(args)     # the --config file, then the flags given, as a TrainConfig

The flag groups (data, runtime, LoRA, the adapter or model to load) are shared by train / eval / merge / predict /
params. Every option of train / eval / merge / predict, and every LoRA flag, defaults to None, so the flags given on
the command line are told apart from the defaults and override the --config file; the defaults themselves are
TrainConfig's, quoted in --help, never repeated here.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from ..config import FAMILY_INITS, INITS, is_family_init
from ..training.config import DEFAULT_LR, INSTRUCT_EVAL_SAMPLES, METHODS, PRECISIONS, REPORTERS, TrainConfig
from ..validation import check_flag_contradictions

TOGGLES = ("query", "key", "value", "projection", "mlp", "head")
D = TrainConfig()  # defaults, quoted in --help
RAW = argparse.RawDescriptionHelpFormatter
TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))
TARGET_KEYS = ("target_modules", "target_regex", *(f"lora_{t}" for t in TOGGLES))


def add_lora_flags(parser: argparse.ArgumentParser) -> None:
    """The LoRA flags of train / search / compare / params. None = not given: the TrainConfig default applies (the
    one set of LoRA defaults of every command; --help quotes it)."""
    targets = D.target_modules if isinstance(D.target_modules, str) else " ".join(D.target_modules)
    g = parser.add_argument_group("LoRA")
    g.add_argument("--lora-r", type=int, help=f"rank r of the update B·A (default: {D.lora_r})")
    g.add_argument("--lora-alpha", type=float,
                   help=f"alpha; the update is scaled by alpha/r (default: {D.lora_alpha:g})")
    g.add_argument("--lora-dropout", type=float, help=f"dropout on the LoRA branch input (default: {D.lora_dropout:g})")
    for t in TOGGLES:
        g.add_argument(f"--lora-{t}", action="store_true", default=None,
                       help=f"adapt the {t} layers (resolved per architecture)")
    g.add_argument("--target-modules", nargs="+", metavar="NAME",
                   help=f"module names ('.name' suffix match), or 'all-linear'; overrides the toggles (default: "
                        f"{targets})")
    g.add_argument("--target-regex", metavar="REGEX", help="one regex that must match the whole module path")
    g.add_argument("--use-rslora", action="store_true", default=None, help="scale by alpha/sqrt(r) instead of alpha/r")
    g.add_argument("--lora-init", type=_lora_init, metavar="INIT",
                   help=f"kaiming (PEFT's) | gaussian (PEFT's, std 1/r) | normal_1_over_r (std 1/sqrt(r)): A random, "
                        f"B = 0; pissa | pissa_niter_<N> | olora: A, B from W0, W0 keeps the residual; loftq "
                        f"(--method qlora): W0 quantized against B·A (default: {D.lora_init})")
    g.add_argument("--dora", action="store_true", default=None,
                   help="DoRA: also train a magnitude per output unit, W' = m·(W0 + s·B·A)/||W0 + s·B·A||")
    g.add_argument("--loftq-iter", type=int, metavar="T", help=f"LoftQ alternations (default: {D.loftq_iter})")


def _lora_init(text: str) -> str:
    if text in INITS or is_family_init(text):
        return text
    raise argparse.ArgumentTypeError(f"{text!r}; accepted: {', '.join(INITS + FAMILY_INITS)}, pissa_niter_<N>")


# --- settings: recorded config < --config file < flags -------------------------------------------------------

def _given(args: argparse.Namespace) -> dict:
    """The flags given on the command line (every option of train/eval/merge/predict defaults to None)."""
    return {k: v for k, v in vars(args).items() if v is not None and k not in ("command", "func", "config")}


def _read_config_file(args: argparse.Namespace) -> dict:
    """--config YAML as {setting: value}; keys are long flag names ('-' or '_'), checked against known ones."""
    if args.config is None:
        return {}
    path = Path(args.config)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"--config {path} is not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config {path} must be a mapping of settings (lr: 1.0e-3, ...), got {type(data).__name__}")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    known = set(TRAIN_FIELDS) | set(TARGET_KEYS) | set(vars(args))
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"--config {path}: unknown setting(s) {unknown}; settings are the long flag names of "
                         f"`lorakit {args.command} --help` (e.g. lr, batch_size, lora_r)")
    return data


def _targets(values: dict) -> tuple[str, ...] | str | None:
    """target_modules from --target-regex, --target-modules or the toggles, in that order; None if none given."""
    if values.get("target_regex"):
        return values["target_regex"]
    modules = values.get("target_modules")
    if modules:
        if not isinstance(modules, (list, tuple)):
            return modules  # "all-linear" or a regex (a run's config.yaml); another type: TrainConfig says so
        return "all-linear" if list(modules) == ["all-linear"] else tuple(modules)
    return tuple(t for t in TOGGLES if values.get(f"lora_{t}")) or None


def count_or_all(text) -> int:
    """--max-eval-samples: a count, or 'all' (0: every example)."""
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return text
    if str(text).strip().lower() == "all":
        return 0
    try:
        value = int(str(text))
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of examples or 'all', got {text!r}")
    return value


def _train_values(values: dict) -> dict:
    """The TrainConfig fields among `values`, with the LoRA target flags folded into target_modules."""
    out = {k: v for k, v in values.items() if k in TRAIN_FIELDS and k != "target_modules"}
    if out.get("max_eval_samples") is not None:  # a --config file's "all"
        try:
            out["max_eval_samples"] = count_or_all(out["max_eval_samples"])
        except argparse.ArgumentTypeError as err:
            raise ValueError(f"max_eval_samples: {err}") from None
    targets = _targets(values)
    if targets is not None:
        out["target_modules"] = targets
    return out


def given_train_values(args: argparse.Namespace) -> dict:
    """The TrainConfig values the user gave: the --config file, then the train flags (flags win)."""
    return {**_train_values(_read_config_file(args)), **_train_values(_given(args))}


def recorded_run_values(given: dict) -> dict:
    """Resuming (--resume auto or a checkpoint): the settings of the run it continues, from the run's config.yaml
    (else the checkpoint's state.json); {} when not resuming or nothing is recorded. `resume` itself is left out."""
    resume = given.get("resume")
    if resume is None:
        return {}
    if resume == "auto":
        run, checkpoint = Path(given.get("output") or TrainConfig.from_dict(given).output), None
    else:
        checkpoint = Path(resume)
        run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None
    if run is not None and (run / "config.yaml").is_file():
        import yaml

        recorded = yaml.safe_load((run / "config.yaml").read_text()) or {}
    elif checkpoint is not None and (checkpoint / "state.json").is_file():
        recorded = json.loads((checkpoint / "state.json").read_text()).get("config", {})
    else:
        return {}
    return {k: v for k, v in recorded.items() if k in TRAIN_FIELDS and k != "resume"}


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The --config file, then the flags given; resuming starts from the resumed run's recorded settings."""
    given = given_train_values(args)
    cfg = TrainConfig.from_dict({**recorded_run_values(given), **given})
    check_flag_contradictions(_given(args), cfg.method)
    return cfg


# --- the flags ----------------------------------------------------------------------------------------------

def _config_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML of settings (long flag names as keys); flags override it")


def _data_flags(p: argparse.ArgumentParser, recorded: bool = False) -> None:
    """recorded: the command starts from a trained run's settings (eval), which are the defaults its help names."""
    task, max_length = ("the recorded run's",) * 2 if recorded else (D.task, D.max_length)
    g = p.add_argument_group("data")
    g.add_argument("--task", help=f"task name: sst2, cola, mrpc, stsb, qnli, rte, mnli, qqp, imdb, ... or csv "
                                  f"(default: {task})")
    g.add_argument("--data-dir", metavar="DIR", help="the task's original files (e.g. ../shared/data/sst2); "
                                                     "default: the Hugging Face hub")
    g.add_argument("--train-file", metavar="FILE", help=".csv/.tsv/.jsonl training file (task csv, or any task)")
    g.add_argument("--eval-file", metavar="FILE", help=".csv/.tsv/.jsonl evaluation file")
    g.add_argument("--text-column", "--text-columns", dest="text_columns", action="append", metavar="NAME",
                   help="text column of the files; give it twice for sentence pairs (default: text)")
    g.add_argument("--label-column", metavar="NAME", help="label column of the files (default: label)")
    g.add_argument("--split-from-eval", type=float, metavar="F",
                   help="carve a share F of the evaluation split into train (tasks without a train split)")
    g.add_argument("--max-train-samples", type=int, metavar="N", help="seeded random subset of the train split")
    g.add_argument("--max-eval-samples", type=count_or_all, metavar="N",
                   help=f"seeded random subset of each eval split; 'all': every row (default: all for classification "
                        f"and QA, {INSTRUCT_EVAL_SAMPLES} for instruction data)")
    g.add_argument("--eval-test", action="store_true", default=None,
                   help="also evaluate on the labelled test split where the data has one (IMDB, SST-2, MRPC)")
    g.add_argument("--max-length", type=int, metavar="T", help=f"tokens per example (default: {max_length})")
    g.add_argument("--pad-to-max-length", action="store_true", default=None,
                   help="pad every batch to --max-length (throughput baseline; default: pad to the batch's longest)")


def _runtime_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("runtime")
    g.add_argument("--device", help=f"auto | cpu | cuda | cuda:N | mps (default: {D.device})")
    g.add_argument("--precision", choices=PRECISIONS,
                   help="auto = bf16 autocast on a CUDA GPU that supports it, else fp32 (default: auto)")
    g.add_argument("--seed", type=int, help=f"seed of data order, subsets, initialisation, dropout (default: {D.seed})")
    g.add_argument("--eval-batch-size", type=int, metavar="N", help=f"(default: {D.eval_batch_size})")
    g.add_argument("--threads", type=int, metavar="N", help="CPU threads of torch's intra-op pool (default: torch's "
                   "choice, usually the number of physical cores); not part of the run's recorded settings")


def _source_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--adapter", metavar="DIR", help="a `lorakit train` output directory, or its adapter/ (or "
                                                    "weights/, model/) directory")
    p.add_argument("--model", help="the base model for --adapter (default: the one it was trained on), or, "
                                   "without --adapter, a merged model directory / hub id")


def _train_parser(sub) -> argparse.ArgumentParser:
    """Add `lorakit train`'s parser to the subparsers `sub` and return it (cli sets the command it runs)."""
    lrs = ", ".join(f"{m} {lr:g}" for m, lr in DEFAULT_LR.items())
    p = sub.add_parser("train", help="fine-tune a model on a task", formatter_class=RAW, description=(
        "Fine-tune a model on a task and write an output directory with the trained adapter (or weights), "
        "metrics.json, config.yaml, log.jsonl (one JSON line per step) and versions.json.\n\n"
        "examples:\n"
        "  lorakit train --model minilm --task sst2 --data-dir ../shared/data/sst2 --epochs 1\n"
        "  lorakit train --task csv --train-file train.csv --text-column review --label-column stars\n"
        "  lorakit train --config run.yaml --lr 5e-4          # flags override the file\n"
        "  lorakit train --output runs/x --resume auto         # continue an interrupted run"))
    _config_flag(p)
    p.add_argument("--model", help=f"hub id, local directory, or 'minilm' (default: {D.model})")
    _data_flags(p)
    g = p.add_argument_group("method")
    g.add_argument("--method", choices=METHODS, help=(
        "what trains: lora (LoRA + the task head), qlora (lora over a 4/8-bit base), lora+head (LoRA + the layers "
        "below the head, e.g. BERT's pooler, in full), head (the classifier only), last-layers (the head and the "
        f"layer below it), full (default: {D.method}). LoRA adapts every linear layer below the head unless the "
        "--lora-<toggle> flags, --target-modules or --target-regex say otherwise"))
    g.add_argument("--init-adapter", metavar="DIR", help="start from a saved adapter (e.g. LoRA first, then "
                                                         "--method head trains the head on top of it); its LoRA "
                                                         "settings replace the --lora-* flags")
    add_lora_flags(p)
    q = p.add_argument_group("QLoRA (--method qlora)")
    q.add_argument("--quant-kind", choices=("nf4", "fp4", "int8"), help=f"(default: {D.quant_kind})")
    q.add_argument("--no-double-quant", dest="double_quant", action="store_false", default=None,
                   help="keep the absmax constants in fp32 (default: quantize them too)")
    q.add_argument("--quant-compute-dtype", choices=("float32", "bfloat16", "float16"),
                   help=f"dtype the base weights are dequantized to (default: {D.quant_compute_dtype})")
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, help=f"(default: {D.epochs})")
    o.add_argument("--max-steps", type=int, metavar="N", help="optimizer steps; overrides --epochs")
    o.add_argument("--lr", type=float, help=f"peak learning rate (default per method: {lrs})")
    o.add_argument("--loraplus-ratio", type=float, metavar="R",
                   help="LoRA+: the B matrices learn at lr x R (e.g. 16; default: off)")
    o.add_argument("--weight-decay", type=float, help=f"AdamW weight decay on matrices (default: {D.weight_decay})")
    o.add_argument("--batch-size", type=int, metavar="N", help=f"examples per micro-batch (default: {D.batch_size})")
    o.add_argument("--grad-accum", type=int, metavar="K",
                   help=f"micro-batches per optimizer step (default: {D.grad_accum})")
    o.add_argument("--warmup-ratio", type=float, help=f"share of steps in linear warmup (default: {D.warmup_ratio})")
    o.add_argument("--warmup-steps", type=int, metavar="N", help="warmup steps; overrides --warmup-ratio")
    o.add_argument("--max-grad-norm", type=float, help=f"gradient clipping, 0 = off (default: {D.max_grad_norm})")
    o.add_argument("--gradient-checkpointing", action="store_true", default=None,
                   help="recompute activations in backward: less memory, ~30%% slower")
    o.add_argument("--torch-dropout", action="store_true", default=None,
                   help="the model's dropout as torch runs it (default: lorakit's cheaper CPU dropout, the same "
                        "distribution from another random stream; on CUDA both are torch's)")
    o.add_argument("--no-group-by-length", dest="group_by_length", action="store_false", default=None,
                   help="plain shuffled batches (default: batches of similar lengths)")
    e = p.add_argument_group("evaluation, checkpoints, output")
    e.add_argument("--eval-steps", type=int, metavar="N", help="also evaluate every N steps (default: epoch ends only)")
    e.add_argument("--save-steps", type=int, metavar="N",
                   help="checkpoint every N steps (default: at every evaluation)")
    e.add_argument("--save-total-limit", type=int, metavar="N",
                   help=f"step checkpoints kept (default: {D.save_total_limit})")
    e.add_argument("--early-stopping-patience", type=int, metavar="N",
                   help="stop after N evaluations without improvement (default: off)")
    e.add_argument("--output", metavar="DIR", help="output directory (default: runs/<task>-<method>)")
    e.add_argument("--resume", metavar="CHECKPOINT", help="a checkpoint directory (<output>/checkpoints/step-*), or "
                                                          "'auto': the newest one under --output; every setting "
                                                          "comes from the run's config.yaml, flags given override")
    e.add_argument("--report-to", nargs="+", choices=REPORTERS,
                   help="also log to wandb / tensorboard (JSON Lines always)")
    _runtime_flags(p)
    return p


def train_flags_parser() -> argparse.ArgumentParser:
    """`lorakit train`'s parser, whose flags search and compare take over (declared in _train_parser)."""
    holder = argparse.ArgumentParser(add_help=False).add_subparsers()
    _train_parser(holder)
    return holder.choices["train"]
