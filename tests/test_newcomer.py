"""What a newcomer meets in the first hour (issue 21): README's commands as written, readable reports, quiet runs.

Each test pins one of the issue's points on tiny models and tiny data (seconds).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from lorakit.cli.main import main
from test_train import make_tiny_run_inputs


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_run_inputs(tmp_path_factory.mktemp("newcomer"))


def tiny_train(tiny: Path, output: str | Path, *extra: str) -> list[str]:
    return ["train", "--model", str(tiny / "model"), "--task", "csv", "--train-file", str(tiny / "train.csv"),
            "--eval-file", str(tiny / "dev.csv"), "--batch-size", "8", "--max-length", "32",
            "--output", str(output), *extra]


# --- 1. README's `lorakit train --output runs/x --resume auto` -------------------------------------------------

def test_readme_resume_line_runs_as_written(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(tiny_train(tiny, "runs/x", "--max-steps", "4", "--save-steps", "2", "--lr", "1e-2")) == 0
    shutil.rmtree("runs/x/checkpoints/step-000004")  # as if it had been interrupted after step 2
    Path("runs/x/metrics.json").unlink()
    capsys.readouterr()
    assert main(["train", "--output", "runs/x", "--resume", "auto"]) == 0  # README's line: no other flag
    out = capsys.readouterr().out
    assert "resuming from runs/x/checkpoints/step-000002 at step 2" in out
    assert "differ" not in out  # every setting came from the run's config.yaml
    metrics = json.loads(Path("runs/x/metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["task"] == "csv"


def test_resume_flags_override_the_recorded_settings_and_are_named(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(tiny_train(tiny, run, "--max-steps", "2")) == 0
    capsys.readouterr()
    assert main(["train", "--output", str(run), "--resume", "auto", "--max-steps", "3"]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if "differ" in line]
    assert len(notes) == 1 and "max_steps 2 -> 3" in notes[0]
    assert json.loads((run / "metrics.json").read_text())["steps"] == 3
    # a checkpoint path alone: the run directory it belongs to supplies the settings (and the output)
    checkpoint = sorted((run / "checkpoints").glob("step-*"))[-1]
    assert main(["train", "--resume", str(checkpoint)]) == 0
    assert "differ" not in capsys.readouterr().out


# --- 2 and 3. the search report: heatmap over the searched dimensions; ties broken by the loss -----------------

def _study_with_trials(trials: list[tuple[dict, float, float, int]]):
    """An in-memory study of complete trials: (searched params, accuracy, validation loss, trainable params)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for params, accuracy, loss, trainable in trials:
        config = {"lora_r": 8, "lora_alpha": 8.0, "lr": 5e-4, "method": "lora", **params}
        metrics = {"validation_accuracy": accuracy, "validation_loss": loss, "trainable_params": trainable}
        study.add_trial(optuna.trial.create_trial(value=accuracy, user_attrs={
            "params": params, "config": config, "metrics": metrics, "objective_name": "validation_accuracy"}))
    return study


@pytest.fixture
def captured_figures(monkeypatch):
    """The matplotlib figures report.py saves, still open, for checking their axes."""
    from lorakit.experiments import report

    figures, save = [], report._save

    def keep(fig, path):
        fig.canvas.draw()
        figures.append(fig)
        fig.tight_layout()
        fig.savefig(path, dpi=50)
        return Path(path)

    monkeypatch.setattr(report, "_save", keep)
    yield figures
    report._pyplot().close("all")
    assert save is not None


def _title_fits(fig, ax) -> bool:
    box = ax.title.get_window_extent(fig.canvas.get_renderer())
    return box.x0 >= 0 and box.x1 <= fig.bbox.width


