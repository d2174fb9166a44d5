"""The training loop on a tiny random BERT (seconds each): reproducibility, exact resumption, gradient checkpointing,
LoRA+, the schedule, NaN handling, dynamic padding, early stopping, and which parameters each method trains."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
import transformers as tf
from safetensors.torch import load_file

from lorakit.training import step as train_step
from lorakit.training.checkpoint import load_checkpoint
from lorakit.cli.main import main
from lorakit.training.methods import load_artifact, setup_method
from lorakit.quant.linear import QuantLinear
from lorakit.tasks import get_task
from lorakit.training.placement import enable_gradient_checkpointing
from lorakit.training.run import TrainingDiverged, train
from lorakit.training.config import DEFAULT_LR, TrainConfig, resolve_device, resolve_precision
from lorakit.training.step import accumulate_gradients, build_optimizer, linear_schedule
from helpers import WORDS, randomize_lora_b, step_losses, tiny_classifier, tiny_config, tiny_llama_config
from helpers import word_tokenizer


def test_seeded_run_repeats_and_resume_reproduces_the_curve(tiny_inputs, tmp_path):
    first = train(tiny_config(tiny_inputs, tmp_path / "a"))
    train(tiny_config(tiny_inputs, tmp_path / "b"))
    curve = step_losses(tmp_path / "a")
    assert list(curve) == [1, 2, 3, 4]
    assert curve == step_losses(tmp_path / "b")  # bit-identical
    assert abs(curve[1] - math.log(2)) < 0.05  # a fresh 2-way head starts near ln 2
    assert all(0.5 < v < 0.9 for v in curve.values())

    resumed = tiny_config(tiny_inputs, tmp_path / "c", resume=str(tmp_path / "a/checkpoints/step-000002"))
    train(resumed)
    assert step_losses(tmp_path / "c") == {3: curve[3], 4: curve[4]}
    final_a = load_file(str(tmp_path / "a/checkpoints/step-000004/trainable.safetensors"))
    final_c = load_file(str(tmp_path / "c/checkpoints/step-000004/trainable.safetensors"))
    assert all(torch.equal(final_a[k], final_c[k]) for k in final_a)
    assert first["steps"] == 4 and first["trainable_params"] < first["total_params"]
    output = tmp_path / "a"
    for name in ("metrics.json", "config.yaml", "log.jsonl", "versions.json", "adapter/adapter_config.json",
                 "adapter/adapter_model.safetensors", "adapter/lorakit.json"):
        assert (output / name).is_file(), name
    assert TrainConfig.from_yaml((output / "config.yaml").read_text()) == tiny_config(tiny_inputs, output)
    metrics = json.loads((output / "metrics.json").read_text())
    assert {"eval", "trainable_params", "total_params", "train_seconds", "peak_memory_mb",
            "train_examples_per_s", "versions"} <= set(metrics)
    assert {"torch", "transformers"} <= set(json.loads((output / "versions.json").read_text()))


def test_resume_auto_in_the_same_directory_rewrites_the_log_tail(tiny_inputs, tmp_path):
    cfg = tiny_config(tiny_inputs, tmp_path / "a", save_total_limit=1)
    train(cfg)
    curve = step_losses(tmp_path / "a")
    with pytest.raises(ValueError, match="--resume auto"):  # a fresh run must not mix with an old one
        train(cfg)
    train(cfg.__class__.from_dict({**cfg.to_dict(), "resume": "auto"}))  # resumes at step 4: nothing left to do
    assert step_losses(tmp_path / "a") == curve


def test_gradient_checkpointing_still_trains_lora_b():
    from lorakit import LoraConfig, add_lora

    batch = {"input_ids": torch.randint(5, 99, (4, 12)), "labels": torch.tensor([0, 1, 1, 0])}
    grads = []
    for checkpointing in (False, True):
        model = add_lora(tiny_classifier(), LoraConfig(r=4, target_modules="all-linear"))
        randomize_lora_b(model)
        if checkpointing:
            enable_gradient_checkpointing(model)
        model.train()
        torch.manual_seed(1)  # same dropout masks in both runs
        model(**batch).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if "lora_" in n})
        before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
        torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
        changed = [n for n, p in model.named_parameters() if "lora_B" in n and not torch.equal(p, before[n])]
        assert len(changed) == len(before) == 13  # 2 layers x 6 linears + the pooler
    plain, checkpointed = grads
    assert all(torch.allclose(plain[n], checkpointed[n], atol=1e-6) for n in plain)
    assert model.is_activation_checkpointing


def test_loraplus_puts_b_in_its_own_group():
    from lorakit import LoraConfig, add_lora

    model = add_lora(tiny_classifier(), LoraConfig(r=4, target_modules=["query", "value"]))
    cfg = TrainConfig(lr=1e-3, loraplus_ratio=16, weight_decay=0.01)
    groups = {g["name"]: g for g in build_optimizer(model, cfg).param_groups}
    names = {id(p): n for n, p in model.named_parameters()}
    assert groups["lora_B"]["lr"] == pytest.approx(1.6e-2)
    assert sorted(names[id(p)] for p in groups["lora_B"]["params"]) == sorted(
        n for n in names.values() if ".lora_B." in n)
    assert groups["main"]["lr"] == 1e-3 and groups["main"]["weight_decay"] == 0.01
    assert groups["main_no_decay"]["weight_decay"] == 0.0  # the classifier bias
    plain = build_optimizer(model, TrainConfig(lr=1e-3)).param_groups
    assert {g["name"] for g in plain} == {"main", "main_no_decay"} and all(g["lr"] == 1e-3 for g in plain)


def test_linear_warmup_then_linear_decay():
    factor = linear_schedule(warmup=2, total=6)
    assert [factor(s) for s in range(6)] == pytest.approx([1 / 3, 2 / 3, 1.0, 3 / 4, 2 / 4, 1 / 4])
    assert [linear_schedule(0, 4)(s) for s in range(4)] == pytest.approx([1.0, 0.75, 0.5, 0.25])
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(2, 6))
    used = []
    for _ in range(6):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert used == pytest.approx([0.1 / 3, 0.2 / 3, 0.1, 0.075, 0.05, 0.025])


def test_gradient_accumulation_equals_one_big_batch():
    from lorakit import LoraConfig, add_lora

    model = add_lora(tiny_classifier(dropout=0.0), LoraConfig(r=4, target_modules="all-linear"))
    randomize_lora_b(model)
    ids = torch.randint(5, 99, (6, 9))
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    batches = [{"input_ids": ids[:4], "labels": labels[:4]}, {"input_ids": ids[4:], "labels": labels[4:]}]
    loss_accumulated = accumulate_gradients(model, batches, 6, torch.device("cpu"), "fp32")
    accumulated = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    whole = model(input_ids=ids, labels=labels).loss
    whole.backward()
    assert loss_accumulated == pytest.approx(whole.item(), rel=1e-5)
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert all(torch.allclose(accumulated[n], p.grad, atol=1e-6) for n, p in trained)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_inputs, tmp_path, monkeypatch):
    real, calls = train_step.training_loss, []

    def nan_at_third_step(model, batch):
        calls.append(1)
        loss = real(model, batch)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(train_step, "training_loss", nan_at_third_step)
    cfg = tiny_config(tiny_inputs, tmp_path / "run", max_steps=6)
    with pytest.raises(TrainingDiverged) as caught:
        train(cfg)
    message = str(caught.value)
    assert "step 3" in message and "nan" in message and "step-000002" in message and "--resume" in message
    checkpoints = sorted(p.name for p in (tmp_path / "run/checkpoints").glob("step-*"))
    assert checkpoints == ["step-000002"]
    log = [json.loads(line) for line in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    assert log[-1]["event"] == "diverged" and log[-1]["step"] == 3
    monkeypatch.setattr(train_step, "training_loss", real)  # the kept checkpoint resumes cleanly
    metrics = train(cfg.__class__.from_dict({**cfg.to_dict(), "resume": "auto"}))
    assert metrics["steps"] == 6


def test_batches_are_padded_per_batch_unless_asked(tiny_inputs, tmp_path, monkeypatch):
    real, widths = train_step.training_loss, []

    def record(model, batch):
        mask = batch["attention_mask"]
        widths.append((mask.shape[1], int(mask.sum(1).max())))  # (padded width, longest row)
        return real(model, batch)

    monkeypatch.setattr(train_step, "training_loss", record)
    train(tiny_config(tiny_inputs, tmp_path / "dynamic", max_steps=3, eval_steps=0))
    assert widths and all(width == longest for width, longest in widths)
    assert max(w for w, _ in widths) < 32
    widths.clear()
    train(tiny_config(tiny_inputs, tmp_path / "fixed", max_steps=3, eval_steps=0, pad_to_max_length=True))
    assert all(width == 32 for width, _ in widths)


def test_early_stopping_and_the_evaluation_callback(tiny_inputs, tmp_path):
    seen = []
    metrics = train(tiny_config(tiny_inputs, tmp_path / "run", max_steps=12, eval_steps=1, lr=1e-9,
                                early_stopping_patience=2), on_evaluate=lambda s: seen.append((s.step, s.last_metric)))
    assert metrics["steps"] == 3 and "early stopping" in metrics["stopped_early"]  # steps 2 and 3 no better than 1
    assert metrics["best_step"] == 1 and [step for step, _ in seen] == [1, 2, 3]
    assert seen[0][1] == metrics["best_metric"]


BERT_HEAD = {"classifier.weight", "classifier.bias"}
BERT_POOLER = {"bert.pooler.dense.weight", "bert.pooler.dense.bias"}


@pytest.mark.parametrize("method", ["head", "last-layers", "full", "lora", "lora+head", "qlora"])
def test_each_method_trains_exactly_its_parameters(method):
    model = tiny_classifier()
    every = {n for n, _ in model.named_parameters()}
    setup_method(model, TrainConfig(method=method))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    lora = {n for n in trainable if ".lora_" in n}
    if method == "head":
        assert trainable == BERT_HEAD
    elif method == "last-layers":
        assert trainable == BERT_HEAD | BERT_POOLER
    elif method == "full":
        assert trainable == every
    elif method in ("lora", "qlora"):
        assert trainable - lora == BERT_HEAD
        assert len(lora) == 2 * 13  # A and B of 2 layers x 6 linears + the pooler
    else:  # lora+head: the pooler trains in full, so it carries no adapter
        assert trainable - lora == BERT_HEAD | BERT_POOLER
        assert len(lora) == 2 * 12 and not any("pooler" in n for n in lora)
    if method == "qlora":
        assert isinstance(model.bert.encoder.layer[0].attention.self.query.base_layer, QuantLinear)
    # one optimizer step changes trainable parameters only
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    model(input_ids=torch.randint(5, 99, (4, 10)), labels=torch.tensor([0, 1, 0, 1])).loss.backward()
    build_optimizer(model, TrainConfig(method=method)).step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable


@pytest.mark.parametrize("kind, head, last", [
    ("distilbert", {"classifier"}, {"pre_classifier", "classifier"}),
    ("roberta", {"classifier.out_proj"}, {"classifier.dense", "classifier.out_proj"}),
])
def test_head_and_last_layers_per_architecture(kind, head, last):
    for method, modules in (("head", head), ("last-layers", last)):
        model = tiny_classifier(kind)
        setup_method(model, TrainConfig(method=method))
        trainable = {n.rsplit(".", 1)[0] for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == modules, method


def test_init_adapter_then_head_keeps_the_adapter_frozen(tiny_inputs, tmp_path):
    train(tiny_config(tiny_inputs, tmp_path / "lora", max_steps=2))
    adapter = tmp_path / "lora/adapter"
    metrics = train(tiny_config(tiny_inputs, tmp_path / "head", max_steps=2, method="head", init_adapter=str(adapter)))
    assert metrics["trainable_params"] == 2 * 32 + 2
    saved, tuned = load_file(str(adapter / "adapter_model.safetensors")), \
        load_file(str(tmp_path / "head/adapter/adapter_model.safetensors"))
    assert all(torch.equal(saved[k], tuned[k]) for k in saved if ".lora_" in k)  # LoRA untouched
    assert not torch.equal(saved["base_model.model.classifier.weight"], tuned["base_model.model.classifier.weight"])
    model, _, record = load_artifact(tmp_path / "head", get_task("sst2"))  # same shapes: 2 labels
    assert record["method"] == "head"
    assert torch.equal(model.classifier.weight, tuned["base_model.model.classifier.weight"])


def test_bf16_autocast_runs_on_cpu(tiny_inputs, tmp_path):
    metrics = train(tiny_config(tiny_inputs, tmp_path / "run", max_steps=2, eval_steps=0, precision="bf16"))
    assert metrics["precision"] == "bf16" and math.isfinite(json.loads(
        (tmp_path / "run/log.jsonl").read_text().splitlines()[0])["loss"])


def test_device_selection_on_cpu():
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")
    if not torch.backends.mps.is_available():
        with pytest.raises(ValueError, match="MPS"):
            resolve_device("mps")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu-7")
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"


def test_train_config_defaults_validation_and_round_trip():
    assert TrainConfig(method="full").lr == DEFAULT_LR["full"] == 5e-5
    assert TrainConfig(method="lora").lr == 1e-3 and TrainConfig().target_modules == "all-linear"
    cfg = TrainConfig(method="qlora", text_columns=["a", "b"], target_modules=["query", "value"], report_to="wandb")
    assert cfg.text_columns == ("a", "b") and cfg.report_to == ("wandb",)
    assert TrainConfig.from_yaml(cfg.to_yaml()) == cfg and TrainConfig.from_json(cfg.to_json()) == cfg
    for bad, match in (({"method": "lorax"}, "unknown method"), ({"batch_size": 0}, "--batch-size"),
                       ({"lr": -1.0}, "--lr"), ({"lora_r": 0}, "r must be"), ({"precision": "fp8"}, "precision"),
                       ({"loraplus_ratio": 0.5}, "loraplus")):
        with pytest.raises(ValueError, match=match):
            TrainConfig(**bad)


def test_checkpoint_restores_optimizer_and_rng(tiny_inputs, tmp_path):
    train(tiny_config(tiny_inputs, tmp_path / "run", max_steps=2))
    from lorakit.training.methods import load_base

    spec = get_task("sst2")
    model, _ = load_base(str(tiny_inputs / "model"), spec)
    cfg = tiny_config(tiny_inputs, tmp_path / "x")
    setup_method(model, cfg)
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(1, 4))
    torch.manual_seed(123)
    state = load_checkpoint(tmp_path / "run/checkpoints/step-000002", model, optimizer, scheduler)
    assert (state.step, state.step_in_epoch) == (2, 2)
    assert scheduler.last_epoch == 2 and all(len(s) == 3 for s in optimizer.state.values())  # step, exp_avg(_sq)
    after_restore = torch.rand(3)
    torch.manual_seed(123)
    load_checkpoint(tmp_path / "run/checkpoints/step-000002", model, optimizer, scheduler)
    assert torch.equal(after_restore, torch.rand(3))  # the RNG state comes from the checkpoint, not the caller


@pytest.mark.filterwarnings("ignore::FutureWarning")  # PEFT calls a transformers name deprecated in v5
@pytest.mark.parametrize("method", ["lora", "lora+head"])
def test_peft_reads_the_adapters_of_lora_methods(method, tmp_path):
    peft = pytest.importorskip("peft")
    from lorakit import save_adapter

    tiny_classifier().save_pretrained(tmp_path / "base")
    model = tf.BertForSequenceClassification.from_pretrained(tmp_path / "base")
    setup_method(model, TrainConfig(method=method))
    with torch.no_grad():  # as if trained: every trainable tensor moves
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    save_adapter(model, tmp_path / "adapter")
    ids = torch.randint(5, 99, (3, 9))
    ours = model.eval()(input_ids=ids).logits
    base = tf.BertForSequenceClassification.from_pretrained(tmp_path / "base")
    theirs = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()(input_ids=ids).logits
    assert torch.allclose(ours, theirs, atol=1e-6)


# ------------------------------------------------------------------ SQuAD and instruction tuning through the loop


def train_3_steps(model_dir: Path, task: str, data: Path, suffix: str, max_length: int) -> tuple[dict, dict]:
    """A 3-step run on data/train.SUFFIX, evaluated at its end on data/dev.SUFFIX into data/out: metrics, and the
    evaluation of the one split."""
    cfg = TrainConfig(model=str(model_dir), task=task, train_file=str(data / f"train.{suffix}"),
                      eval_file=str(data / f"dev.{suffix}"), batch_size=4, max_steps=3, eval_steps=3, seed=0,
                      output=str(data / "out"), max_length=max_length)
    metrics = train(cfg)
    return metrics, next(iter(metrics["eval"].values()))


def test_squad_trains_through_the_loop(tmp_path, capsys):
    """A tiny random BertForQuestionAnswering on a few SQuAD-shaped questions: runs and reports EM / F1."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tf.BertTokenizer(str(model_dir / "vocab.txt")).save_pretrained(model_dir)
    torch.manual_seed(0)
    tf.BertForQuestionAnswering(tf.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                              intermediate_size=37, max_position_embeddings=64)).save_pretrained(model_dir)
    rng = random.Random(0)

    def article(title: str, n: int) -> dict:
        paragraphs = []
        for p in range(n):
            words = [rng.choice(WORDS) for _ in range(12)]
            context = " ".join(words)
            answer = " ".join(words[4:6])
            paragraphs.append({"context": context, "qas": [
                {"id": f"{title}-{p}", "question": f"{words[3]} {words[6]}",
                 "answers": [{"text": answer, "answer_start": context.index(answer)}]}]})
        return {"title": title, "paragraphs": paragraphs}

    for name, n in (("train.json", 12), ("dev.json", 4)):
        (tmp_path / name).write_text(json.dumps({"version": "1.1", "data": [article(name, n)]}))
    metrics, validation = train_3_steps(model_dir, "squad", tmp_path, "json", max_length=32)
    assert {"exact_match", "f1", "loss"} <= set(validation) and metrics["main_metric"] == "f1"
    assert 0.0 <= validation["f1"] <= 100.0 and math.isfinite(validation["loss"])
    assert metrics["steps"] == 3 and (tmp_path / "out/adapter/adapter_model.safetensors").is_file()
    capsys.readouterr()
    question, context = "w3 w4", rng.choice(article("x", 1)["paragraphs"])["context"]
    assert main(["predict", "--adapter", str(tmp_path / "out"), "--question", question, "--context", context]) == 0
    answer = capsys.readouterr().out.strip()
    assert answer and answer in context  # one span of the passage, on one line
    assert main(["predict", "--adapter", str(tmp_path / "out"), "--question", question]) == 2
    assert "--question and --context go together" in capsys.readouterr().err


