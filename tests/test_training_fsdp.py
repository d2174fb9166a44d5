"""FSDP2 on CPU (gloo), training/fsdp.py: 2 ranks x 2 rows follow the loss curve of 1 process x 4 rows, for LoRA and
QLoRA (NF4 codes sharded as frozen parameters), each rank holds about half of the parameter bytes, and the adapter
gathered to rank 0 equals the single-process one in PEFT's format."""
from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import transformers as tf
from safetensors.torch import load_file

from lorakit import LoraConfig, QuantConfig, add_lora, save_adapter
from lorakit.quant.linear import QuantLinear, quantize_model

STEPS, ROWS, LENGTH = 4, 4, 12


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model(quantized: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=99, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, max_position_embeddings=64)
    model = tf.LlamaForCausalLM(cfg)
    if quantized:
        quantize_model(model, QuantConfig(kind="nf4", double_quant=True))
    torch.manual_seed(1)
    return add_lora(model, LoraConfig(r=4, alpha=8, target_modules="all-linear", dropout=0.0))


def _batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randint(0, 99, (ROWS, LENGTH), generator=g)] * STEPS  # one batch again: the loss must fall


def _train(model, rows: slice, reduce) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for ids in _batches():
        ids = ids[rows]
        loss = model(input_ids=ids, labels=ids).loss  # mean over this rank's tokens (all rows the same length)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(reduce(loss.detach()))
    return losses


def _worker(rank: int, world: int, port: int, quantized: bool, out: Path) -> None:
    import torch.distributed as dist

    from lorakit.training.fsdp import local_parameter_bytes, save_gathered_adapter, shard_model

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo")
    try:
        model = shard_model(_model(quantized))

        def mean_over_ranks(loss):
            dist.all_reduce(loss)
            return loss.item() / world

        per = ROWS // world
        losses = _train(model, slice(rank * per, (rank + 1) * per), mean_over_ranks)
        save_gathered_adapter(model, out / "adapter")
        record = {"losses": losses, "bytes": local_parameter_bytes(model)}
        (out / f"rank{rank}.json").write_text(json.dumps(record))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("quantized", [False, True], ids=["lora", "qlora"])
def test_fsdp_two_ranks_match_one_process(tmp_path, quantized):
    single = _model(quantized)
    full_bytes = sum(p.numel() * p.element_size() for p in single.parameters())
    if quantized:  # the codes that will shard: buffers here, frozen parameters under FSDP
        full_bytes += sum(b.numel() * b.element_size() for m in single.modules() if isinstance(m, QuantLinear)
                          for b in m.buffers() if b.dim() > 0)
    curve_1 = _train(single, slice(None), lambda loss: loss.item())
    save_adapter(single, tmp_path / "single")

    mp.spawn(_worker, args=(2, _free_port(), quantized, tmp_path), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for record in ranks:
        assert len(record["losses"]) == STEPS
        for a, b in zip(curve_1, record["losses"]):
            assert math.isclose(a, b, rel_tol=1e-5), (curve_1, record["losses"])
        assert 0.45 < record["bytes"] / full_bytes < 0.56, (record["bytes"], full_bytes)  # about half each
    assert curve_1[-1] < curve_1[0]  # it trained

    expected, gathered = load_file(tmp_path / "single/adapter_model.safetensors"), load_file(
        tmp_path / "adapter/adapter_model.safetensors")
    assert sorted(expected) == sorted(gathered) and any(".lora_B." in k for k in gathered)
    for key in expected:
        # Adam divides by sqrt(v): reduction-order noise in near-zero gradients shows up at ~1e-4 after 4 steps
        diff = (expected[key] - gathered[key]).abs().max().item()
        assert diff < 1e-3, (key, diff)
    config = json.loads((tmp_path / "adapter/adapter_config.json").read_text())
    assert config == json.loads((tmp_path / "single/adapter_config.json").read_text())