def test_search_heatmap_shows_the_searched_dimensions_with_log_axes(tmp_path, captured_figures):
    from lorakit.experiments.search import Range, SearchSettings
    from lorakit.experiments.search_report import write_reports

    lrs = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3]
    trials = [({"lr": lr, "lora_r": r}, 0.5 + 0.05 * i + 0.001 * r, 0.7 - 0.01 * i, 1000 * r)
              for i, lr in enumerate(lrs) for r in (4, 8)]
    settings = SearchSettings(base={}, space={"lr": Range(1e-5, 3e-3, log=True), "lora_r": (4, 8)},
                              output=tmp_path, sampler="random", n_trials=len(trials))
    paths = write_reports(_study_with_trials(trials), settings)
    assert paths["heatmap"].is_file()
    fig = captured_figures[0]  # the heatmap is drawn first
    ax = fig.axes[0]
    # lr moves the accuracy most: the vertical axis; lora_r beside it; lora_alpha (not searched) nowhere
    assert ax.get_ylabel() == "lr (log scale)" and ax.get_yscale() == "log"
    assert ax.get_xlabel() == "lora_r" and [t.get_text() for t in ax.get_xticklabels()] == ["4", "8"]
    assert _title_fits(fig, ax)


def test_heatmap_of_two_grids_and_of_one_dimension(tmp_path, captured_figures):
    from lorakit.experiments import report

    rows = [{"lora_r": r, "lora_alpha": a, "lr": 1e-3, "objective": 0.5 + 0.01 * r} for r in (1, 8) for a in (8, 16)]
    report.plot_heatmap(rows, "objective", tmp_path / "cells.png", scales={"lora_r": "grid", "lora_alpha": "grid"})
    ax = captured_figures[-1].axes[0]
    assert (ax.get_ylabel(), ax.get_xlabel()) == ("lora_r", "lora_alpha")  # lora_r has the effect
    assert [t.get_text() for t in ax.get_yticklabels()] == ["1", "8"]
    assert _title_fits(captured_figures[-1], ax)
    report.plot_heatmap(rows, "objective", tmp_path / "one.png", label="accuracy",
                        scales={"lora_r": "grid", "lr": "log"})  # lr takes one value: lora_r alone
    ax = captured_figures[-1].axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("lora_r", "accuracy")


def test_ties_go_to_the_lower_loss_then_fewer_parameters(tmp_path):
    from lorakit.experiments.search import SearchSettings
    from lorakit.experiments.search_report import TIE_BREAK, best_trial, write_reports

    # four trials at the majority class's accuracy; trial 1's loss is the lowest; trial 2 ties trial 1 on the loss
    # with more parameters
    study = _study_with_trials([({"lora_r": 4}, 0.57, 2.18, 400), ({"lora_r": 8}, 0.57, 0.685, 800),
                                ({"lora_r": 16}, 0.57, 0.685, 1600), ({"lora_r": 2}, 0.57, 0.9, 200)])
    assert best_trial(study).number == 1
    settings = SearchSettings(base={}, space={"lora_r": (2, 4, 8, 16)}, output=tmp_path)
    write_reports(study, settings)
    assert "best trial (1)" in (tmp_path / "best.yaml").read_text()  # what `lorakit compare` takes as lora-best
    summary = (tmp_path / "summary.md").read_text()
    assert "**Best: trial 1," in summary and TIE_BREAK in summary
    order = [line.split("|")[1].strip() for line in summary.splitlines() if line.startswith("| ") and "---" not in line]
    assert order[1:] == ["1", "2", "3", "0"]  # the table in the same order


# --- 6. --storage postgresql://... without a PostgreSQL driver --------------------------------------------------

