"""`lorakit merge` with several adapters: the combined adapter (PEFT reads it and gives the logits of the Python
API's combination), the merged plain model with --unload, seeded DARE, and one-line errors with exit status 2."""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
import torch
import transformers as tf
from safetensors.torch import load_file

import lorakit
from helpers import inputs, logits, tiny_model
from lorakit.cli.main import main
from helpers import error_line, make_tiny_run_inputs, peft_model, tiny_flags, tiny_tokenizer

peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Tiny data and model, and three 4-step LoRA runs: r 4 (seeds 0 and 1, other lrs) and r 2."""
    root = tmp_path_factory.mktemp("combine_cli")
    tiny = make_tiny_run_inputs(root)
    paths = {"tiny": tiny}
    for name, extra in {"a": ("--lora-r", "4", "--seed", "0"), "b": ("--lora-r", "4", "--seed", "1", "--lr", "3e-3"),
                        "r2": ("--lora-r", "2", "--seed", "2")}.items():
        assert main(tiny_flags(tiny, root / name, "--lr", "1e-2", *extra)) == 0
        paths[name] = root / name
    return paths


def python_combination(runs, combination_type: str, weights: list[float], **options) -> torch.nn.Module:
    """The same combination through the Python API: runs a and b loaded on the tiny model, combined, set."""
    model = tf.AutoModelForSequenceClassification.from_pretrained(runs["tiny"] / "model").eval()
    lorakit.load_adapter(model, runs["a"] / "adapter", name="a")
    lorakit.load_adapter(model, runs["b"] / "adapter", name="b")
    lorakit.add_weighted_adapter(model, ["a", "b"], weights, "ab", combination_type=combination_type,
                                 modules_from="a", **options)
    return lorakit.set_adapter(model, "ab")


def token_batch():
    batch = inputs(batch=4, length=9, seed=3)
    return {k: v.clamp(max=60) for k, v in batch.items()}  # ids inside the tiny vocabulary


@pytest.mark.parametrize("combination_type,extra", [("ties", ["--density", "0.5"]), ("cat", []),
                                                    ("svd", ["--svd-rank", "3"])])
def test_combined_adapter_is_read_by_peft_with_the_python_apis_logits(runs, tmp_path, combination_type, extra):
    out = tmp_path / "ab"
    assert main(["merge", "--adapter", str(runs["a"]), "--adapter", str(runs["b"]), "--weights", "0.7", "0.3",
                 "--combination", combination_type, *extra, "--modules-from", "1", "--output", str(out)]) == 0
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in out.iterdir()}
    options = {"density": 0.5} if combination_type == "ties" else {"svd_rank": 3} if combination_type == "svd" else {}
    expected = logits(python_combination(runs, combination_type, [0.7, 0.3], **options), token_batch())
    base = tf.AutoModelForSequenceClassification.from_pretrained(runs["tiny"] / "model")
    theirs = peft.PeftModel.from_pretrained(base, str(out)).eval()
    torch.testing.assert_close(logits(theirs, token_batch()), expected, rtol=1e-5, atol=1e-5)
    plain = tf.AutoModelForSequenceClassification.from_pretrained(runs["tiny"] / "model").eval()
    assert not torch.allclose(logits(plain, token_batch()), expected, atol=1e-3)  # the adapter does something
    record = json.loads((out / "lorakit.json").read_text())
    assert record["combined"]["weights"] == [0.7, 0.3] and record["combined"]["combination_type"] == combination_type


def test_unload_writes_the_merged_plain_model(runs, tmp_path):
    out = tmp_path / "merged"
    assert main(["merge", "--adapter", str(runs["a"]), "--adapter", str(runs["b"]), "--combination", "linear",
                 "--weights", "1", "-0.5", "--modules-from", "2", "--output", str(out), "--unload"]) == 0
    merged = tf.AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()
    model = tf.AutoModelForSequenceClassification.from_pretrained(runs["tiny"] / "model").eval()
    lorakit.load_adapter(model, runs["a"] / "adapter", name="a")
    lorakit.load_adapter(model, runs["b"] / "adapter", name="b")
    lorakit.add_weighted_adapter(model, ["a", "b"], [1.0, -0.5], "ab", combination_type="linear", modules_from="b")
    lorakit.set_adapter(model, "ab")
    torch.testing.assert_close(logits(merged, token_batch()), logits(model, token_batch()), rtol=1e-5, atol=1e-5)
    assert main(["eval", "--model", str(out), "--output", str(tmp_path / "eval.json")]) == 0  # lorakit reads it


def test_dare_is_seeded(runs, tmp_path):
    flags = ["merge", "--adapter", str(runs["a"]), "--adapter", str(runs["b"]), "--combination", "dare_ties",
             "--density", "0.5", "--modules-from", "1"]
    saved = []
    for name, seed in (("x", "3"), ("y", "3"), ("z", "4")):
        assert main([*flags, "--seed", seed, "--output", str(tmp_path / name)]) == 0
        saved.append(load_file(tmp_path / name / "adapter_model.safetensors"))
    x, y, z = saved
    lora = [k for k in x if "lora_" in k]
    assert lora and all(torch.equal(x[k], y[k]) for k in x)
    assert not all(torch.equal(x[k], z[k]) for k in lora)


def test_unequal_ranks_work_with_cat_and_the_svd_types(runs, tmp_path):
    for combination_type in ("cat", "ties_svd"):
        out = tmp_path / combination_type
        assert main(["merge", "--adapter", str(runs["a"]), "--adapter", str(runs["r2"]), "--combination",
                     combination_type, "--density", "0.6", "--modules-from", "1", "--output", str(out)]) == 0
        config = json.loads((out / "adapter_config.json").read_text())
        assert config["r"] == (6 if combination_type == "cat" else 4) and config["lora_alpha"] == config["r"]


@pytest.mark.parametrize("flags,message", [
    (["--weights", "0.7"], "--weights gives 1 weight.s. for 2 --adapter.s."),
    (["--combination", "mean"], "combination_type 'mean' is not one of linear"),
    (["--combination", "ties"], "'ties' needs density in"),
    (["--majority-sign-method", "most"], "majority_sign_method 'most'"),
    (["--modules-from", "3"], "--modules-from 3: give a position among the 2"),
    (["--combination", "linear"], "each train their own 'classifier'.*--modules-from N, the N-th --adapter"),
])
def test_bad_combinations_exit_2_with_one_line(runs, tmp_path, capsys, flags, message):
    capsys.readouterr()
    argv = ["merge", "--adapter", str(runs["a"]), "--adapter", str(runs["b"]), *flags, "--output", str(tmp_path / "o")]
    assert main(argv) == 2
    line = error_line(capsys)
    assert line.startswith("lorakit merge: error:")
    assert re.search(message, line), line
    assert not (tmp_path / "o").exists()


def test_unequal_ranks_and_a_missing_directory_exit_2(runs, tmp_path, capsys):
    capsys.readouterr()
    assert main(["merge", "--adapter", str(runs["a"]), "--adapter", str(runs["r2"]), "--combination", "linear",
                 "--modules-from", "1", "--output", str(tmp_path / "o")]) == 2
    line = error_line(capsys)
    assert "'linear' needs adapters of equal rank (got ranks [4, 2])" in line and "cat, svd" in line
    assert main(["merge", "--adapter", str(runs["a"]), "--adapter", str(tmp_path / "none"), "--output",
                 str(tmp_path / "o")]) == 2
    assert "no such directory" in error_line(capsys)


def test_one_adapter_still_folds_in(runs, tmp_path):
    """One --adapter and no combination flag: the merged model, as before combinations existed."""
    assert main(["merge", "--adapter", str(runs["a"]), "--output", str(tmp_path / "m")]) == 0
    assert json.loads((tmp_path / "m" / "lorakit.json").read_text())["method"] == "merged"


def test_peft_adapters_of_a_causal_lm_through_the_command_line(tmp_path):
    """PEFT's own adapters (no lorakit record) on a tiny local Llama: lorakit merge --model --task instruct writes
    the adapter PEFT's add_weighted_adapter makes: PEFT reads it and gives the logits of its own combination."""
    base_dir, adapters, out = tmp_path / "llama", tmp_path / "adapters", tmp_path / "out"
    tiny_model("llama").save_pretrained(base_dir)
    tiny_tokenizer().save_pretrained(base_dir)
    theirs = peft_model("llama", [2, 4])[0]
    theirs.save_pretrained(adapters)  # adapters/a0, adapters/a1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs.add_weighted_adapter(["a0", "a1"], [0.5, 1.5], "new", combination_type="svd", svd_rank=3)
    theirs.set_adapter("new")
    assert main(["merge", "--model", str(base_dir), "--task", "instruct", "--adapter", str(adapters / "a0"),
                 "--adapter", str(adapters / "a1"), "--weights", "0.5", "1.5", "--svd-rank", "3",
                 "--output", str(out)]) == 0
    reread = peft.PeftModel.from_pretrained(tf.AutoModelForCausalLM.from_pretrained(base_dir), str(out)).eval()
    torch.testing.assert_close(logits(reread, inputs()), logits(theirs, inputs()), rtol=1e-5, atol=1e-5)


def test_combination_settings_from_a_config_file(runs, tmp_path, capsys):
    """--config YAML takes the combination settings under their field names; flags override the file."""
    (tmp_path / "ab.yaml").write_text("combination_type: ties\ndensity: 0.9\nweights: [0.7, 0.3]\n")
    base = ["merge", "--adapter", str(runs["a"]), "--adapter", str(runs["b"]), "--modules-from", "1",
            "--config", str(tmp_path / "ab.yaml")]
    assert main([*base, "--density", "0.5", "--output", str(tmp_path / "ab")]) == 0
    combined = json.loads((tmp_path / "ab" / "lorakit.json").read_text())["combined"]
    assert (combined["combination_type"], combined["density"], combined["weights"]) == ("ties", 0.5, [0.7, 0.3])
    (tmp_path / "bad.yaml").write_text("combination_type: ties\ndensity: lots\n")
    capsys.readouterr()
    assert main([*base[:-1], str(tmp_path / "bad.yaml"), "--output", str(tmp_path / "o")]) == 2
    assert "density must be a number or null, got 'lots'" in error_line(capsys)
