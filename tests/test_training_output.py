"""What a run prints: the new head named once without transformers' load report, the finished bar once in a log, the
run's time estimated once at its start, progress bars only on a terminal, and one trainable total for LoRA and
QLoRA."""
from __future__ import annotations

import pytest
import torch

from helpers import tiny_flags, tiny_model
from lorakit.cli.main import main


def test_train_says_new_head_once_without_transformers_load_report(tiny_inputs, tmp_path, capfd):
    import transformers as tf

    base = tmp_path / "base"  # a model without a classification head, as MiniLM's sentence-transformers weights
    tokenizer = tf.AutoTokenizer.from_pretrained(tiny_inputs / "model")
    torch.manual_seed(0)
    tf.BertModel(tf.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=4, intermediate_size=37, max_position_embeddings=64)
                 ).save_pretrained(base)
    tokenizer.save_pretrained(base)
    capfd.readouterr()
    argv = tiny_flags(tiny_inputs, tmp_path / "run", "--max-steps", "2", "--eval-steps", "1")
    argv[argv.index("--model") + 1] = str(base)
    assert main(argv) == 0
    out, err = capfd.readouterr()
    both = out + err
    assert "LOAD REPORT" not in both and "MISSING" not in both
    notes = [line for line in both.splitlines() if "new classification head" in line]
    assert notes == ["lorakit: a new classification head is initialised (classifier.bias, classifier.weight); "
                     "training learns it"]
    assert sum("lorakit train: estimated time" in line for line in out.splitlines()) == 1
    # stderr is a file here, as in a log: the finished bar appears once
    assert err.replace("\r", "\n").count("train: 100%") == 1


def test_qlora_and_lora_report_the_same_total():
    from lorakit.training.methods import setup_method
    from lorakit.params import parameter_report
    from lorakit.training.config import TrainConfig

    plain = tiny_model("bert")
    reports = {}
    for method in ("lora", "qlora"):
        model = tiny_model("bert")
        setup_method(model, TrainConfig(method=method, quant_kind="int8"))
        reports[method] = parameter_report(model)
    assert reports["qlora"].trainable == reports["lora"].trainable
    assert reports["qlora"].total == reports["lora"].total  # the quantized weights counted as the values they encode
    assert reports["qlora"].percent == pytest.approx(reports["lora"].percent)
    lora_only = reports["lora"].total - sum(p.numel() for p in plain.parameters())
    assert lora_only == sum(r.count for r in reports["lora"].rows if "lora_" in r.name)
    # the base model's parameters, LoRA's added ones left out: the same for lora, qlora and the plain model
    assert reports["lora"].base == reports["qlora"].base == sum(p.numel() for p in plain.parameters())


def test_run_clock_estimates_once_from_the_steps_after_the_first():
    from lorakit.training.estimate import RunClock, duration, evaluation_steps

    assert evaluation_steps(total_steps=10, steps_per_epoch=4, eval_steps=0) == 3  # steps 4, 8 and the last, 10
    assert evaluation_steps(total_steps=10, steps_per_epoch=4, eval_steps=3) == 6  # 3, 4, 6, 8, 9, 10
    assert evaluation_steps(total_steps=10, steps_per_epoch=4, eval_steps=0, first_step=8) == 1  # resumed: 10
    clock = RunClock(total_steps=100, first_step=0, evaluations=2, eval_examples=300)
    notes = [clock.after_step(seconds, 30) for seconds in (5.0, 1.0, 1.0, 1.0, 1.0, 1.0)]
    assert notes[:3] == [None] * 3 and notes[4:] == [None, None]
    # the 4 steps run (8 s, the first one's one-time costs included) + 96 steps at the mean of the steps after the
    # first, 1 s + 2 evaluations of 300 examples at 1/30 s / 3 each (no token counts: per example)
    assert notes[3] == ("lorakit train: estimated time 1 min 51 s: 100 steps at 1.00 s + 2 evaluations of 300 "
                        "examples at ~3.3 s each (estimated)")
    by_tokens = RunClock(total_steps=4, first_step=0, evaluations=1, eval_examples=300, eval_tokens=6000)
    notes = [by_tokens.after_step(1.0, 30, tokens=300) for _ in range(4)]  # eval rows: twice the tokens of a step's
    assert notes[3].endswith("at ~6.7 s each (estimated)") and by_tokens.estimate == pytest.approx(4 + 20 / 3)
    measured = RunClock(total_steps=2, first_step=0, evaluations=2, eval_examples=200, eval_seconds=90.0)
    assert measured.after_step(0.5, 4) is None
    note = measured.after_step(0.5, 4)  # 2 steps at 0.5 s + 2 measured evaluations of 90 s
    assert note.startswith("lorakit train: estimated time 3 min 1 s:") and note.endswith("(measured)")
    assert duration(0.42) == "0.4 s" and duration(42) == "42 s" and duration(3725) == "1 h 2 min"


def test_time_estimate_is_within_a_quarter_of_the_run(tiny_inputs, tmp_path, monkeypatch, capsys):
    """A tiny run whose first step pays a one-time cost of 4 s (as compiling kernels does) and whose other steps
    take 0.1 s more than their work: the estimate printed after its first steps is within 25% of the time its loop
    took (before, the first step was counted at the others' mean, ~40% short)."""
    import re
    import time

    from helpers import tiny_config
    from lorakit.training import run as run_module

    real_step, calls = run_module.optimizer_step, []

    def slow_step(*args, **kwargs):
        time.sleep(4.0 if not calls else 0.1)
        calls.append(1)
        return real_step(*args, **kwargs)

    took, real_loop = [], run_module.Run.loop

    def timed_loop(self):
        began = time.perf_counter()
        try:
            return real_loop(self)
        finally:
            took.append(time.perf_counter() - began)

    monkeypatch.setattr(run_module, "optimizer_step", slow_step)
    monkeypatch.setattr(run_module.Run, "loop", timed_loop)
    run_module.train(tiny_config(tiny_inputs, tmp_path / "run", max_steps=8))
    printed = capsys.readouterr()
    said = re.search(r"estimated time (?:(\d+) min )?([\d.]+) s", printed.out + printed.err)
    estimate = 60 * int(said.group(1) or 0) + float(said.group(2))
    assert abs(estimate - took[0]) <= 0.25 * took[0], (estimate, took[0])


def test_evaluation_and_generation_bars_show_on_a_terminal_only(monkeypatch):
    import sys

    from tqdm.auto import tqdm

    from lorakit.tasks.lm_eval import progress_bar

    items = list(range(3))
    assert progress_bar(items, "evaluate") is items  # stderr is not a terminal here: no bar in logs
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    bar = progress_bar(items, "evaluate")
    assert isinstance(bar, tqdm) and list(bar) == items and bar.desc == "evaluate"
    assert progress_bar(items, None) is items
