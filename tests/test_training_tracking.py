"""--report-to tensorboard and wandb (offline) on a tiny run, read back with the tools' own readers: every training
loss at its step, the evaluation metrics at the evaluation steps, and the run's config, all equal to log.jsonl's.

TensorBoard: tensorboard's EventAccumulator over <run>/tensorboard. W&B: the offline run file
<run>/wandb/offline-run-*/run-*.wandb, a LevelDB-style log of wandb's own protobuf Records (wandb 0.31 dropped its
Python reader, wandb.sdk.internal.datastore; the framing is read here, each record is parsed by wandb's protobuf).
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from helpers import make_tiny_run_inputs, tiny_config

from lorakit.training.run import train
from lorakit.training.config import TrainConfig


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory) -> Path:
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    root = tmp_path_factory.mktemp("tracking")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WANDB_MODE", "offline")  # no account, no network: the run is written to disk only
        env.setenv("WANDB_SILENT", "true")
        train(tiny_config(make_tiny_run_inputs(root / "inputs"), root / "run", report_to=("tensorboard", "wandb")))
    return root / "run"


def logged(run: Path) -> tuple[dict[int, float], dict[int, dict[str, float]], dict]:
    """From log.jsonl: training loss by step, evaluation metrics (flattened like the reporters) by step, config."""
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in records if "loss" in r}
    evals = {r["step"]: {f"eval/validation/{k}": v for k, v in r["eval"]["validation"].items()}
             for r in records if "eval" in r}
    config = TrainConfig.from_yaml((run / "config.yaml").read_text()).to_dict()
    return losses, evals, json.loads(json.dumps(config))  # tuples as lists, as JSON holds them


def test_tensorboard_events_hold_the_losses_metrics_and_config(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    losses, evals, config = logged(tracked_run)
    events = EventAccumulator(str(tracked_run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0}).Reload()
    assert {e.step: e.value for e in events.Scalars("loss")} == pytest.approx(losses, rel=1e-6)  # float32
    assert sorted(losses) == [1, 2, 3, 4] and sorted(evals) == [2, 4]
    for tag in evals[2]:
        assert {e.step: e.value for e in events.Scalars(tag)} == pytest.approx(
            {step: metrics[tag] for step, metrics in evals.items()}, rel=1e-6), tag
    text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert json.loads(text) == config and config["max_steps"] == 4


def wandb_records(run: Path) -> list:
    """The protobuf Records of the offline run file: a 7-byte file header (":W&B", 0xBEE1, version 0), then 32 KiB
    blocks of chunks, each chunk a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto.wandb_internal_pb2 import Record

    files = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    data, block = files[0].read_bytes(), 32768
    assert data[:7] == b":W&B\xe1\xbe\x00"
    records, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is zero padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_offline_run_holds_the_losses_metrics_and_config(tracked_run):
    losses, evals, config = logged(tracked_run)
    records = wandb_records(tracked_run)
    history: dict[int, dict] = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history[row["_step"]] = row
    assert sorted(history) == [1, 2, 3, 4]
    assert {step: row["loss"] for step, row in history.items()} == losses  # JSON round trip: exact
    for step, row in history.items():
        assert {k: row[k] for k in evals.get(step, {})} == evals.get(step, {}), step
        assert ("eval/validation/accuracy" in row) == (step in evals)
    runs = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    saved = {item.key: json.loads(item.value_json) for item in runs[0].config.update if item.key != "_wandb"}
    assert saved == config and config["report_to"] == ["tensorboard", "wandb"]
