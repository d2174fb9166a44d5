# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Loading a saved adapter, and what merging buys at inference
#
# An adapter directory holds `adapter_config.json` and `adapter_model.safetensors` in PEFT's format: a few MB
# instead of the whole model. This notebook trains a small one (or uses `LORAKIT_ADAPTER=dir`), loads it into a
# fresh base model, checks the accuracy, and times inference unmerged, merged, and as a plain merged model.
#
# Run again, it loads the adapter trained before with the same settings (LORAKIT_EXAMPLE_OUT/adapter-run, default
# runs/examples) and trains afresh where the settings differ or the run did not finish.
#
# Size and time: LoRA on 2,000 SST-2 sentences (one epoch, 63 steps), then accuracy and timing on the first 256
# dev sentences (LORAKIT_DEV_SENTENCES=872 for all of them: about 3x the timing part). 14 minutes measured on one
# CPU thread of a 2-core machine shared with other jobs (load average 16: 6 min training, 5 min timing), so
# expect a few minutes on an idle one.

# %%
import os
import shutil
import time
from pathlib import Path

import torch

from lorakit import load_adapter, merge_and_unload, merge_lora, unmerge_lora
from lorakit.models.loading import load_classifier
from lorakit.training.run import train
from lorakit.training.config import TrainConfig

SMALL = os.environ.get("LORAKIT_EXAMPLE_SMALL") == "1"
DEV_SENTENCES = int(os.environ.get("LORAKIT_DEV_SENTENCES", "256"))  # 872 = the whole dev set (~3x the time)
OUT = Path(os.environ.get("LORAKIT_EXAMPLE_OUT", "runs/examples"))
DATA = next(p for p in (Path("../shared/data/sst2"), Path(__file__).resolve().parents[2] / "shared/data/sst2") if p.exists())
torch.manual_seed(0)

# %%
adapter = os.environ.get("LORAKIT_ADAPTER")
run = OUT / "adapter-run"
cfg = TrainConfig(model="minilm", task="sst2", data_dir=str(DATA), max_train_samples=64 if SMALL else 2000,
                  max_eval_samples=64 if SMALL else None, max_length=64, epochs=1, output=str(run))
earlier = TrainConfig.from_yaml((run / "config.yaml").read_text()).to_dict() if (run / "metrics.json").is_file() else {}
if adapter is None and earlier and TrainConfig.from_dict({**earlier, "output": str(run)}).to_yaml() == cfg.to_yaml():
    adapter = run / "adapter"  # run again: the adapter trained before, with the same settings
elif adapter is None:
    shutil.rmtree(run, ignore_errors=True)  # an earlier or interrupted run's checkpoints would refuse a fresh run
    train(cfg)
    adapter = run / "adapter"
print(sorted(p.name for p in Path(adapter).iterdir()), sum(p.stat().st_size for p in Path(adapter).iterdir()), "bytes")

# %% [markdown]
# ## Load into a fresh base model and classify

# %%
model, tokenizer = load_classifier("minilm", num_labels=2)
model = load_adapter(model, adapter).eval()
sentences = [line.split("\t")[0] for line in (DATA / "glue" / "dev.tsv").read_text().splitlines()[1:]]
labels = torch.tensor([int(line.split("\t")[1]) for line in (DATA / "glue" / "dev.tsv").read_text().splitlines()[1:]])
n = 64 if SMALL else min(DEV_SENTENCES, len(sentences))  # the first 256 of SST-2's 872 dev sentences
batch = tokenizer(sentences[:n], return_tensors="pt", padding=True, truncation=True, max_length=64)
with torch.no_grad():
    unmerged_logits = model(**batch).logits
print("dev accuracy:", (unmerged_logits.argmax(-1) == labels[:n]).float().mean().item())


# %% [markdown]
# ## Inference time: unmerged adapter vs merged weights

# %%
def timed(m, repeats=2 if SMALL else 3):
    with torch.no_grad():
        m(**batch)
        start = time.perf_counter()
        for _ in range(repeats):
            m(**batch)
    return (time.perf_counter() - start) / repeats


t_unmerged = timed(model)
merge_lora(model)
t_merged = timed(model)
with torch.no_grad():
    assert torch.allclose(model(**batch).logits, unmerged_logits, atol=1e-4)
unmerge_lora(model)
plain = merge_and_unload(model)
t_plain = timed(plain)
print(f"unmerged {t_unmerged * 1e3:.0f} ms, merged {t_merged * 1e3:.0f} ms, merge_and_unload {t_plain * 1e3:.0f} ms "
      f"for {n} sentences")
