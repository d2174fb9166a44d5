"""The `lorakit` command line.

    lorakit train   --model minilm --task sst2 --data-dir ../shared/data/sst2 --method lora --epochs 1
    lorakit eval    --adapter runs/sst2-lora                 # base model, task and data from the run
    lorakit merge   --adapter runs/sst2-lora --output runs/sst2-merged
    lorakit eval    --model runs/sst2-merged
    lorakit predict --adapter runs/sst2-lora "a gripping film" "flat and lifeless"
    lorakit params  --model minilm --lora-query --lora-value --lora-r 8
    lorakit serve   --model smollm2 --adapter sql=runs/sql --adapter chat=runs/chat
    lorakit demo

Every command but demo takes `--config file.yaml`: keys are the long flag names (`lr: 1.0e-3`, `lora_r: 16`,
`target_modules: all-linear`); flags given on the command line override it. A run's own config.yaml is such a
file. eval / merge / predict start from the settings recorded with the trained model, then the file, then flags.
Bad input exits with status 2 and one line naming the problem; a diverging run exits with status 1; a command stopped
by a signal exits 128 + the signal (SIGTERM 143, Ctrl-C 130): train after writing a checkpoint, with the command that
resumes, search with the same command to continue; `search` exits 1 when every trial failed or a grid point has no
result (a trial killed by a signal: run it again).
Run `lorakit <command> --help` for every flag. The flags (generated from TrainConfig) and the settings precedence are in
flags.py, the other commands' parsers in parsers.py; merge, search and compare add their own (merge.py, search.py,
compare.py).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lorakit.cli.flags import (add_train_parser, given_flags, given_train_values, read_config_file, train_config_from_args,
                    train_values)
from lorakit.cli.adapters import adapter_dirs, each_adapter, load_more_adapters
from lorakit.cli.merge import add_merge_parser
from lorakit.cli.parsers import add_eval_parser, add_export_parser, add_params_parser, add_predict_parser
from lorakit.cli.compare import add_compare_parser
from lorakit.extras import missing_extra
from lorakit.cli.search import add_search_parser
from lorakit.cli.serve import add_serve_parser
from lorakit.training.config import TrainConfig

# Only argparse and the settings dataclasses are imported at start (`lorakit --help` in well under a second); each
# command imports torch, transformers, datasets, optuna, ... when it runs.

# --- commands ---------------------------------------------------------------------------------------------

def cmd_train(args: argparse.Namespace) -> int:
    from lorakit.errors import RunInterrupted
    from lorakit.training.launch import env_rank, is_main_process
    from lorakit.training.runlock import check_run_output, run_lock

    cfg = train_config_from_args(args)  # bad settings exit 2 before anything is written
    if is_main_process():
        check_run_output(cfg.output, cfg.new_run)  # never over a user's files (runlock.py)
    with run_lock(cfg.output) as lock:  # the run's one lock, before torch is imported: of two runs, the first runs
        use_threads(args)
        try:
            from lorakit.training.run import TrainingDiverged, train

            metrics = train(cfg, lock=lock)
        except TrainingDiverged as err:
            print(f"lorakit train: error: {err}", file=sys.stderr)
            return 1
        except RunInterrupted as stopped:
            print(f"lorakit train: interrupted by {stopped}", file=sys.stderr)
            return stopped.exit_status

    if env_rank() != 0:  # torchrun / accelerate: rank 0 alone reports (the process group is gone by now)
        return 0
    main = metrics["eval"][next(iter(metrics["eval"]))][metrics["main_metric"]]
    print(f"lorakit train: best {metrics['main_metric']} {main:.4f} at step {metrics['best_step']}; "
          f"{metrics['train_examples_per_s']:.1f} examples/s; artifact {metrics['artifact']}; "
          f"metrics in {Path(cfg.output) / 'metrics.json'}")
    return 0


def _inference_setup(args: argparse.Namespace):
    """(cfg, spec, data or None, model, tokenizer) for eval / merge / predict: the recorded run settings, then
    the --config file, then flags."""
    import transformers

    from lorakit.training.methods import find_artifact, load_artifact, load_base, read_record
    from lorakit.tasks import CAUSAL_LM, get_task, load_splits
    from lorakit.training.config import eval_sample_cap

    from_file, flags = read_config_file(args), given_flags(args)
    for values in (from_file, flags):
        values.pop("output", None)  # eval / merge --output names their own result, not the run directory
    adapters = adapter_dirs(flags.get("adapter") or from_file.get("adapter"))
    adapter = adapters[0][1] if adapters else None
    model_name = flags.get("model") or from_file.get("model")
    if adapter is not None and not Path(adapter).is_dir():
        raise FileNotFoundError(f"--adapter {adapter}: no such directory; give a `lorakit train` output directory "
                                "or an adapter directory")
    source = adapter or model_name
    if source is None:
        raise ValueError("give --adapter DIR (a `lorakit train` output) or --model (a merged model directory or "
                         "hub id)")
    local = Path(source).is_dir()
    record = read_record(find_artifact(source)) if local else {}
    values = {**record.get("config", {}), **train_values(from_file), **train_values(flags)}
    values.update(resume=None, init_adapter=None)
    cfg = TrainConfig.from_dict(values)
    data = None
    if args.command == "eval" or cfg.task == "csv":  # the csv task's labels are read from its train file
        data = load_splits(cfg.task, data_dir=cfg.data_dir, train_file=cfg.train_file, eval_file=cfg.eval_file,
                           text_columns=cfg.text_columns, label_column=cfg.label_column,
                           split_from_eval=cfg.split_from_eval, max_train_samples=cfg.max_train_samples,
                           max_eval_samples=eval_sample_cap(cfg.max_eval_samples, get_task(cfg.task).kind == CAUSAL_LM),
                           include_test=cfg.eval_test, seed=cfg.seed)
    spec = data.spec if data is not None else get_task(cfg.task)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # no "newly initialized head" notes: the adapter loads the head
    try:
        if local:
            model, tokenizer, _ = load_artifact(source, spec, base_model=model_name if adapter else None)
            load_more_adapters(model, adapter, adapters[1:])
        else:
            model, tokenizer = load_base(source, spec)
    finally:
        transformers.logging.set_verbosity(verbosity)
    return cfg, spec, data, model.eval(), tokenizer


def _evaluator(cfg: TrainConfig, spec, tokenizer, model):
    """The Evaluator for cfg's device, precision, batch size and max length; moves the model to the device."""
    from lorakit.models.limits import check_max_length
    from lorakit.training.evaluation import Evaluator, kind_of
    from lorakit.tasks import PaddingCollator

    check_max_length(model, cfg.max_length)
    from lorakit.training.config import resolve_device, resolve_precision

    device = resolve_device(cfg.device)
    collator = PaddingCollator.from_tokenizer(tokenizer, pad_to_max_length=cfg.pad_to_max_length,
                                              max_length=cfg.max_length)
    model.to(device)
    return Evaluator(spec, kind_of(spec), tokenizer, collator, cfg.eval_batch_size, cfg.max_length, device,
                     resolve_precision(cfg.precision, device))


