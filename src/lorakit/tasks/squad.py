"""SQuAD v1.1 / v2.0 extractive question answering: reading the data and turning it into model features.

    data = load_splits("squad", data_dir="../shared/data/squad_v1.1", split_from_eval=0.5)  # dev only: by article
    train = prepare_train_features(data.train, tokenizer, max_length=384, doc_stride=128)
    features = prepare_eval_features(data.eval["validation"], tokenizer, max_length=384, doc_stride=128)
    # scoring: lorakit.tasks.qa_eval.evaluate_qa (logits -> best spans -> official EM / F1)

Normalized rows (the Hugging Face `squad` schema, whatever the source):
    id        the question id (unique)
    title     the article; rows of one article stay on one side of every seeded carve (TaskSpec.group_column)
    context   the paragraph
    question  the question
    answers   {"text": [...], "answer_start": [...]}: gold answers and their character offsets in `context`;
              empty lists for an unanswerable SQuAD 2.0 question

Sources: the hub (`rajpurkar/squad`, `rajpurkar/squad_v2`), the official JSON files under data_dir
(train-v1.1.json / dev-v1.1.json, or train-v2.0.json / dev-v2.0.json), or any official-format JSON file as
train_file / eval_file. With a dev file only (shared/data/squad_v1.1), `split_from_eval=F` moves a seeded
fraction F of the ARTICLES into train, so train and evaluation share no paragraph.

Features follow Hugging Face's run_qa.py: the question and the context are encoded as a pair truncated on the
context only; a context longer than max_length is cut into overlapping windows (`doc_stride` tokens shared by
consecutive windows), each a feature of its own. Train features carry the answer's token span in their window
(start_positions / end_positions) or the CLS index (0) when the answer is absent or not wholly inside it.
Eval features carry `example_id` (the question id) and `offset_mapping` (the character span of each token in
the context, None for question and special tokens) to map predicted token spans back to context text.
"""
from __future__ import annotations

import json
from pathlib import Path

from datasets import Dataset, Features, Sequence, Value

from lorakit.tasks.base import QUESTION_ANSWERING, TaskError, TaskSpec
from lorakit.tasks.files import require_file

ID, TITLE, CONTEXT, QUESTION, ANSWERS = "id", "title", "context", "question", "answers"
COLUMNS = (ID, TITLE, CONTEXT, QUESTION, ANSWERS)
FEATURES = Features({
    ID: Value("string"), TITLE: Value("string"), CONTEXT: Value("string"), QUESTION: Value("string"),
    ANSWERS: {"text": Sequence(Value("string")), "answer_start": Sequence(Value("int32"))},
})
EVAL_META_COLUMNS = ("example_id", "offset_mapping")  # eval feature columns that are not model inputs
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_FILES = {"squad": ("train-v1.1.json", "dev-v1.1.json"), "squad_v2": ("train-v2.0.json", "dev-v2.0.json")}


def is_version_2(spec: TaskSpec) -> bool:
    """SQuAD 2.0 semantics (unanswerable questions, null answers, v2 metrics) for this task?"""
    return spec.name == "squad_v2"


# -------------------------------------------------------------------------------------------------- reading


def read_squad_json(path: str | Path, version_2: bool) -> Dataset:
    """Normalized rows of an official SQuAD JSON file ({"version", "data": [{"title", "paragraphs": [...]}]}).

    A SQuAD 2.0 question with "is_impossible": true gets empty answers. For v1.1 (version_2=False) every
    question must have an answer; a file with unanswerable questions is a TaskError pointing at squad_v2.
    """
    path = require_file(Path(path), "an official SQuAD JSON file (train-v1.1.json, dev-v1.1.json, ...)")
    try:
        document = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as error:
        raise TaskError(f"{path}: invalid JSON ({error}); expected official SQuAD JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise TaskError(f"{path}: not official SQuAD JSON; expected an object "
                        '{"version": ..., "data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}')
    columns: dict[str, list] = {name: [] for name in COLUMNS}
    unanswerable = 0
    try:
        for index, article in enumerate(document["data"]):
            title = article.get("title") or f"article {index}"
            for paragraph in article["paragraphs"]:
                context = paragraph["context"]
                for qa in paragraph["qas"]:
                    answers = [] if qa.get("is_impossible", False) else qa["answers"]
                    unanswerable += not answers
                    columns[ID].append(str(qa["id"]))
                    columns[TITLE].append(title)
                    columns[CONTEXT].append(context)
                    columns[QUESTION].append(qa["question"])
                    columns[ANSWERS].append({"text": [a["text"] for a in answers],
                                             "answer_start": [int(a["answer_start"]) for a in answers]})
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        raise TaskError(f"{path}: article {index}: malformed SQuAD record ({type(error).__name__}: {error}); "
                        "expected paragraphs[].context and qas[].id/question/answers[].text/answer_start") from None
    if not columns[ID]:
        raise TaskError(f"{path} has no questions; give a SQuAD file with at least one question")
    if unanswerable and not version_2:
        raise TaskError(f"{path}: {unanswerable} question(s) have no answer (SQuAD 2.0 data); use task squad_v2")
    return Dataset.from_dict(columns).cast(FEATURES)  # arrow-level cast: much faster than encoding rows