def test_instruction_tuning_trains_through_the_loop(tmp_path, capsys):
    """A tiny random Llama with a word-level tokenizer on a few Alpaca records: loss / perplexity, generations."""
    words = ["[PAD]", "[UNK]", "</s>", "<s>", "hi", "hello", "there", "how", "are", "you", "fine", "say", "to", "bob",
             "###", "Instruction:", "Input:", "Response:"]
    model_dir = tmp_path / "model"
    word_tokenizer(words).save_pretrained(model_dir)
    torch.manual_seed(0)
    tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=2, intermediate_size=37, max_position_embeddings=128,
                                       pad_token_id=0, eos_token_id=2, bos_token_id=3)).save_pretrained(model_dir)
    rng = random.Random(0)
    for name, n in (("train.jsonl", 16), ("dev.jsonl", 4)):
        records = [{"instruction": " ".join(rng.choice(words[4:14]) for _ in range(rng.randint(1, 4))), "input": "",
                    "output": " ".join(rng.choice(words[4:14]) for _ in range(rng.randint(1, 4)))} for _ in range(n)]
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    metrics, validation = train_3_steps(model_dir, "instruct", tmp_path, "jsonl", max_length=64)
    assert {"token_accuracy", "loss", "perplexity"} <= set(validation) and metrics["main_metric"] == "token_accuracy"
    assert validation["perplexity"] == pytest.approx(math.exp(validation["loss"]), rel=1e-6)
    before = next(iter(metrics["eval_before_training"].values()))  # the untrained model's held-out loss
    assert math.isfinite(before["loss"]) and before["perplexity"] == pytest.approx(math.exp(before["loss"]), rel=1e-6)
    for name in ("generations_before.jsonl", "generations_after.jsonl"):
        lines = [json.loads(x) for x in (tmp_path / "out" / name).read_text().splitlines()]
        assert len(lines) == 4 and all(isinstance(x["generated"], str) and "prompt" in x for x in lines)
    # the saved adapter reloads through `lorakit eval` with the same held-out loss, and answers prompts
    assert main(["eval", "--adapter", str(tmp_path / "out"), "--output", str(tmp_path / "eval.json")]) == 0
    reloaded = next(iter(json.loads((tmp_path / "eval.json").read_text())["eval"].values()))
    assert reloaded["loss"] == pytest.approx(validation["loss"], rel=1e-6)
    capsys.readouterr()
    assert main(["predict", "--adapter", str(tmp_path / "out"), "--prompt", "say hi", "--prompt", "how are you"]) == 0
    assert len(capsys.readouterr().out.split("\n\n")) == 2  # two answers, a blank line between them


