"""`lorakit export --gguf` read back by readers no one here wrote: transformers' GGUF loader (`gguf_file=`) for the
merged model (f32 exact, f16 within 1e-2 on logits with the same 32 greedy tokens, q8_0 equal to the q8_0-rounded
merged weights), and the gguf package's GGUFReader for the LoRA file (llama.cpp's names, shapes and metadata; base +
alpha/r · lora_b·lora_a equals the merged tensors, q/k permutation included). Tiny random Llama / Qwen2 models with a
tiny byte-level BPE tokenizer (a few seconds each). llama.cpp itself: benchmarks/gguf_llamacpp.py."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import transformers as tf
from helpers import randomize_lora

from lorakit import LoraConfig, add_lora, merge_and_unload, save_adapter
from lorakit.cli.main import main

gguf = pytest.importorskip("gguf")

TEXTS = ["The quick brown fox jumps over the lazy dog.", "A tiny model reads a tiny text, again and again.",
         "llama.cpp loads GGUF files; Ollama runs them with an adapter."] * 4
CHAT = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


@pytest.fixture(scope="module")
def tokenizer():
    """A byte-level BPE of 300 tokens (256 bytes, merges, 3 specials) with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(TEXTS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = tf.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                     unk_token="<|endoftext|>", pad_token="<|im_end|>")
    tok.chat_template = CHAT
    return tok


def tiny_base(directory, tokenizer, kind="llama", tied=False):
    """A seeded tiny causal LM saved with the tokenizer; returned as loaded from the directory."""
    torch.manual_seed(0)
    shape = dict(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=128, max_position_embeddings=128, tie_word_embeddings=tied,
                 rope_theta=10000.0)
    model = tf.Qwen2ForCausalLM(tf.Qwen2Config(**shape)) if kind == "qwen2" else \
        tf.LlamaForCausalLM(tf.LlamaConfig(**shape))
    memorize(model, tokenizer)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return tf.AutoModelForCausalLM.from_pretrained(directory).eval()


def memorize(model, tokenizer, steps=30):
    """Fit the texts, so greedy decoding has clear margins (a random model's near-ties flip under any rounding)."""
    ids = tokenizer(" ".join(TEXTS[:3]), return_tensors="pt").input_ids
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        model(ids, labels=ids).loss.backward()
        optimizer.step()
    model.eval()


def lora_run(tmp_path, tokenizer, kind="llama", tied=False, **lora):
    """(lora model, merged model, adapter dir): all-linear LoRA with random non-zero B, saved in PEFT's format."""
    base = tiny_base(tmp_path / "base", tokenizer, kind, tied)
    model = add_lora(copy.deepcopy(base), LoraConfig(**{"r": 4, "alpha": 8, "target_modules": "all-linear", **lora}))
    randomize_lora(model, scale=0.05)
    save_adapter(model, tmp_path / "adapter")
    return model.eval(), merge_and_unload(copy.deepcopy(model)).eval(), tmp_path / "adapter"


def export(adapter, out, *flags) -> None:
    assert main(["export", "--adapter", str(adapter), "--gguf", str(out), *flags]) == 0


def read_back(path):
    return tf.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def greedy(model, ids, n=32):
    return model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)[0, ids.shape[1]:]


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_merged_f16_reads_back_in_transformers(tmp_path, tokenizer, tied):
    _, merged, adapter = lora_run(tmp_path, tokenizer, tied=tied)
    out = tmp_path / "merged-f16.gguf"
    export(adapter, out)
    back = read_back(out)
    ids = tokenizer(TEXTS[0], return_tensors="pt").input_ids
    torch.testing.assert_close(logits(back, ids), logits(merged, ids), atol=1e-2, rtol=1e-2)  # f16 weights
    assert torch.equal(greedy(back, ids), greedy(merged, ids))
    reader = gguf.GGUFReader(out)
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_F16
    assert ("output.weight" in {t.name for t in reader.tensors}) == (not tied)  # tied: llama.cpp reuses token_embd
    tok_back = tf.AutoTokenizer.from_pretrained(out.parent, gguf_file=out.name)
    assert tok_back(TEXTS[2]).input_ids == tokenizer(TEXTS[2]).input_ids
    assert reader.fields["tokenizer.chat_template"].contents() == CHAT
    assert reader.fields["tokenizer.ggml.eos_token_id"].contents() == tokenizer.eos_token_id


