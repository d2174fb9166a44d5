"""A lorakit model under transformers.Trainer: only LoRA weights train (with and without gradient checkpointing,
reentrant or not), SaveAdapterCallback writes a PEFT-format adapter into each checkpoint, which lorakit and PEFT reload
with the trained model's logits, and Trainer's own checkpoint of the wrapped model saves and resumes."""
from __future__ import annotations

import json

import pytest
import torch
import transformers as tf
from helpers import inputs, logits, tiny_model

from lorakit import LoraConfig, add_lora, load_adapter
from lorakit.training.hf_trainer import ADAPTER_DIR, SaveAdapterCallback, prepare_for_trainer


class TokenRows(torch.utils.data.Dataset):
    """16 seeded rows of 12 token ids; labels = input_ids (causal LM loss)."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(3, 99, (16, 12), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(12, dtype=torch.long), "labels": self.ids[i]}


def lora_llama() -> torch.nn.Module:
    return add_lora(tiny_model("llama").train(), LoraConfig(r=4, alpha=8, target_modules="all-linear", dropout=0.0))


def trainer_args(output, **changes) -> tf.TrainingArguments:
    settings = dict(output_dir=str(output), per_device_train_batch_size=4, max_steps=4, learning_rate=1e-2,
                    save_steps=2, logging_steps=1, report_to=[], use_cpu=True, seed=0, dataloader_num_workers=0,
                    disable_tqdm=True, save_strategy="steps")
    return tf.TrainingArguments(**{**settings, **changes})


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def train_lora(output, checkpointing=None) -> torch.nn.Module:
    model = prepare_for_trainer(lora_llama())
    gc = dict(gradient_checkpointing=True, gradient_checkpointing_kwargs=checkpointing) if checkpointing else {}
    tf.Trainer(model=model, args=trainer_args(output, save_strategy="no", **gc), train_dataset=TokenRows()).train()
    return model


def test_trainer_trains_only_lora_weights_and_checkpointing_changes_nothing(tmp_path):
    before = snapshot(lora_llama())
    plain = train_lora(tmp_path / "plain")
    changed = {n for n, p in plain.named_parameters() if not torch.equal(p.detach(), before[n])}
    lora = {n for n in before if ".lora_A." in n or ".lora_B." in n}
    assert changed == lora and len(lora) == 2 * 7 * 2  # 7 linear layers x 2 blocks, A and B each; nothing else
    for kwargs in ({"use_reentrant": False}, {"use_reentrant": True}):
        checkpointed = train_lora(tmp_path / str(kwargs["use_reentrant"]), kwargs)
        for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
            torch.testing.assert_close(q, p, atol=1e-6, rtol=1e-5, msg=f"{kwargs} {name}")


def test_save_adapter_callback_writes_peft_adapters_that_reload(tmp_path):
    peft = pytest.importorskip("peft")
    model = lora_llama()
    trainer = tf.Trainer(model=model, args=trainer_args(tmp_path), train_dataset=TokenRows(),
                         callbacks=[SaveAdapterCallback()])
    trainer.train()
    for step in (2, 4):
        adapter = tmp_path / f"checkpoint-{step}" / ADAPTER_DIR
        assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "LORA"
        assert (tmp_path / f"checkpoint-{step}" / "model.safetensors").is_file()  # Trainer's own save still works
    model.eval()
    batch = inputs()
    trained = logits(model, batch)
    adapter = tmp_path / "checkpoint-4" / ADAPTER_DIR
    reloaded = load_adapter(tiny_model("llama"), adapter)
    torch.testing.assert_close(logits(reloaded, batch), trained)
    by_peft = peft.PeftModel.from_pretrained(tiny_model("llama"), str(adapter)).eval()
    torch.testing.assert_close(logits(by_peft, batch), trained, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits(tiny_model("llama"), batch), trained, atol=1e-3)  # training changed something
    step2 = load_adapter(tiny_model("llama"), tmp_path / "checkpoint-2" / ADAPTER_DIR)
    assert not torch.allclose(logits(step2, batch), trained, atol=1e-4)  # each checkpoint its own weights


def test_trainer_resumes_from_its_own_checkpoint_of_the_wrapped_model(tmp_path):
    straight = lora_llama()
    tf.Trainer(model=straight, args=trainer_args(tmp_path / "a"), train_dataset=TokenRows()).train()
    resumed = lora_llama()
    trainer = tf.Trainer(model=resumed, args=trainer_args(tmp_path / "b"), train_dataset=TokenRows())
    trainer.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    for (name, p), q in zip(straight.named_parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q, msg=name)