def _eval_cap_line(cfg: TrainConfig, spec, given: dict) -> str:
    """eval's first line: the task and the examples per split it evaluates, and where that cap comes from."""
    from lorakit.tasks.base import CAUSAL_LM
    from lorakit.training.config import eval_sample_cap

    cap = eval_sample_cap(cfg.max_eval_samples, spec.kind == CAUSAL_LM)
    if cap is None:
        return f"lorakit eval: {spec.name}: every example of each evaluation split"
    source = ("--max-eval-samples" if "max_eval_samples" in given else
              "the training run's --max-eval-samples" if cfg.max_eval_samples is not None else
              "the default for instruction data")
    return (f"lorakit eval: {spec.name}: a seeded subset of up to {cap} examples per split ({source}; "
            "--max-eval-samples all evaluates every example)")


def cmd_eval(args: argparse.Namespace) -> int:
    from lorakit.io.atomic import check_output_file, write_json_atomic

    if args.output:
        check_output_file(args.output)
    cfg, spec, data, model, tokenizer = _inference_setup(args)
    print(_eval_cap_line(cfg, spec, given_train_values(args)), flush=True)
    evaluate = _evaluator(cfg, spec, tokenizer, model)
    splits = {name: (rows, evaluate.kind.eval_features(rows, tokenizer, cfg.max_length))
              for name, rows in data.eval.items()}
    labels = [label for label, _ in adapter_dirs(args.adapter)]
    by_adapter = {}
    for label in each_adapter(model, labels) if len(labels) > 1 else [None]:  # one model load for all
        results = by_adapter[label] = evaluate(model, splits)
        for split, metrics in results.items():
            shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            print(f"{label + ': ' if label else ''}{spec.name} {split} ({len(data.eval[split])} examples): {shown}")
    if args.output:
        record = {"eval": by_adapter[None]} if None in by_adapter else {"adapters": by_adapter}
        write_json_atomic(args.output, {"task": spec.name, **record})
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from lorakit.io.atomic import atomic_dir
    from lorakit.training.methods import RECORD, merged_model
    from lorakit.training.runlock import run_lock
    from lorakit.cli.merge import check_merge_output, combine_settings, combining, write_combination

    if not args.output:
        raise ValueError("lorakit merge needs --output DIR for the merged model")
    adapters, combine = list(args.adapter or []), combining(args)
    settings = combine_settings(args) if combine else None  # bad flags fail before any model is loaded
    check_merge_output(args.output, adapter=combine and not args.unload)
    first = argparse.Namespace(**{**vars(args), "adapter": adapters[0] if adapters else None})
    with run_lock(args.output, command="merge"):  # two merges into one --output: the second exits 2
        cfg, spec, _, model, tokenizer = _inference_setup(first)
        if combine:
            written = write_combination(args, adapters, *settings, (cfg, spec, model, tokenizer))
            print(f"lorakit merge: wrote {written} to {args.output}")
            return 0
        merged = merged_model(model)
        with atomic_dir(args.output) as tmp:
            merged.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            record = {"method": "merged", "base_model": cfg.model, "task": spec.name, "quantization": None,
                      "config": cfg.to_dict()}
            (tmp / RECORD).write_text(json.dumps(record, indent=2))
    print(f"lorakit merge: wrote a plain transformers model to {args.output} "
          "(AutoModelForSequenceClassification.from_pretrained reads it)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from lorakit.export.gguf_export import export_gguf
    from lorakit.training.runlock import run_lock

    with run_lock(Path(args.gguf).parent, command="export"):  # one writer per directory, as train and merge
        path = export_gguf(args.adapter, args.gguf, model=args.model, out_type=args.gguf_type,
                           lora_only=args.lora_only, base_gguf=args.base_gguf)
    what = "LoRA adapter (llama-cli -m BASE.gguf --lora FILE)" if args.lora_only else f"merged model ({args.gguf_type})"
    print(f"lorakit export: wrote the {what} to {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def _predict_inputs(args: argparse.Namespace) -> list[str]:
    """The texts to predict on: arguments, --file lines, --question with --context (QA), --prompt (causal LM)."""
    texts = list(args.texts or [])
    if args.file:
        path = Path(args.file)
        if not path.is_file():
            raise FileNotFoundError(f"--file {path}: no such file")
        try:
            texts += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError as err:
            raise ValueError(f"--file {path} is not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    if (args.question is None) != (args.context is None):
        raise ValueError("--question and --context go together: give both (or 'question<TAB>context' lines)")
    if args.question is not None:
        texts.append(f"{args.question}\t{args.context}")
    texts += list(args.prompt or [])
    if not texts:
        raise ValueError("nothing to predict: give texts as arguments, --file FILE (one text a line), "
                         "--question Q --context C (question answering) or --prompt P (instruction tuning)")
    return texts


GENERATION_FLAGS = ("max_new_tokens", "temperature", "top_p")


def _print_generations(args: argparse.Namespace, cfg: TrainConfig, model, tokenizer, texts: list[str]) -> None:
    """Causal LMs: each answer as generated (newlines kept), a blank line between answers; on a terminal the
    tokens are printed as they come (transformers' TextStreamer)."""
    import torch
    import transformers

    from lorakit.tasks.lm_eval import generate_samples

    torch.manual_seed(cfg.seed)  # --seed: the same sampled answers again (greedy ignores it)
    stream = sys.stdout.isatty()
    for i, text in enumerate(texts):
        if i:
            print()
        streamer = transformers.TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None
        (answer,) = generate_samples(model, tokenizer, [text], max_new_tokens=args.max_new_tokens or 128,
                                     temperature=args.temperature or 0.0,
                                     top_p=args.top_p if args.top_p is not None else 1.0, streamer=streamer)
        if not stream:
            print(answer, flush=True)


def _predict_task(args: argparse.Namespace) -> None:
    """--model without an adapter or a task: a causal LM (SmolLM2, GPT-2, ...) follows prompts (task instruct);
    other models keep the default task."""
    from lorakit.models.loading import is_causal_lm

    if args.task is None and args.adapter is None and args.model is not None \
            and "task" not in read_config_file(args) and is_causal_lm(args.model):
        args.task = "instruct"


def cmd_predict(args: argparse.Namespace) -> int:
    from lorakit.tasks.base import CAUSAL_LM, SEQUENCE_CLASSIFICATION

    texts = _predict_inputs(args)
    _predict_task(args)
    cfg, spec, _, model, tokenizer = _inference_setup(args)
    given = [f"--{name.replace('_', '-')}" for name in GENERATION_FLAGS if getattr(args, name) is not None]
    if given and spec.kind != CAUSAL_LM:
        raise ValueError(f"{', '.join(given)}: generation settings apply to instruction-tuned (causal LM) runs; "
                         f"task {spec.name} is {spec.kind.replace('_', ' ')}")
    evaluate = _evaluator(cfg, spec, tokenizer, model)
    labels = [label for label, _ in adapter_dirs(args.adapter)]
    for label in each_adapter(model, labels) if len(labels) > 1 else [None]:  # one model load for all
        if label is not None:
            print(f"[{label}]", flush=True)
        if spec.kind == CAUSAL_LM:
            _print_generations(args, cfg, model, tokenizer, texts)
        elif spec.kind != SEQUENCE_CLASSIFICATION:
            for line in evaluate.kind.predict(evaluate, model, texts):
                print(line)  # an answer span: the output alone, one line per input
        else:
            for line, text in zip(evaluate.kind.predict(evaluate, model, texts), texts):
                print(f"{line}\t{text}")
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    from lorakit.inject.inject import add_lora
    from lorakit.models.loading import load_classifier
    from lorakit.params import parameter_report

    # train's LoRA defaults, flags over them
    lora = TrainConfig.from_dict(train_values(given_flags(args))).lora_config()
    model, _ = load_classifier(args.model, args.num_labels)
    add_lora(model, lora)
    report = parameter_report(model)
    print(report.table(only_trainable=not args.all))
    print(report.summary())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from lorakit.experiments.demo import run_demo

    return run_demo()


# --- the parser ---------------------------------------------------------------------------------------------

def build_parser(params_defaults: dict | None = None) -> argparse.ArgumentParser:
    """params_defaults: values of a --config file for `lorakit params`, whose flags have ordinary defaults."""
    parser = argparse.ArgumentParser(prog="lorakit", description="LoRA and QLoRA fine-tuning, written from scratch.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub).set_defaults(func=cmd_train)
    add_eval_parser(sub).set_defaults(func=cmd_eval)
    add_merge_parser(sub).set_defaults(func=cmd_merge)
    add_predict_parser(sub).set_defaults(func=cmd_predict)
    add_params_parser(sub, params_defaults or {}).set_defaults(func=cmd_params)
    add_export_parser(sub).set_defaults(func=cmd_export)
    sub.add_parser("demo", help="the main job (see `make demo`)").set_defaults(func=cmd_demo)
    add_search_parser(sub)
    add_compare_parser(sub)
    add_serve_parser(sub)
    return parser


def _params_defaults(args: argparse.Namespace) -> dict:
    """`lorakit params --config FILE`: the file's values for params' own flags (the rest of a run config is ignored)."""
    values = {k: v for k, v in read_config_file(args).items() if k in vars(args)}
    modules = values.get("target_modules")
    if isinstance(modules, str):  # a run config's "all-linear", or a regex
        values["target_modules"] = [modules] if modules == "all-linear" else None
        if modules != "all-linear":
            values["target_regex"] = modules
    return values


def use_threads(args: argparse.Namespace) -> None:
    """--threads N: torch's intra-op pool (train sets it once it holds the run lock, as this imports torch)."""
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    missing = missing_extra(args.command)
    if missing is not None:
        print(missing, file=sys.stderr)
        return 2
    try:
        if args.command in ("train", "eval", "predict") and args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        if args.command in ("eval", "predict"):
            use_threads(args)
        if args.command == "params" and args.config:  # train, eval, merge, predict merge their files themselves
            args = build_parser(_params_defaults(args)).parse_args(argv)
        return args.func(args)
    except (ValueError, OSError) as err:  # UserError (lorakit.errors), TaskError, a path that is missing or not usable
        message = " ".join(str(err).split("\n"))  # one line, however the message was built
        print(f"lorakit {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lorakit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())