def test_causal_lm_accumulation_weights_by_labelled_tokens():
    """Micro-batches with different numbers of response tokens: the accumulated gradient is that of one batch."""
    from lorakit import LoraConfig, add_lora

    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(tiny_llama_config())
    model = add_lora(model, LoraConfig(r=4, target_modules="all-linear"))
    randomize_lora_b(model)
    ids = torch.randint(5, 99, (4, 10))
    labels = ids.clone()
    labels[:, :3] = -100
    labels[2:, :8] = -100  # the second micro-batch has far fewer labelled tokens
    batches = [{"input_ids": ids[:2], "labels": labels[:2]}, {"input_ids": ids[2:], "labels": labels[2:]}]
    loss_accumulated = accumulate_gradients(model, batches, 4, torch.device("cpu"), "fp32")
    accumulated = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    whole = model(input_ids=ids, labels=labels).loss  # transformers: the mean over all labelled tokens
    whole.backward()
    assert loss_accumulated == pytest.approx(whole.item(), rel=1e-5)
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert all(torch.allclose(accumulated[n], p.grad, atol=1e-6) for n, p in trained)


def test_saved_adapter_has_a_model_card(tiny_inputs, tmp_path):
    """adapter/README.md: the hub's YAML front matter, base model, method, data, metrics, and a `lorakit train`
    command that makes the same run (parsed back, it gives the run's settings)."""
    import shlex

    import yaml

    from lorakit.cli.flags import train_config_from_args
    from lorakit.cli.main import build_parser

    cfg = tiny_config(tiny_inputs, tmp_path / "run", lora_r=4, target_modules=("query", "value"), use_rslora=True)
    metrics = train(cfg)
    card = (tmp_path / "run" / "adapter" / "README.md").read_text()
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "lorakit" and meta["tags"] == ["lora"] and meta["base_model"]
    accuracy = metrics["eval"]["validation"]["accuracy"]
    assert "method: lora (r 4, alpha 8, targets query, value)" in body and "task csv" in body
    assert f"validation accuracy {accuracy:.4f}" in body and str(tiny_inputs / "train.csv") in body
    command = next(line for line in body.splitlines() if line.startswith("lorakit train"))
    assert command.startswith(f"lorakit train --model {tiny_inputs / 'model'} --task csv ")
    again = train_config_from_args(build_parser().parse_args(shlex.split(command)[1:]))
    assert again == cfg
