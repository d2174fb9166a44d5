"""Instruction tuning of a causal LM: reading instruction records and tokenizing them with response-only labels.

    data = load_splits("instruct", data_dir="../shared/data/alpaca_tiny")   # one file: 10% carved, seeded
    data = load_splits("gsm8k", data_dir="../shared/data/gsm8k")            # question -> instruction, answer -> output
    data = load_splits("instruct", train_file="gsm8k/train.jsonl", text_columns=("question",), label_column="answer")
    features = tokenize_instruct(data.train, tokenizer, max_length=512)     # input_ids, attention_mask, labels
    # batching: PaddingCollator pads labels with -100; LengthGroupedBatchSampler(sequence_lengths(features), ...)
    # scoring: lorakit.tasks.lm_eval (loss / perplexity / token accuracy, greedy generations)

Normalized rows, one of two forms per dataset:
    Alpaca      instruction, input ("" when absent), output
    chat        messages: [{"role": "system" | "user" | "assistant", "content": str}, ...]; a file is read as chat
                when it has a "messages" field and no instruction column
Column mapping: `column_map` {"instruction": source, "input": source or None, "output": source} (or a preset name,
COLUMN_PRESETS); through load_splits: text_columns = (instruction[, input]), label_column = output.

Formatting: with the tokenizer's chat template when it has one (Alpaca rows become a user turn, instruction and
input separated by a blank line, and an assistant turn), the Stanford Alpaca prompt otherwise (chat rows: the same
"### Instruction:" / "### Response:" headers per turn). A record is cut into segments (prompt text, response text,
...); each segment is tokenized on its own and the ids are concatenated, so a prompt's tokens are exactly those
fed to the model at generation time. Labels are -100 on every prompt token and equal to input_ids on response
tokens; the causal LM shifts them itself (position t is scored on predicting token t + 1).
EOS: the Alpaca format appends the EOS token after every response (labelled). A chat-template response is
labelled up to and including its first EOS (template text after it, e.g. "\n", is not learned); EOS is appended
to the last response when the template did not put one there. BOS is prepended when the tokenizer adds one by
default and the text does not already start with it. Rows longer than max_length are cut at the end; a row left
with no response token is dropped (with a warning).
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

from datasets import Dataset

from lorakit.tasks.base import CAUSAL_LM, TaskError, TaskSpec
from lorakit.tasks.batching import LABEL_PAD_ID
from lorakit.tasks.files import read_table

INSTRUCTION, INPUT, OUTPUT, MESSAGES = "instruction", "input", "output", "messages"
ROLES = ("system", "user", "assistant")
COLUMN_PRESETS = {
    "alpaca": {INSTRUCTION: "instruction", INPUT: "input", OUTPUT: "output"},
    "gsm8k": {INSTRUCTION: "question", INPUT: None, OUTPUT: "answer"},
}
PREAMBLE = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.\n\n")
PREAMBLE_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                       "context. Write a response that appropriately completes the request.\n\n")
INSTRUCTION_HEADER, INPUT_HEADER, RESPONSE_HEADER = "### Instruction:\n", "### Input:\n", "### Response:\n"


def alpaca_prompt(instruction: str, input: str = "") -> str:
    """The Stanford Alpaca prompt, ending where the response starts."""
    if input:
        return f"{PREAMBLE_WITH_INPUT}{INSTRUCTION_HEADER}{instruction}\n\n{INPUT_HEADER}{input}\n\n{RESPONSE_HEADER}"
    return f"{PREAMBLE}{INSTRUCTION_HEADER}{instruction}\n\n{RESPONSE_HEADER}"


# -------------------------------------------------------------------------------------------------- reading


def resolve_column_map(column_map: str | Mapping[str, str | None] | None) -> dict[str, str | None]:
    """A full map {instruction, input, output} -> source column from a preset name, a partial map or None."""
    if column_map is None:
        return dict(COLUMN_PRESETS["alpaca"])
    if isinstance(column_map, str):
        if column_map not in COLUMN_PRESETS:
            raise TaskError(f"unknown column preset {column_map!r}; presets: {', '.join(COLUMN_PRESETS)}")
        return dict(COLUMN_PRESETS[column_map])
    unknown = set(column_map) - {INSTRUCTION, INPUT, OUTPUT}
    if unknown:
        raise TaskError(f"column_map keys must be among instruction, input, output; got {sorted(unknown)}")
    resolved = {**COLUMN_PRESETS["alpaca"], **column_map}
    if INPUT not in column_map and INSTRUCTION in column_map:
        resolved[INPUT] = None  # a map naming the instruction column but no input column means: no input
    return resolved


def records_to_dataset(records: list[dict], where: str, column_map: Mapping[str, str | None] | None = None,
                       lines: list[int] | None = None) -> Dataset:
    """Normalized rows (Alpaca form or chat form, see the module doc) from parsed records; TaskError on bad input."""
    columns = resolve_column_map(column_map)
    if not records:
        raise TaskError(f"{where} has no records; give at least one instruction example")
    lines = lines or list(range(1, len(records) + 1))
    present = set().union(*(record.keys() for record in records))
    if MESSAGES in present and columns[INSTRUCTION] not in present:
        return Dataset.from_dict({MESSAGES: [_check_messages(r.get(MESSAGES), f"{where} record {n}")
                                             for r, n in zip(records, lines)]})
    for key in (INSTRUCTION, OUTPUT, INPUT):
        name = columns[key]
        if name is not None and name not in present and not (key == INPUT and name == INPUT):
            raise TaskError(f"column {name!r} ({key}) not found in {where}; its columns are: "
                            f"{', '.join(sorted(present)) or '(none)'}; map them with text_columns=(instruction"
                            f"[, input]) / label_column=output (--text-columns / --label-column) or use a "
                            f"'{MESSAGES}' field of chat turns")
    rows: dict[str, list[str]] = {INSTRUCTION: [], INPUT: [], OUTPUT: []}
    for record, line in zip(records, lines):
        for key in rows:
            value = record.get(columns[key]) if columns[key] is not None else ""
            value = "" if value is None and key == INPUT else value
            if not isinstance(value, str):
                raise TaskError(f"{where} record {line}: {key} column {columns[key]!r} must be a string, "
                                f"got {value!r}"[:300])
            rows[key].append(value)
    return Dataset.from_dict(rows)


def _check_messages(messages, where: str) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise TaskError(f"{where}: '{MESSAGES}' must be a non-empty list of {{role, content}} turns")
    for i, message in enumerate(messages):
        if (not isinstance(message, dict) or message.get("role") not in ROLES
                or not isinstance(message.get("content"), str)):
            raise TaskError(f"{where}: turn {i} must be {{'role': one of {ROLES}, 'content': str}}, "
                            f"got {message!r}"[:300])
        if message["role"] == "system" and i > 0:
            raise TaskError(f"{where}: a system turn may only come first (turn {i})")
    if messages[0]["role"] == "assistant" or all(m["role"] != "assistant" for m in messages):
        raise TaskError(f"{where}: a conversation needs a user turn before its first assistant turn, "
                        "and at least one assistant turn (the response to learn)")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def read_instruct_file(path: str | Path, column_map: str | Mapping[str, str | None] | None = None) -> Dataset:
    """Normalized rows of a JSON array, JSON Lines (or CSV/TSV) file of instruction records."""
    table = read_table(path)
    return records_to_dataset(table.rows, str(table.path), column_map, table.lines)


def spec_column_map(spec: TaskSpec, text_columns=None, label_column=None) -> dict[str, str | None]:
    """The column map of a task (text_columns = (instruction[, input]), label_column = output), or the overrides."""
    text_columns = tuple(text_columns or spec.text_columns)
    if len(text_columns) not in (1, 2):
        raise TaskError(f"give one or two text columns (instruction[, input]), got {list(text_columns)}")
    return {INSTRUCTION: text_columns[0], INPUT: text_columns[1] if len(text_columns) == 2 else None,
            OUTPUT: label_column or spec.label_column}


def read_instruct_local(spec: TaskSpec, data_dir: Path) -> dict[str, Dataset]:
    """TaskSpec.read_local: train / validation|dev / test .json(l) files, or a folder holding one .json(l) file."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise TaskError(f"data_dir {data_dir} is not a directory; task {spec.name} expects {spec.local_layout}")
    found = sorted(p for p in data_dir.iterdir() if p.is_file() and p.name.endswith((".json", ".jsonl")))
    by_name = {p.name: p for p in found}
    files = {}
    for split, stems in (("train", ("train",)), ("validation", ("validation", "dev", "eval")), ("test", ("test",))):
        paths = [by_name[f"{stem}{ext}"] for stem in stems for ext in (".jsonl", ".json") if f"{stem}{ext}" in by_name]
        if paths:
            files[split] = paths[0]
    if "train" not in files:
        if len(found) != 1:
            raise TaskError(f"{data_dir}: expected {spec.local_layout}; found "
                            f"{', '.join(p.name for p in found) or 'no .json/.jsonl file'}")
        files = {"train": found[0]}
    column_map = spec_column_map(spec)
    return {split: read_instruct_file(path, column_map) for split, path in files.items()}


