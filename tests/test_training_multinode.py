"""Two torchrun "nodes" on this machine (README's multi-node command, c10d rendezvous on 127.0.0.1, one process
each, gloo) follow the loss curve of one process with the same global batch."""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path


from lorakit.training.run import train
from lorakit.training.config import TrainConfig
from helpers import step_losses

SRC = Path(__file__).resolve().parents[1] / "src"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun() -> list[str]:
    script = Path(sys.executable).parent / "torchrun"  # the launcher installed with torch, as README runs it
    return [str(script)] if script.is_file() else [sys.executable, "-m", "torch.distributed.run"]


def _train_args(inputs: Path, output: Path, batch_size: int) -> list[str]:
    return ["--model", str(inputs / "model"), "--task", "csv", "--train-file", str(inputs / "train.csv"),
            "--eval-file", str(inputs / "dev.csv"), "--batch-size", str(batch_size), "--max-steps", "4",
            "--eval-steps", "2", "--seed", "0", "--lora-dropout", "0", "--max-length", "32", "--device", "cpu",
            "--threads", "1", "--output", str(output)]


def test_two_nodes_match_one_process(no_dropout_inputs, tmp_path):
    inputs = no_dropout_inputs
    single = train(TrainConfig(model=str(inputs / "model"), task="csv", train_file=str(inputs / "train.csv"),
                               eval_file=str(inputs / "dev.csv"), batch_size=8, max_steps=4, eval_steps=2, seed=0,
                               lora_dropout=0.0, output=str(tmp_path / "single"), max_length=32, device="cpu"))
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    nodes = []
    for node_rank in (0, 1):  # torchrun --nnodes 2 --node-rank K --rdzv-backend c10d --rdzv-endpoint host0:PORT
        command = [*_torchrun(), "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(node_rank),
                   "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "lorakit-test",
                   "-m", "lorakit", "train", *_train_args(inputs, tmp_path / "nodes", batch_size=4)]
        log = open(tmp_path / f"node{node_rank}.log", "w")
        nodes.append((subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    for proc, log in nodes:
        try:
            code = proc.wait(timeout=300)
        finally:
            log.close()
        assert code == 0, (tmp_path / f"node{nodes.index((proc, log))}.log").read_text()[-3000:]

    curve_1, curve_2 = step_losses(tmp_path / "single"), step_losses(tmp_path / "nodes")
    assert list(curve_1) == list(curve_2) == [1, 2, 3, 4]
    for step, loss in curve_1.items():
        assert math.isclose(curve_2[step], loss, rel_tol=1e-5), (step, loss, curve_2[step])
    metrics = json.loads((tmp_path / "nodes" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["global_batch_size"] == 8
    assert math.isclose(metrics["best_metric"], single["best_metric"], rel_tol=1e-6)
    assert (tmp_path / "nodes" / "adapter" / "adapter_model.safetensors").is_file()