def test_merged_f32_is_exact_and_q8_0_is_the_rounded_model(tmp_path, tokenizer):
    _, merged, adapter = lora_run(tmp_path, tokenizer)
    ids = tokenizer(TEXTS[1], return_tensors="pt").input_ids
    export(adapter, tmp_path / "m32.gguf", "--gguf-type", "f32")
    torch.testing.assert_close(logits(read_back(tmp_path / "m32.gguf"), ids), logits(merged, ids), atol=1e-5,
                               rtol=1e-5)  # the q/k permutation and the names round-trip exactly
    export(adapter, tmp_path / "m8.gguf", "--gguf-type", "q8_0")
    rounded = copy.deepcopy(merged)
    Q8 = gguf.GGMLQuantizationType.Q8_0
    with torch.no_grad():
        for p in rounded.parameters():
            if p.dim() == 2:  # every matrix is q8_0 (64 / 128 columns split into 32-blocks); norms stay f32
                p.copy_(torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(p.numpy(), Q8), Q8)))
    q8 = logits(read_back(tmp_path / "m8.gguf"), ids)
    torch.testing.assert_close(q8, logits(rounded, ids), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(q8, logits(merged, ids), atol=1e-6)  # it really is quantized


def test_lora_only_file_has_llama_cpp_names_shapes_and_rebuilds_the_merged_weights(tmp_path, tokenizer):
    _, _, adapter = lora_run(tmp_path, tokenizer, use_rslora=True, r=8)  # rsLoRA: scaling alpha/sqrt(r), folded into B
    export(adapter, tmp_path / "lora.gguf", "--lora-only")
    export(adapter, tmp_path / "merged.gguf", "--gguf-type", "f32")
    base_out = tmp_path / "base.gguf"
    from lorakit.export.gguf_export import write_merged_gguf
    write_merged_gguf(tiny_base(tmp_path / "base2", tokenizer), tokenizer, base_out, "f32")
    lora, merged, base = (gguf.GGUFReader(tmp_path / n) for n in ("lora.gguf", "merged.gguf", "base.gguf"))
    assert lora.fields["general.type"].contents() == "adapter"
    assert lora.fields["adapter.type"].contents() == "lora"
    assert lora.fields["adapter.lora.alpha"].contents() == 8.0
    assert lora.fields["general.architecture"].contents() == "llama"
    names = {t.name: t for t in lora.tensors}
    targets = [f"blk.{b}.{m}.weight" for b in range(2)
               for m in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")]
    assert set(names) == {f"{t}.lora_{ab}" for t in targets for ab in "ab"}
    assert names["blk.0.attn_k.weight.lora_a"].shape.tolist() == [64, 8]  # ggml ne: [in, r]
    assert names["blk.0.attn_k.weight.lora_b"].shape.tolist() == [8, 32]  # [r, out]: 2 kv heads x 16
    weights = {r: {t.name: np.asarray(t.data, dtype=np.float64) for t in r.tensors} for r in (merged, base)}
    for target in targets:  # what llama.cpp computes: W + alpha / r · B·A, r from lora_a's shape
        a, b = names[target + ".lora_a"].data, names[target + ".lora_b"].data  # numpy: (r, in), (out, r)
        rebuilt = weights[base][target] + 8.0 / a.shape[0] * (b.astype(np.float64) @ a)
        np.testing.assert_allclose(rebuilt, weights[merged][target], atol=1e-5, err_msg=target)


def test_qwen2_has_no_rotary_permutation_and_keeps_its_biases(tmp_path, tokenizer):
    _, merged, adapter = lora_run(tmp_path, tokenizer, kind="qwen2")
    out = tmp_path / "qwen2.gguf"
    export(adapter, out, "--gguf-type", "f32")
    assert "blk.0.attn_q.bias" in {t.name for t in gguf.GGUFReader(out).tensors}
    ids = tokenizer(TEXTS[0], return_tensors="pt").input_ids
    torch.testing.assert_close(logits(read_back(out), ids), logits(merged, ids), atol=1e-5, rtol=1e-5)


def test_bad_exports_are_one_line_errors(tmp_path, tokenizer, capsys):
    _, _, adapter = lora_run(tmp_path, tokenizer)
    assert main(["export", "--adapter", str(adapter), "--gguf", str(tmp_path / "x.gguf"), "--gguf-type", "q3"]) == 2
    assert main(["export", "--adapter", str(adapter), "--gguf", str(tmp_path / "x.gguf"), "--gguf-type", "base"]) == 2
    bert = tf.BertForSequenceClassification(tf.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1,
                                                          num_attention_heads=4, intermediate_size=37))
    bert.save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    bert = tf.BertForSequenceClassification.from_pretrained(tmp_path / "bert")  # records its base directory
    save_adapter(add_lora(bert, LoraConfig(r=2, target_modules=["query"])), tmp_path / "bert-adapter")
    assert main(["export", "--adapter", str(tmp_path / "bert-adapter"), "--gguf", str(tmp_path / "b.gguf")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lorakit export: error")]
    assert len(errors) == 3 and "q3" in errors[0] and "--base-gguf" in errors[1] and "Llama family" in errors[2]
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*tmp*"))