def read_instruct_task_file(spec: TaskSpec, path: Path, text_columns, label_column) -> Dataset:
    """TaskSpec.read_file: one user file, with the task's columns or the given ones."""
    return read_instruct_file(path, spec_column_map(spec, text_columns, label_column))


def read_instruct_hub(spec: TaskSpec, dataset_dict) -> dict[str, Dataset]:
    """TaskSpec.read_hub: the hub splits mapped to normalized rows."""
    column_map = spec_column_map(spec)
    return {split: records_to_dataset(dataset_dict[split].to_list(), f"{spec.hub_path[0]} {split}", column_map)
            for split in spec.hub_splits}


def _spec(name: str, text_columns: tuple[str, ...], label_column: str, hub_path, hub_splits, layout: str) -> TaskSpec:
    return TaskSpec(
        name=name,
        text_columns=text_columns,
        label_column=label_column,
        num_labels=0,  # no class head: the LM head predicts tokens
        label_names=None,
        # token_accuracy (next-token accuracy on response tokens) is the greater-is-better main metric;
        # loss and perplexity (lower is better) are reported alongside
        metric_names=("token_accuracy", "loss", "perplexity"),
        main_metric="token_accuracy",
        hub_path=hub_path,
        hub_splits=hub_splits,
        local_layout=layout,
        kind=CAUSAL_LM,
        read_local=read_instruct_local,
        read_file=read_instruct_task_file,
        read_hub=read_instruct_hub,
    )