def read_squad_local(spec: TaskSpec, data_dir: Path) -> dict[str, Dataset]:
    """TaskSpec.read_local: the official train / dev files under data_dir; either may be absent, not both."""
    train_name, dev_name = _FILES[spec.name]
    if not Path(data_dir).is_dir():
        raise TaskError(f"data_dir {data_dir} is not a directory; task {spec.name} expects {spec.local_layout}")
    splits = {split: read_squad_json(Path(data_dir) / name, is_version_2(spec))
              for split, name in (("train", train_name), ("validation", dev_name))
              if (Path(data_dir) / name).is_file()}
    if not splits:
        raise TaskError(f"missing file {Path(data_dir) / dev_name}: task {spec.name} expects {spec.local_layout}")
    return splits


def read_squad_file(spec: TaskSpec, path: Path, text_columns, label_column) -> Dataset:
    """TaskSpec.read_file: one official-format JSON file; its columns are fixed."""
    if text_columns is not None or label_column is not None:
        raise TaskError(f"task {spec.name} reads official SQuAD JSON with fixed fields; "
                        "drop text_columns / label_column (--text-columns / --label-column)")
    return read_squad_json(path, is_version_2(spec))


def read_squad_hub(spec: TaskSpec, dataset_dict) -> dict[str, Dataset]:
    """TaskSpec.read_hub: the hub datasets already use the normalized schema."""
    return {split: dataset_dict[split].select_columns(list(COLUMNS)).cast(FEATURES) for split in spec.hub_splits}


def _spec(name: str, hub: str) -> TaskSpec:
    train_name, dev_name = _FILES[name]
    return TaskSpec(
        name=name,
        text_columns=(QUESTION, CONTEXT),
        label_column=ANSWERS,
        num_labels=2,  # the QA head's two outputs per token: start and end logits
        label_names=None,
        metric_names=("exact_match", "f1"),  # v2 results add HasAns_* / NoAns_* (see qa_metrics.py)
        main_metric="f1",
        hub_path=(hub, None),
        local_layout=f"{train_name} and/or {dev_name} (official SQuAD JSON)",
        kind=QUESTION_ANSWERING,
        read_local=read_squad_local,
        read_file=read_squad_file,
        read_hub=read_squad_hub,
        group_column=TITLE,
    )


SQUAD = _spec("squad", "rajpurkar/squad")
SQUAD_V2 = _spec("squad_v2", "rajpurkar/squad_v2")
SQUAD_TASKS = (SQUAD, SQUAD_V2)


# ------------------------------------------------------------------------------------------------ features


