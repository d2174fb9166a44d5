# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Fine-tuning MiniLM on SST-2: last layers vs LoRA vs all layers
#
# The same model, data, epochs and seed; only what trains differs. `lorakit.training.run.train` is the loop behind
# `lorakit train`; its `TrainConfig` fields are the command's flags.
#
# Run again, it reads back each finished run with the same settings from its output folder (LORAKIT_EXAMPLE_OUT,
# default runs/examples) and trains afresh where the settings differ or a run did not finish.
#
# Size and time: 4,000 SST-2 training sentences, one epoch, the 872 dev sentences: `make demo`'s settings for
# three of its methods, whose training took 15 + 42 + 69 s on 2 idle CPU cores (README's table), so about
# 3 minutes in all with loading and evaluation; on one thread, about twice that.
# LORAKIT_EXAMPLE_SMALL=1 (64 sentences, seconds) only checks that everything runs.

# %%
import json
import os
import shutil
from pathlib import Path

from lorakit.training.run import train
from lorakit.training.config import TrainConfig

SMALL = os.environ.get("LORAKIT_EXAMPLE_SMALL") == "1"
OUT = Path(os.environ.get("LORAKIT_EXAMPLE_OUT", "runs/examples"))
DATA = next(p for p in (Path("../shared/data/sst2"), Path(__file__).resolve().parents[2] / "shared/data/sst2") if p.exists())

base = TrainConfig(model="minilm", task="sst2", data_dir=str(DATA), max_train_samples=64 if SMALL else 4000,
                   max_eval_samples=64 if SMALL else None, max_length=64, epochs=1, seed=0)

# %% [markdown]
# ## Three methods
# - `last-layers`: the classifier and the layer below it (BERT's pooler): the seeds' "fine-tune the last layers";
# - `lora`: LoRA (r = 8) on every linear layer below the head, plus the head;
# - `full`: every parameter, at a ten times smaller learning rate (the defaults differ per method).

# %%
def same_settings(recorded: Path, cfg: TrainConfig) -> bool:
    """Whether a finished run's config.yaml holds cfg's settings (its output directory aside)."""
    earlier = TrainConfig.from_yaml(recorded.read_text()).to_dict()
    return TrainConfig.from_dict({**earlier, "output": cfg.output}).to_yaml() == cfg.to_yaml()


results = {}
for method in ("last-layers", "lora", "full"):
    cfg = TrainConfig.from_dict({**base.to_dict(), "method": method, "lr": None, "output": str(OUT / method)})
    finished, recorded = OUT / method / "metrics.json", OUT / method / "config.yaml"
    if finished.is_file() and same_settings(recorded, cfg):
        metrics = json.loads(finished.read_text())  # run again: the finished run is read back, not trained again
    else:
        shutil.rmtree(OUT / method, ignore_errors=True)  # an interrupted run's checkpoints would refuse a fresh run
        metrics = train(cfg)
    results[method] = metrics
    print(method, {k: metrics[k] for k in ("trainable_params", "train_seconds") if k in metrics})

# %%
print(f"{'method':12s} {'accuracy':>9s} {'trainable':>12s}")
for method, m in results.items():
    accuracy = m["eval"]["validation"]["accuracy"]  # the best checkpoint's metrics, per eval split
    print(f"{method:12s} {accuracy:9.4f} {m['trainable_params']:12,}")