_LAYOUT = "train.json(l) [+ validation.json(l) or dev.json(l)] [+ test.json(l)], or a single .json/.jsonl file"
INSTRUCT = _spec("instruct", ("instruction", "input"), "output", None, (), f"{_LAYOUT} (Alpaca or chat records)")
ALPACA = _spec("alpaca", ("instruction", "input"), "output", ("tatsu-lab/alpaca", None), ("train",),
               f"{_LAYOUT} of Alpaca records (alpaca_data.json)")
GSM8K = _spec("gsm8k", ("question",), "answer", ("openai/gsm8k", "main"), ("train", "test"),
              "train.jsonl and test.jsonl (fields question, answer)")
INSTRUCT_TASKS = (INSTRUCT, ALPACA, GSM8K)


# ---------------------------------------------------------------------------------------------- formatting

Segment = tuple[str | None, bool]  # (text, is_response); text None stands for the EOS token


def wants_chat_template(tokenizer, chat_template: bool | None = None) -> bool:
    """Use the chat template? None: when the tokenizer has one. True without a template is a TaskError."""
    has_template = bool(tokenizer.chat_template)
    if chat_template and not has_template:
        raise TaskError(f"tokenizer {type(tokenizer).__name__} has no chat template; set tokenizer.chat_template "
                        "or format with the Alpaca prompt (chat_template=None / False)")
    return has_template if chat_template is None else bool(chat_template)


def row_messages(row: Mapping) -> list[dict[str, str]]:
    """The conversation of a normalized row (an Alpaca row becomes one user turn and one assistant turn)."""
    if row.get(MESSAGES) is not None:
        return list(row[MESSAGES])
    user = row[INSTRUCTION] + (f"\n\n{row[INPUT]}" if row.get(INPUT) else "")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": row[OUTPUT]}]


def row_segments(row: Mapping, tokenizer, use_template: bool) -> list[Segment]:
    """The text segments of one normalized row, responses marked (see the module doc)."""
    if tokenizer.eos_token_id is None:
        raise TaskError(f"tokenizer {type(tokenizer).__name__} has no eos_token; set tokenizer.eos_token")
    if use_template:
        return _template_segments(row_messages(row), tokenizer)
    if row.get(MESSAGES) is None:  # an Alpaca row: the exact Stanford prompt
        return [(alpaca_prompt(row[INSTRUCTION], row.get(INPUT) or ""), False), (row[OUTPUT], True), (None, True)]
    messages = row_messages(row)
    prompt = messages[0]["content"] + "\n\n" if messages[0]["role"] == "system" else PREAMBLE
    segments: list[Segment] = []
    for message in messages[1:] if messages[0]["role"] == "system" else messages:
        if message["role"] == "user":
            prompt += f"{INSTRUCTION_HEADER}{message['content']}\n\n{RESPONSE_HEADER}"
        else:
            segments += [(prompt, False), (message["content"], True), (None, True)]
            prompt = "\n\n"
    return segments