def _encode_windows(examples: dict[str, list], tokenizer, max_length: int, doc_stride: int):
    """Tokenize a batch of rows into windows. Returns (encoding, context_sequence_id).

    The question goes first unless the tokenizer pads on the left (XLNet-style models read context first), as in
    run_qa.py. encoding["overflow_to_sample_mapping"][k] is the row of window k; encoding.sequence_ids(k)[t] is
    0 / 1 for a token of the first / second text and None for special tokens.
    """
    if not tokenizer.is_fast:
        raise TaskError(f"SQuAD features need a fast tokenizer (offset mappings); {type(tokenizer).__name__} is not")
    question_first = tokenizer.padding_side == "right"
    questions = [q.lstrip() for q in examples[QUESTION]]  # leading spaces would only eat context room (run_qa)
    contexts = examples[CONTEXT]
    # The tokenizer panics when a window leaves no more than doc_stride tokens for context; say why instead.
    question_tokens = [len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"]]
    longest = max(range(len(questions)), key=question_tokens.__getitem__)
    room = max_length - tokenizer.num_special_tokens_to_add(pair=True) - question_tokens[longest]
    if room <= doc_stride:
        raise TaskError(f"question {questions[longest][:80]!r} has {question_tokens[longest]} tokens, leaving {room} "
                        f"context tokens per window at max_length={max_length}; a window needs more than "
                        f"doc_stride={doc_stride}: raise max_length or lower doc_stride")
    encoding = tokenizer(
        questions if question_first else contexts,
        contexts if question_first else questions,
        truncation="only_second" if question_first else "only_first",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,  # the collator pads each batch
    )
    return encoding, 1 if question_first else 0


def resolve_doc_stride(max_length: int, doc_stride: int | None) -> int:
    """doc_stride, or max_length // 3 when None (128 at run_qa.py's max_length 384); checks both."""
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length <= 0:
        raise TaskError(f"max_length must be a positive integer, got {max_length!r}")
    doc_stride = max_length // 3 if doc_stride is None else doc_stride
    if not isinstance(doc_stride, int) or isinstance(doc_stride, bool) or doc_stride <= 0:
        raise TaskError(f"doc_stride must be a positive integer, got {doc_stride!r}")
    if doc_stride >= max_length:
        raise TaskError(f"doc_stride ({doc_stride}) must be smaller than max_length ({max_length})")
    return doc_stride


def _check_rows(dataset: Dataset) -> None:
    missing = [c for c in (ID, CONTEXT, QUESTION, ANSWERS) if c not in dataset.column_names]
    if missing:
        raise TaskError(f"dataset lacks SQuAD column(s) {missing}; its columns are {dataset.column_names}; "
                        "load it with lorakit.tasks.load_splits('squad', ...)")
    if len(dataset) == 0:
        raise TaskError("the SQuAD dataset is empty; give at least one question")


def prepare_train_features(dataset: Dataset, tokenizer, max_length: int = 384, doc_stride: int | None = None,
                           batch_size: int = 1000) -> Dataset:
    """Training features: input_ids, attention_mask, (token_type_ids), start_positions, end_positions.

    One row per window, so there are at least as many features as questions. Only the first gold answer is
    used (SQuAD train questions have exactly one). doc_stride None: max_length // 3 (resolve_doc_stride).
    """
    doc_stride = resolve_doc_stride(max_length, doc_stride)
    _check_rows(dataset)

    def encode(examples: dict[str, list]) -> dict[str, list]:
        encoding, context_id = _encode_windows(examples, tokenizer, max_length, doc_stride)
        starts, ends = [], []
        for k, offsets in enumerate(encoding["offset_mapping"]):  # offsets[t] = (char start, char end) of token t
            input_ids = encoding["input_ids"][k]
            cls_index = input_ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in input_ids else 0
            sequence_ids = encoding.sequence_ids(k)
            answers = examples[ANSWERS][encoding["overflow_to_sample_mapping"][k]]
            if not answers["answer_start"]:  # unanswerable (v2)
                starts.append(cls_index)
                ends.append(cls_index)
                continue
            start_char = answers["answer_start"][0]
            end_char = start_char + len(answers["text"][0])  # exclusive
            # token_start / token_end: first and last context token of this window
            token_start = sequence_ids.index(context_id)
            token_end = len(sequence_ids) - 1 - sequence_ids[::-1].index(context_id)
            if not (offsets[token_start][0] <= start_char and offsets[token_end][1] >= end_char):
                starts.append(cls_index)  # the answer is not wholly inside this window
                ends.append(cls_index)
                continue
            # Move token_start right past the last token starting at or before start_char, then step back one;
            # move token_end left past every token ending at or after end_char, then step forward one.
            while token_start < len(offsets) and offsets[token_start][0] <= start_char:
                token_start += 1
            starts.append(token_start - 1)
            while offsets[token_end][1] >= end_char:
                token_end -= 1
            ends.append(token_end + 1)
        out = {name: encoding[name] for name in MODEL_INPUTS if name in encoding}
        out["start_positions"], out["end_positions"] = starts, ends
        return out

    return dataset.map(encode, batched=True, batch_size=batch_size, remove_columns=dataset.column_names,
                       desc="SQuAD train features")


def prepare_eval_features(dataset: Dataset, tokenizer, max_length: int = 384, doc_stride: int | None = None,
                          batch_size: int = 1000) -> Dataset:
    """Evaluation features: the model inputs plus example_id and offset_mapping (EVAL_META_COLUMNS).

    offset_mapping[t] is the (start, end) character span of token t in the context, or None when token t is
    not a context token, so a predicted span can only land in the context. Batch only the model inputs
    (`features.remove_columns(list(EVAL_META_COLUMNS))`; qa_eval.qa_logits selects them itself).
    Use the same max_length / doc_stride as for training.
    """
    doc_stride = resolve_doc_stride(max_length, doc_stride)
    _check_rows(dataset)

    def encode(examples: dict[str, list]) -> dict[str, list]:
        encoding, context_id = _encode_windows(examples, tokenizer, max_length, doc_stride)
        out = {name: encoding[name] for name in MODEL_INPUTS if name in encoding}
        out["example_id"] = [examples[ID][row] for row in encoding["overflow_to_sample_mapping"]]
        out["offset_mapping"] = [  # per window: the (start, end) character span of context tokens, else None
            [span if side == context_id else None for span, side in zip(offsets, encoding.sequence_ids(k))]
            for k, offsets in enumerate(encoding["offset_mapping"])
        ]
        return out

    return dataset.map(encode, batched=True, batch_size=batch_size, remove_columns=dataset.column_names,
                       desc="SQuAD eval features")
