"""`lorakit predict --prompt`: answers printed as generated, the sampling flags and the seed, tokens streamed on a
terminal, and generation flags refused for classifiers."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import tiny_flags, word_tokenizer
from lorakit.cli.main import main


MULTILINE = "x\ny"  # a token whose text holds a newline (code answers are full of them)


@pytest.fixture(scope="module")
def instruct_run(tmp_path_factory) -> Path:
    """A 1-step LoRA run of a tiny Llama whose final norm is zero: every logit is 0, so greedy decoding repeats
    token 0, MULTILINE; sampling (temperature 1) draws uniformly from the 20 tokens."""
    import transformers as tf

    root = tmp_path_factory.mktemp("instruct")
    words = [MULTILINE, "[PAD]", "[UNK]", "</s>", "hi", "hello", "there", "how", "are", "you", "fine", "say", "to",
             "bob", "###", "Instruction:", "Input:", "Response:", "a", "b"]
    word_tokenizer(words).save_pretrained(root / "model")
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1,
                                               num_attention_heads=4, num_key_value_heads=2, intermediate_size=37,
                                               max_position_embeddings=128, pad_token_id=1, eos_token_id=3))
    with torch.no_grad():
        model.model.norm.weight.zero_()
    model.save_pretrained(root / "model")
    records = [{"instruction": "say hi", "input": "", "output": "hello there"}] * 4
    for name in ("train.jsonl", "dev.jsonl"):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["train", "--model", str(root / "model"), "--task", "instruct", "--train-file",
                 str(root / "train.jsonl"), "--eval-file", str(root / "dev.jsonl"), "--batch-size", "4",
                 "--max-steps", "1", "--max-length", "32", "--output", str(root / "run")]) == 0
    return root / "run"


def test_predict_prints_answers_as_generated(instruct_run, capsys):
    capsys.readouterr()
    assert main(["predict", "--adapter", str(instruct_run), "--prompt", "say hi", "--prompt", "how are you",
                 "--max-new-tokens", "3"]) == 0
    answer = " ".join([MULTILINE] * 3)
    assert capsys.readouterr().out == f"{answer}\n\n{answer}\n"  # newlines kept, a blank line between answers


def test_predict_with_a_causal_lm_model_follows_prompts(instruct_run, tiny_inputs, capsys):
    """--model alone, a causal LM: the task is instruct (not the default sst2, which refused --max-new-tokens)."""
    from lorakit.models.loading import is_causal_lm

    base = instruct_run.parent / "model"
    assert is_causal_lm(str(base)) and not is_causal_lm(str(tiny_inputs / "model"))
    capsys.readouterr()
    assert main(["predict", "--model", str(base), "--prompt", "say hi", "--max-new-tokens", "2"]) == 0
    assert capsys.readouterr().out == " ".join([MULTILINE] * 2) + "\n"  # the base's logits are all 0: token 0


def test_predict_sampling_flags_and_seed(instruct_run, capsys):
    def sampled(*flags: str) -> str:
        capsys.readouterr()
        assert main(["predict", "--adapter", str(instruct_run), "--prompt", "say hi", "--max-new-tokens", "8",
                     *flags]) == 0
        return capsys.readouterr().out

    first = sampled("--temperature", "1", "--seed", "1")
    assert first == sampled("--temperature", "1", "--seed", "1")  # seeded
    assert first != sampled("--temperature", "1", "--seed", "2")
    assert first != sampled()  # greedy: MULTILINE x 8
    capsys.readouterr()
    assert main(["predict", "--adapter", str(instruct_run), "--prompt", "say hi", "--top-p", "0"]) == 2
    assert "top_p in (0, 1]" in capsys.readouterr().err


def test_predict_streams_tokens_on_a_terminal(instruct_run, capsys, monkeypatch):
    import sys

    from lorakit.tasks import lm_eval

    streamers = []
    generate = lm_eval.generate_samples

    def recording(*args, streamer=None, **kwargs):
        streamers.append(streamer)
        return generate(*args, streamer=streamer, **kwargs)

    monkeypatch.setattr(lm_eval, "generate_samples", recording)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    capsys.readouterr()
    assert main(["predict", "--adapter", str(instruct_run), "--prompt", "say hi", "--max-new-tokens", "3"]) == 0
    assert type(streamers[0]).__name__ == "TextStreamer"
    assert capsys.readouterr().out.strip() == " ".join([MULTILINE] * 3)  # printed once, by the streamer


def test_generation_flags_are_for_instruction_runs(tiny_inputs, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(tiny_flags(tiny_inputs, run, "--max-steps", "1")) == 0
    capsys.readouterr()
    assert main(["predict", "--adapter", str(run), "w1 w2", "--temperature", "0.7"]) == 2
    assert "--temperature: generation settings apply to instruction-tuned" in capsys.readouterr().err