def _template_segments(messages: list[dict[str, str]], tokenizer) -> list[Segment]:
    """Cut the template's rendering at each assistant turn: rendering turns [0, i) with the generation prompt
    must be a prefix of rendering turns [0, i] (true of common templates), the difference being turn i."""
    def render(turns, generation_prompt):
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=generation_prompt)

    segments: list[Segment] = []
    done = ""  # text already cut into segments
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue  # turns after the last assistant turn carry no labels and are dropped
        prompt, full = render(messages[:i], True), render(messages[: i + 1], False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise TaskError("the tokenizer's chat template does not render a conversation's first turns as a "
                            "prefix of the whole conversation, so responses cannot be located; pass "
                            "chat_template=False for the Alpaca format")
        segments += [(prompt[len(done):], False), (full[len(prompt):], True)]
        done = full
    if tokenizer.eos_token not in segments[-1][0]:
        segments.append((None, True))
    return segments


def _last_response(segments: list[Segment]) -> int:
    return max(i for i, (text, is_response) in enumerate(segments) if is_response and text is not None)


def adds_bos(tokenizer) -> bool:
    """Does the tokenizer put BOS in front of a text by default (Llama-style)?"""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("x")["input_ids"][:1] == [bos]


def encode_segments(segments: list[Segment], tokenizer, with_bos: bool) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of segments: each tokenized on its own, ids concatenated; labels -100 outside
    responses, and inside a response after its first EOS. with_bos: prepend BOS unless the text starts with it."""
    eos = tokenizer.eos_token_id
    first = segments[0][0] or ""
    input_ids = [tokenizer.bos_token_id] if with_bos and not first.startswith(tokenizer.bos_token) else []
    labels = [LABEL_PAD_ID] * len(input_ids)
    for text, is_response in segments:
        tokens = [eos] if text is None else tokenizer(text, add_special_tokens=False)["input_ids"]
        if is_response:
            cut = tokens.index(eos) + 1 if eos in tokens else len(tokens)
            labels += tokens[:cut] + [LABEL_PAD_ID] * (len(tokens) - cut)
        else:
            labels += [LABEL_PAD_ID] * len(tokens)
        input_ids += tokens
    return input_ids, labels


def encode_row(row: Mapping, tokenizer, max_length: int, use_template: bool,
               with_bos: bool) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one normalized row, cut to max_length."""
    input_ids, labels = encode_segments(row_segments(row, tokenizer, use_template), tokenizer, with_bos)
    return input_ids[:max_length], labels[:max_length]


def prompt_ids(row: Mapping, tokenizer, use_template: bool) -> list[int]:
    """Token ids of the text before the (last) response, tokenized segment by segment exactly as in training."""
    segments = row_segments(row, tokenizer, use_template)
    return encode_segments(segments[: _last_response(segments)], tokenizer, adds_bos(tokenizer))[0]


def tokenize_instruct(dataset: Dataset, tokenizer, max_length: int, chat_template: bool | None = None,
                      batch_size: int = 1000) -> Dataset:
    """Model inputs of normalized rows: input_ids, attention_mask, labels (unpadded; -100 on prompt tokens)."""
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length <= 0:
        raise TaskError(f"max_length must be a positive integer, got {max_length!r}")
    if MESSAGES not in dataset.column_names and not {INSTRUCTION, OUTPUT} <= set(dataset.column_names):
        raise TaskError(f"dataset lacks instruction columns; its columns are {dataset.column_names}; "
                        "load it with lorakit.tasks.load_splits('instruct', ...)")
    if len(dataset) == 0:
        raise TaskError("the instruction dataset is empty; give at least one example")
    use_template = wants_chat_template(tokenizer, chat_template)
    with_bos = adds_bos(tokenizer)

    def encode(batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
        for i in range(len(next(iter(batch.values())))):
            row = {name: values[i] for name, values in batch.items()}
            input_ids, labels = encode_row(row, tokenizer, max_length, use_template, with_bos)
            out["input_ids"].append(input_ids)
            out["attention_mask"].append([1] * len(input_ids))
            out["labels"].append(labels)
        return out

    features = dataset.map(encode, batched=True, batch_size=batch_size, remove_columns=dataset.column_names,
                           desc="tokenizing instructions")
    kept = features.filter(lambda labels: any(label != LABEL_PAD_ID for label in labels), input_columns="labels")
    if len(kept) == 0:
        raise TaskError(f"no example keeps a response token within max_length={max_length}; raise max_length")
    if len(kept) < len(features):
        warnings.warn(f"{len(features) - len(kept)} of {len(features)} examples have no response token within "
                      f"max_length={max_length} and were dropped", stacklevel=2)
    return kept
