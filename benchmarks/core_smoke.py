"""The library as `pip install lorakit` (no extras) installs it: run by check_core_install.sh inside that venv.

add_lora / save_adapter / load_adapter / merge_and_unload / quantize_model / lorakit.peft's get_peft_model (peft not
installed) on a tiny random BERT, then the `lorakit` script: --help works, `params` works, `train` names its extra.
Exits non-zero on the first failure.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import transformers as tf

import lorakit
from lorakit import (LoraConfig, QuantConfig, add_lora, load_adapter, merge_and_unload, parameter_report,
                     quantize_model, save_adapter)

EXTRAS_ONLY = ("datasets", "optuna", "matplotlib", "sqlalchemy", "scipy")
absent = [name for name in EXTRAS_ONLY if importlib.util.find_spec(name) is None]
assert absent == list(EXTRAS_ONLY), f"installed without being asked for: {sorted(set(EXTRAS_ONLY) - set(absent))}"
print(f"lorakit {lorakit.__version__} from {Path(lorakit.__file__).parent}; torch {torch.__version__}, "
      f"transformers {tf.__version__}; not installed: {', '.join(absent)}")

work = Path(tempfile.mkdtemp())
words = [f"w{i}" for i in range(60)]
(work / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
torch.manual_seed(0)
config = tf.BertConfig(vocab_size=65, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=37, max_position_embeddings=64, num_labels=2)
tf.BertForSequenceClassification(config).save_pretrained(work / "base")
tf.BertTokenizer(str(work / "vocab.txt")).save_pretrained(work / "base")
batch = {"input_ids": torch.randint(5, 65, (3, 9)), "attention_mask": torch.ones(3, 9, dtype=torch.long)}


def fresh():
    return tf.AutoModelForSequenceClassification.from_pretrained(work / "base").eval()


def logits(model):
    with torch.no_grad():
        return model.eval()(**batch).logits


model = add_lora(fresh(), LoraConfig(r=4, alpha=8, target_modules="all-linear"))
with torch.no_grad():
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.normal_(0, 0.1)  # what training would do: the adapter now changes the output
adapted = logits(model)
assert not torch.allclose(adapted, logits(fresh()))
save_adapter(model, work / "adapter")
reloaded = load_adapter(fresh(), work / "adapter")
torch.testing.assert_close(logits(reloaded), adapted)
torch.testing.assert_close(logits(merge_and_unload(reloaded)), adapted, rtol=1e-4, atol=1e-5)
qlora = add_lora(quantize_model(fresh(), QuantConfig(kind="nf4")), LoraConfig(target_modules=["query", "value"]))
assert logits(qlora).shape == (3, 2)
import lorakit.peft  # noqa: E402  PEFT's names on lorakit, peft itself not installed
assert importlib.util.find_spec("peft") is None and lorakit.peft.get_peft_model(
    fresh(), lorakit.peft.LoraConfig(task_type="SEQ_CLS", r=4)).get_nb_trainable_parameters()[0] > 0
print(f"add_lora / save_adapter / load_adapter / merge_and_unload / quantize_model: ok "
      f"({parameter_report(model).summary()})")

script = Path(sys.executable).parent / "lorakit"
for argv, code, expected in ((["--help"], 0, "usage: lorakit"), (["train", "--help"], 0, "usage: lorakit train"),
                             (["params", "--model", str(work / "base")], 0, "trainable params:"),
                             (["train"], 2, "lorakit train needs datasets: pip install 'lorakit[train]'"),
                             (["search"], 2, "lorakit search needs datasets: pip install 'lorakit[search]'")):
    proc = subprocess.run([str(script), *argv], capture_output=True, text=True)
    assert proc.returncode == code and expected in proc.stdout + proc.stderr, (argv, proc.returncode,
                                                                               proc.stderr[-800:])
    print(f"lorakit {' '.join(argv)}: exit {code}, {expected!r}")
print("core install: ok")
