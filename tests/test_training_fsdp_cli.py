"""`torchrun --nproc-per-node 2 -m lorakit train ... --fsdp` on CPU (gloo), instruction tuning of a tiny random Llama
with QLoRA: the loss curve equals one process's with the same global batch, the evaluations and generations run
on both ranks, the checkpoints and the adapter are gathered to rank 0 in the single-process format, a sharded
--resume continues the same curve, and the saved adapter reloads (`lorakit eval`) with the held-out loss the sharded
run measured."""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers as tf
from safetensors.torch import load_file

from lorakit.cli.main import main
from lorakit.training.config import TrainConfig
from lorakit.training.run import train
from helpers import step_losses, word_tokenizer

SRC = Path(__file__).resolve().parents[1] / "src"
WORDS = ["[PAD]", "[UNK]", "</s>", "<s>", "hi", "hello", "there", "how", "are", "you", "fine", "say", "to", "bob",
         "###", "Instruction:", "Input:", "Response:"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A word-level tokenizer, a tiny random Llama (sizes a multiple of the NF4 block of 64) and Alpaca records."""
    root = tmp_path_factory.mktemp("fsdp_train")
    word_tokenizer(WORDS).save_pretrained(root / "model")
    torch.manual_seed(0)
    tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=32, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=2, intermediate_size=128, max_position_embeddings=128,
                                       pad_token_id=0, eos_token_id=2, bos_token_id=3)).save_pretrained(root / "model")
    rng = random.Random(0)
    for name, n in (("train.jsonl", 16), ("dev.jsonl", 3)):
        records = [{"instruction": " ".join(rng.choice(WORDS[4:14]) for _ in range(rng.randint(1, 4))), "input": "",
                    "output": " ".join(rng.choice(WORDS[4:14]) for _ in range(rng.randint(1, 4)))} for _ in range(n)]
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def _settings(inputs: Path, batch_size: int) -> dict:
    """The run, as TrainConfig fields; the same as flags below. 4 steps of 4 rows (1 x 4, or 2 ranks x 2)."""
    return dict(model=str(inputs / "model"), task="instruct", train_file=str(inputs / "train.jsonl"),
                eval_file=str(inputs / "dev.jsonl"), method="qlora", batch_size=batch_size, max_steps=4, eval_steps=2,
                seed=0, lora_dropout=0.0, max_length=32, lr=1e-2, device="cpu")


def _flags(settings: dict) -> list[str]:
    return [part for key, value in settings.items() for part in (f"--{key.replace('_', '-')}", str(value))]


def _torchrun_fsdp(inputs: Path, *extra: str) -> None:
    """`torchrun --nproc-per-node 2 -m lorakit train ... --fsdp`: 2 ranks x 2 rows."""
    launcher = Path(sys.executable).parent / "torchrun"
    command = [str(launcher)] if launcher.is_file() else [sys.executable, "-m", "torch.distributed.run"]
    command += ["--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
                "-m", "lorakit", "train", *_flags(_settings(inputs, batch_size=2)), "--fsdp", "--threads", "1", *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]


def _close(expected: Path, gathered: Path) -> None:
    """The same safetensors keys and shapes, values within 1e-3 (Adam's sqrt(v) amplifies reduction-order noise)."""
    a, b = load_file(expected), load_file(gathered)
    assert sorted(a) == sorted(b), gathered
    for key, tensor in a.items():
        assert b[key].shape == tensor.shape, (gathered, key)
        assert (b[key].float() - tensor.float()).abs().max().item() < 1e-3, (gathered, key)


@pytest.fixture(scope="module")
def runs(inputs, tmp_path_factory) -> tuple[Path, dict, Path]:
    """(the single-process output, its metrics, the 2-rank --fsdp output)."""
    root = tmp_path_factory.mktemp("fsdp_runs")
    single = train(TrainConfig(**_settings(inputs, batch_size=4), output=str(root / "single")))
    _torchrun_fsdp(inputs, "--output", str(root / "fsdp"))
    return root / "single", single, root / "fsdp"


def test_fsdp_train_matches_one_process_and_its_adapter_reloads(runs, tmp_path):
    single_out, single, out = runs
    curve_1, curve_2 = step_losses(single_out), step_losses(out)
    assert list(curve_1) == list(curve_2) == [1, 2, 3, 4]
    for step, loss in curve_1.items():
        assert math.isclose(curve_2[step], loss, rel_tol=1e-5), (step, loss, curve_2[step])
    assert curve_1[4] < curve_1[1]  # it trained
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["global_batch_size"] == 4
    assert "fsdp: true" in (out / "config.yaml").read_text()
    # NF4 codes and constants, norms, embeddings, LoRA: rank 0 holds about half (dim 0 is cut as torch.chunk cuts
    # it, the odd row to rank 0, and this model has many tiny constant tensors; the 0-d offsets stay whole)
    share = metrics["model_bytes_per_process"] / single["model_bytes_per_process"]
    assert 0.45 < share < 0.6, share
    loss_1, loss_2 = (next(iter(m["eval"].values()))["loss"] for m in (single, metrics))
    assert math.isclose(loss_1, loss_2, rel_tol=1e-4), (loss_1, loss_2)  # evaluated by 2 ranks, gathered
    for name in ("generations_before.jsonl", "generations_after.jsonl"):
        assert len((out / name).read_text().splitlines()) == 3

    # gathered to rank 0: the single-process files, full tensors
    for relative in ("adapter/adapter_model.safetensors", "checkpoints/step-000004/trainable.safetensors",
                     "checkpoints/step-000004/optimizer.safetensors", "checkpoints/best/trainable.safetensors"):
        _close(single_out / relative, out / relative)
    assert any(".lora_B." in k for k in load_file(out / "adapter/adapter_model.safetensors"))

    # the adapter reloads through `lorakit eval` (base quantized while loading, adapter over it), same held-out loss
    assert main(["eval", "--adapter", str(out), "--output", str(tmp_path / "eval.json")]) == 0
    reloaded = next(iter(json.loads((tmp_path / "eval.json").read_text())["eval"].values()))
    assert math.isclose(reloaded["loss"], loss_2, rel_tol=1e-6), (reloaded["loss"], loss_2)


@pytest.mark.slow  # one more torchrun of 2 processes: ~20 s alone, over a minute on a busy machine
def test_fsdp_resume_continues_the_curve(inputs, runs, tmp_path):
    """--resume from the step-2 checkpoint: each rank takes its shard of the weights and of Adam's moments back."""
    single_out, _, out = runs
    curve_1 = step_losses(single_out)
    shutil.copytree(out, tmp_path / "resumed")
    _torchrun_fsdp(inputs, "--output", str(tmp_path / "resumed"), "--resume",
                   str(tmp_path / "resumed/checkpoints/step-000002"))
    resumed = step_losses(tmp_path / "resumed")
    for step in (3, 4):
        assert math.isclose(resumed[step], curve_1[step], rel_tol=1e-5), (step, resumed[step], curve_1[step])
    _close(single_out / "adapter/adapter_model.safetensors",
           tmp_path / "resumed/adapter/adapter_model.safetensors")
