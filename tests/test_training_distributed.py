"""Data-parallel training on CPU (gloo): 2 processes x batch 4 follow the same loss curve as 1 process x batch 8."""
from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

from lorakit.training import distributed
from lorakit.training.run import train
from lorakit.training.config import TrainConfig
from helpers import step_losses


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(inputs: Path, output: Path, batch_size: int, **changes) -> TrainConfig:
    settings = dict(model=str(inputs / "model"), task="csv", train_file=str(inputs / "train.csv"),
                    eval_file=str(inputs / "dev.csv"), batch_size=batch_size, max_steps=4, eval_steps=2, seed=0,
                    lora_dropout=0.0, output=str(output), max_length=32, device="cpu")
    return TrainConfig(**{**settings, **changes})


def _worker(rank: int, world: int, port: int, cfg: TrainConfig, results: Path) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    metrics = train(cfg)
    (results / f"rank{rank}.json").write_text(json.dumps(metrics))


def test_two_gloo_processes_match_one_process(no_dropout_inputs, tmp_path):
    single = train(_config(no_dropout_inputs, tmp_path / "single", batch_size=8))

    results = tmp_path / "results"
    results.mkdir()
    cfg = _config(no_dropout_inputs, tmp_path / "ddp", batch_size=4)
    mp.spawn(_worker, args=(2, _free_port(), cfg, results), nprocs=2, join=True)

    ranks = [json.loads((results / f"rank{r}.json").read_text()) for r in range(2)]
    curve_1, curve_2 = step_losses(tmp_path / "single"), step_losses(tmp_path / "ddp")
    assert list(curve_1) == list(curve_2) == [1, 2, 3, 4]
    for step, loss in curve_1.items():
        assert math.isclose(curve_2[step], loss, rel_tol=1e-5), (step, loss, curve_2[step])
    for metrics in ranks:  # both ranks hold the gathered (single-process) evaluation
        assert metrics["world_size"] == 2 and metrics["global_batch_size"] == 8
        assert metrics["examples_seen"] == single["examples_seen"]
        assert metrics["best_step"] == single["best_step"]
        assert math.isclose(metrics["best_metric"], single["best_metric"], rel_tol=1e-6)
    for split, values in single["eval"].items():
        for name, value in values.items():
            assert math.isclose(ranks[0]["eval"][split][name], value, rel_tol=1e-5, abs_tol=1e-7), (split, name)
    evals_1 = [json.loads(x)["eval"] for x in (tmp_path / "single/log.jsonl").read_text().splitlines() if '"eval"' in x]
    evals_2 = [json.loads(x)["eval"] for x in (tmp_path / "ddp/log.jsonl").read_text().splitlines() if '"eval"' in x]
    assert len(evals_1) == len(evals_2) == 2
    for a, b in zip(evals_1, evals_2):
        for split in a:
            for name in a[split]:
                assert math.isclose(a[split][name], b[split][name], rel_tol=1e-5, abs_tol=1e-7), (split, name)

    # only rank 0 wrote: one set of files, one log, the artifact and metrics.json
    output = tmp_path / "ddp"
    for name in ("metrics.json", "config.yaml", "log.jsonl", "adapter/adapter_model.safetensors",
                 "checkpoints/best/trainable.safetensors", "checkpoints/step-000004/trainable.safetensors"):
        assert (output / name).is_file(), name
    assert json.loads((output / "metrics.json").read_text())["world_size"] == 2
    assert not distributed.is_distributed()  # this process never joined a group


def test_shards_cover_each_global_batch_once():
    batch = list(range(7))
    parts = [distributed.shard(batch, 3, r) for r in range(3)]
    assert sum(parts, []) == batch and [len(p) for p in parts] == [2, 2, 3]
    assert distributed.shard([5], 2, 0) == [] and distributed.shard([5], 2, 1) == [5]
    assert distributed.world_size() == 1 and distributed.is_main() and distributed.all_gather_object(3) == [3]