def test_postgres_storage_without_a_driver_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    import sys

    for driver in ("psycopg", "psycopg2"):  # `import psycopg2` now fails, installed or not
        monkeypatch.setitem(sys.modules, driver, None)
    argv = ["search", "--storage", "postgresql://user:secret@db-host/lorakit", "--space", "lora_r=1,2",
            "--output", str(tmp_path / "search")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "no Python driver" in err and "psycopg2" in err and "pip install 'lorakit[postgres]'" in err
    assert "secret" not in err  # the password is not echoed
    assert not (tmp_path / "search").exists()
    assert main(argv[:2] + ["nosuchdb://x"] + argv[3:]) == 2
    assert "not a database URL" in capsys.readouterr().err


def test_a_bare_postgresql_url_takes_the_installed_psycopg2(tmp_path, monkeypatch):
    import sys
    import types

    from lorakit.experiments.search import SearchSettings

    monkeypatch.setitem(sys.modules, "psycopg", None)  # SQLAlchemy 2.1's default driver missing
    monkeypatch.setitem(sys.modules, "psycopg2", types.ModuleType("psycopg2"))  # what lorakit[postgres] installs
    settings = SearchSettings(base={}, space={"lora_r": (1,)}, output=tmp_path,
                              storage="postgresql://user:pw@db-host/lorakit")
    assert settings.storage_url == "postgresql+psycopg2://user:pw@db-host/lorakit"


# --- 7 and 9. eval: the sample cap said first, "all" accepted; --help's defaults agree with its description ----

def test_eval_names_its_sample_cap_and_accepts_all(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(tiny_train(tiny, run, "--max-steps", "1", "--max-eval-samples", "10")) == 0
    capsys.readouterr()
    assert main(["eval", "--adapter", str(run)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "up to 10 examples per split (the training run's --max-eval-samples" in lines[0]
    assert "(10 examples)" in lines[-1]
    assert main(["eval", "--adapter", str(run), "--max-eval-samples", "all"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "every example" in lines[0] and "(32 examples)" in lines[-1]  # dev.csv has 32 rows
    assert main(["eval", "--adapter", str(run), "--max-eval-samples", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "up to 5 examples per split (--max-eval-samples;" in lines[0] and "(5 examples)" in lines[-1]
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--adapter", str(run), "--max-eval-samples", "some"])
    assert exit_.value.code == 2 and "expected a number of examples or 'all'" in capsys.readouterr().err


def test_instruction_data_is_evaluated_on_a_default_subset():
    from lorakit.training.config import INSTRUCT_EVAL_SAMPLES, eval_sample_cap

    assert eval_sample_cap(None, instruction_data=True) == INSTRUCT_EVAL_SAMPLES
    assert eval_sample_cap(None, instruction_data=False) is None
    assert eval_sample_cap(0, instruction_data=True) is None  # --max-eval-samples all
    assert eval_sample_cap(500, instruction_data=True) == 500


def test_eval_help_defaults_are_the_recorded_runs(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: the recorded run's)" in text and "(default: sst2)" not in text


# --- 5. predict --prompt: answers as generated, generation flags, streaming --------------------------------------

MULTILINE = "x\ny"  # a token whose text holds a newline (code answers are full of them)


@pytest.fixture(scope="module")
def instruct_run(tmp_path_factory) -> Path:
    """A 1-step LoRA run of a tiny Llama whose final norm is zero: every logit is 0, so greedy decoding repeats
    token 0, MULTILINE; sampling (temperature 1) draws uniformly from the 20 tokens."""
    import transformers as tf
    from tokenizers import Tokenizer, models, pre_tokenizers

    root = tmp_path_factory.mktemp("instruct")
    words = [MULTILINE, "[PAD]", "[UNK]", "</s>", "hi", "hello", "there", "how", "are", "you", "fine", "say", "to",
             "bob", "###", "Instruction:", "Input:", "Response:", "a", "b"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = tf.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                           eos_token="</s>")
    tokenizer.save_pretrained(root / "model")
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1,
                                               num_attention_heads=4, num_key_value_heads=2, intermediate_size=37,
                                               max_position_embeddings=128, pad_token_id=1, eos_token_id=3))
    with torch.no_grad():
        model.model.norm.weight.zero_()
    model.save_pretrained(root / "model")
    records = [{"instruction": "say hi", "input": "", "output": "hello there"}] * 4
    for name in ("train.jsonl", "dev.jsonl"):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["train", "--model", str(root / "model"), "--task", "instruct", "--train-file",
                 str(root / "train.jsonl"), "--eval-file", str(root / "dev.jsonl"), "--batch-size", "4",
                 "--max-steps", "1", "--max-length", "32", "--output", str(root / "run")]) == 0
    return root / "run"


def test_predict_prints_answers_as_generated(instruct_run, capsys):
    capsys.readouterr()
    assert main(["predict", "--adapter", str(instruct_run), "--prompt", "say hi", "--prompt", "how are you",
                 "--max-new-tokens", "3"]) == 0
    answer = " ".join([MULTILINE] * 3)
    assert capsys.readouterr().out == f"{answer}\n\n{answer}\n"  # newlines kept, a blank line between answers


def test_predict_sampling_flags_and_seed(instruct_run, capsys):
    def sampled(*flags: str) -> str:
        capsys.readouterr()
        assert main(["predict", "--adapter", str(instruct_run), "--prompt", "say hi", "--max-new-tokens", "8",
                     *flags]) == 0
        return capsys.readouterr().out

    first = sampled("--temperature", "1", "--seed", "1")
    assert first == sampled("--temperature", "1", "--seed", "1")  # seeded
    assert first != sampled("--temperature", "1", "--seed", "2")
    assert first != sampled()  # greedy: MULTILINE x 8
    capsys.readouterr()
    assert main(["predict", "--adapter", str(instruct_run), "--prompt", "say hi", "--top-p", "0"]) == 2
    assert "top_p in (0, 1]" in capsys.readouterr().err


def test_predict_streams_tokens_on_a_terminal(instruct_run, capsys, monkeypatch):
    import sys

    from lorakit.tasks import lm_eval

    streamers = []
    generate = lm_eval.generate_samples

    def recording(*args, streamer=None, **kwargs):
        streamers.append(streamer)
        return generate(*args, streamer=streamer, **kwargs)

    monkeypatch.setattr(lm_eval, "generate_samples", recording)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    capsys.readouterr()
    assert main(["predict", "--adapter", str(instruct_run), "--prompt", "say hi", "--max-new-tokens", "3"]) == 0
    assert type(streamers[0]).__name__ == "TextStreamer"
    assert capsys.readouterr().out.strip() == " ".join([MULTILINE] * 3)  # printed once, by the streamer


def test_generation_flags_are_for_instruction_runs(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(tiny_train(tiny, run, "--max-steps", "1")) == 0
    capsys.readouterr()
    assert main(["predict", "--adapter", str(run), "w1 w2", "--temperature", "0.7"]) == 2
    assert "--temperature: generation settings apply to instruction-tuned" in capsys.readouterr().err


# --- 8. noise: transformers' load report, the final bar twice; one trainable % for LoRA and QLoRA -----------------

def test_train_says_new_head_once_without_transformers_load_report(tiny, tmp_path, capfd):
    import transformers as tf

    base = tmp_path / "base"  # a model without a classification head, as MiniLM's sentence-transformers weights
    tokenizer = tf.AutoTokenizer.from_pretrained(tiny / "model")
    torch.manual_seed(0)
    tf.BertModel(tf.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=4, intermediate_size=37, max_position_embeddings=64)
                 ).save_pretrained(base)
    tokenizer.save_pretrained(base)
    capfd.readouterr()
    argv = tiny_train(tiny, tmp_path / "run", "--max-steps", "2", "--eval-steps", "1")
    argv[argv.index("--model") + 1] = str(base)
    assert main(argv) == 0
    out, err = capfd.readouterr()
    both = out + err
    assert "LOAD REPORT" not in both and "MISSING" not in both
    notes = [line for line in both.splitlines() if "new classification head" in line]
    assert notes == ["lorakit: a new classification head is initialised (classifier.bias, classifier.weight); "
                     "training learns it"]
    assert sum("lorakit train: estimated time" in line for line in out.splitlines()) == 1  # point 4
    # stderr is a file here, as in a log: the finished bar appears once
    assert err.replace("\r", "\n").count("train: 100%") == 1


def test_qlora_and_lora_report_the_same_total():
    from conftest import tiny_model
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


# --- 4. the run's time, estimated at its start ---------------------------------------------------------------------

def test_run_clock_estimates_once_from_the_steps_after_the_first():
    from lorakit.training.estimate import RunClock, duration, evaluation_steps

    assert evaluation_steps(total_steps=10, steps_per_epoch=4, eval_steps=0) == 3  # steps 4, 8 and the last, 10
    assert evaluation_steps(total_steps=10, steps_per_epoch=4, eval_steps=3) == 6  # 3, 4, 6, 8, 9, 10
    assert evaluation_steps(total_steps=10, steps_per_epoch=4, eval_steps=0, first_step=8) == 1  # resumed: 10
    clock = RunClock(total_steps=100, first_step=0, evaluations=2, eval_examples=300)
    notes = [clock.after_step(seconds, 30) for seconds in (5.0, 1.0, 1.0, 1.0, 1.0, 1.0)]
    assert notes[:3] == [None] * 3 and notes[4:] == [None, None]
    # 100 steps at 1 s (the first step's 5 s left out) + 2 evaluations of 300 examples at 1/30 s / 3 each
    assert notes[3] == ("lorakit train: estimated time 1 min 47 s: 100 steps at 1.00 s + 2 evaluations of 300 "
                        "examples at ~3.3 s each (estimated)")
    measured = RunClock(total_steps=2, first_step=0, evaluations=2, eval_examples=200, eval_seconds=90.0)
    assert measured.after_step(0.5, 4) is None
    note = measured.after_step(0.5, 4)  # 2 steps at 0.5 s + 2 measured evaluations of 90 s
    assert note.startswith("lorakit train: estimated time 3 min 1 s:") and note.endswith("(measured)")
    assert duration(0.42) == "0.4 s" and duration(42) == "42 s" and duration(3725) == "1 h 2 min"


# --- 9. comparison.md and its chart: the same precision, readable labels, a time and a memory panel ---------------

def test_comparison_table_and_chart_agree(tmp_path, captured_figures):
    from lorakit.experiments import compare

    rows = [{"method": m, "status": "complete", "validation_accuracy": acc, "validation_loss": 0.61,
             "main_metric": "validation_accuracy", "trainable_params": params, "total_params": 22_000_000,
             "trainable_percent": 100 * params / 22e6, "train_seconds": seconds, "peak_memory_mb": memory,
             "adapter_bytes": 4 * params, "artifact": "x", "lr": 5e-4}
            for m, acc, params, seconds, memory in (("lora", 0.656, 73_000, 291.0, 2057.0),
                                                    ("full", 0.8165, 22_000_000, 364.0, 2240.0))]
    paths = compare.write_comparison(rows, tmp_path)
    table = paths["table"].read_text()
    assert "| 0.6560 |" in table and "| 0.8165 |" in table
    fig = captured_figures[-1]
    labels = [ax.get_xlabel() for ax in fig.axes]
    assert labels == ["validation accuracy", "trainable parameters (log scale)", "train time (s)", "peak memory (MB)"]
    shown = [t.get_text() for t in fig.axes[0].texts]
    assert shown == ["0.6560", "0.8165"]  # the table's cells
    assert [t.get_text() for t in fig.axes[2].texts] == ["291 s", "364 s"]


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


# --- README's shell lines: every `lorakit` command parses as written ------------------------------------------------

def readme_commands() -> list[str]:
    """The `lorakit ...` lines of README's bash blocks (continuations joined, comments cut; lines with '...' left
    out: they abbreviate)."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", readme, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line.startswith("lorakit ") and "..." not in line:
                commands.append(line)
    return commands


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_parses(command):
    import shlex

    from lorakit.cli.main import build_parser

    args = build_parser().parse_args(shlex.split(command)[1:])  # argparse exits (code 2) on an unknown flag
    assert callable(args.func)
