"""A kill campaign: SIGKILL `lorakit train` and `lorakit search --workers 2` at random moments and at the dangerous
ones, resume, and check that nothing was lost.

    python benchmarks/reliability.py --work /tmp/reliability              # the full campaign (benchmarks/results/reliability.md)
    python benchmarks/reliability.py --work /tmp/rel --train-kills 3 --strace-kills 2 --search-kills 1   # short

train (tiny 2-layer BERT, 96 CSV rows, 12 steps, evaluation and a checkpoint every 2 steps, one step checkpoint
kept, so every checkpoint deletes the previous one): chains of kill -> check -> `--resume auto`, each ending in an
uninterrupted resume whose result is compared bit for bit with one uninterrupted run (the adapter's tensors, the
per-step losses, learning rates and gradient norms of log.jsonl, every evaluation, metrics.json's evaluation).
Kills: at a random moment of the process's life (SIGKILL after a uniform delay), and, with strace
(`strace -f -e inject=<syscall>:signal=SIGKILL:when=N`, strace >= 4.16; apt-get install strace), exactly on the
N-th rename (atomic replacements of files and directories: checkpoints, checkpoints/best, the log rewrite), the
N-th unlink / rmdir (deleting old checkpoints and temporaries) and the N-th fsync (a file written, not yet renamed).
After each kill every visible file must parse completely (JSON, YAML, every log.jsonl line, safetensors) and
every checkpoint directory must hold all its files: "incomplete files". Hidden temporaries (.NAME.tmp-*, .NAME.old,
.NAME.trash-*) may remain after a kill; the next start cleans them (counted after the final resume, must be 0).

search (4 grid points x 4-step trials, --workers 2 --threads 1): SIGKILL the search process at random moments
(its trial processes die with it, PR_SET_PDEATHSIG), rerun the same command until it completes; then every grid
point must have exactly one complete trial (none lost, none run twice: one trial directory with a complete
result.json per point) with the objective of an uninterrupted search. search-trials: the same search, SIGKILLing
one of its trial processes (as the OOM killer would) while the search goes on: the search must exit non-zero while
a point is missing, and the same command again must complete every point once.

merge (`lorakit merge` of the reference run) and export (`lorakit export --gguf` of a tiny Llama adapter): SIGKILL
at random moments; after each kill the output is absent or complete (a merged model directory that loads, a GGUF
file GGUFReader reads), and the command run again succeeds.

Every command runs in a user's working directory holding their own files (config.yaml, adapter/, a concurrent.py
that would leave a mark if imported): their checksums, and those of the input data, must not change.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import transformers as tf
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
WORDS = [f"w{i}" for i in range(94)]
TIMING = ("elapsed_s", "examples_per_s", "eval_seconds")
STRACE_KINDS = {"rename": "rename,renameat,renameat2", "unlink": "unlink,unlinkat,rmdir", "fsync": "fsync,fdatasync"}


def make_inputs(root: Path) -> Path:
    """root/model (tiny BERT + WordPiece vocabulary), root/train.csv (96 rows), root/dev.csv (32 rows)."""
    model_dir = root / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tf.BertTokenizer(str(model_dir / "vocab.txt")).save_pretrained(model_dir)
    torch.manual_seed(0)
    config = tf.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=37, max_position_embeddings=64, num_labels=2)
    tf.BertForSequenceClassification(config).save_pretrained(model_dir)
    rng = random.Random(0)
    for name, n in (("train.csv", 96), ("dev.csv", 32)):
        lines = ["text,label"]
        for _ in range(n):
            words = [rng.choice(WORDS) for _ in range(rng.randint(3, 20))]
            lines.append(f"{' '.join(words)},{'pos' if 2 * sum(int(w[1:]) < 47 for w in words) > len(words) else 'neg'}")
        (root / name).write_text("\n".join(lines) + "\n")
    return root


# Commands run as `python -P -m lorakit`, as the `lorakit` console script does: a plain `python -m` puts the working
# directory (the user's, with its concurrent.py) first on sys.path. lorakit's own processes (search trials) use -P.
def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def train_argv(inputs: Path, output: Path, resume: bool) -> list[str]:
    return [sys.executable, "-P", "-m", "lorakit", "train", "--model", str(inputs / "model"), "--task", "csv",
            "--train-file", str(inputs / "train.csv"), "--eval-file", str(inputs / "dev.csv"), "--batch-size", "8",
            "--max-length", "32", "--max-steps", "12", "--eval-steps", "2", "--save-total-limit", "1",
            "--lora-dropout", "0.1", "--seed", "0", "--threads", "1", "--output", str(output),
            *(["--resume", "auto"] if resume else [])]


# --- what a run directory holds ------------------------------------------------------------------------------------

def fingerprint(run: Path) -> dict:
    """What must be bit-identical to an uninterrupted run (timings left out)."""
    tensors = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    log = [{k: v for k, v in json.loads(line).items() if k not in TIMING}
           for line in (run / "log.jsonl").read_text().splitlines()]
    metrics = json.loads((run / "metrics.json").read_text())
    return {"tensors": {k: v.numpy().tobytes() for k, v in tensors.items()}, "log": log,
            "eval": metrics["eval"], "best_step": metrics["best_step"], "steps": metrics["steps"]}


def incomplete(run: Path) -> list[str]:
    """Visible files that do not parse completely, and checkpoint / artifact directories missing a file."""
    bad = []
    for path in run.rglob("*"):
        if any(part.startswith(".") for part in path.relative_to(run).parts) or not path.is_file():
            continue
        try:
            if path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".jsonl":
                for line in path.read_text().splitlines():
                    json.loads(line)
            elif path.suffix == ".yaml":
                yaml.safe_load(path.read_text())
            elif path.suffix == ".safetensors":
                load_file(str(path))
        except Exception as err:  # noqa: BLE001 - any failure to parse is what is counted
            bad.append(f"{path}: {type(err).__name__}")
    needs = {"step-": ("trainable.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"),
             "best": ("trainable.safetensors", "state.json"),
             "adapter": ("adapter_config.json", "adapter_model.safetensors", "lorakit.json")}
    for directory in [*(run / "checkpoints").glob("*"), run / "adapter"]:
        for prefix, files in needs.items():
            if directory.is_dir() and directory.name.startswith(prefix):
                bad += [f"{directory}: no {f}" for f in files if not (directory / f).is_file()]
    return bad


def hidden(run: Path) -> list[str]:
    return [str(p) for p in run.rglob(".*")]


# --- train -----------------------------------------------------------------------------------------------------

def run_killed(argv: list[str], how: str, rng: random.Random, typical_s: float, counts: dict) -> bool:
    """Run argv and SIGKILL it per `how`; True if it was killed (False: it finished first)."""
    if how == "random":
        process = subprocess.Popen(argv, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            process.wait(timeout=rng.uniform(0.3, typical_s))
            return False
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return True
    syscalls = STRACE_KINDS[how]
    when = rng.randint(1, counts[how])
    traced = ["strace", "-f", "-o", "/dev/null", "-e", f"trace={syscalls}",
              "-e", f"inject={syscalls}:signal=SIGKILL:when={when}", *argv]
    status = subprocess.run(traced, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    return status in (137, -9)


def syscall_counts(argv: list[str], work: Path) -> dict:
    """How often an uninterrupted run makes each kind of dangerous syscall (the range of N for strace kills)."""
    log = work / "strace.txt"
    every = ",".join(STRACE_KINDS.values())
    subprocess.run(["strace", "-f", "-o", str(log), "-e", f"trace={every}", *argv], env=env(),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    text = log.read_text().splitlines()
    return {kind: max(1, sum(any(f" {name}(" in line or line.split(" ", 1)[-1].startswith(f"{name}(")
                                 for name in names.split(",")) for line in text))
            for kind, names in STRACE_KINDS.items()}


def train_campaign(inputs: Path, work: Path, random_kills: int, strace_kills: int, rng: random.Random) -> dict:
    reference = work / "reference"
    began = time.perf_counter()
    subprocess.run(train_argv(inputs, reference, False), env=env(), check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    typical = time.perf_counter() - began
    expected = fingerprint(reference)
    plan = ["random"] * random_kills
    counts = {}
    if strace_kills:
        counts = syscall_counts(train_argv(inputs, work / "counted", False), work)
        kinds = list(STRACE_KINDS)
        plan += [kinds[i % len(kinds)] for i in range(strace_kills)]
    figures = {"kills": {}, "chains": 0, "identical": 0, "incomplete": [], "hidden_after_resume": [],
               "reference_s": round(typical, 1), "syscalls_per_run": counts}
    chain, position = 0, 0
    while position < len(plan):
        run = work / f"chain-{chain:03d}"
        length = rng.randint(3, 6)  # kills in this chain before the final, uninterrupted resume
        for how in plan[position:position + length]:
            attempts = 0
            while not run_killed(train_argv(inputs, run, run.exists()), how, rng, typical, counts):
                attempts += 1  # it finished before the kill: start the chain again
                shutil.rmtree(run)
                if attempts > 5:
                    break
            else:
                figures["kills"][how] = figures["kills"].get(how, 0) + 1
                figures["incomplete"] += incomplete(run)
        position += length
        status = subprocess.run(train_argv(inputs, run, True), env=env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        figures["chains"] += 1
        if status.returncode == 0 and fingerprint(run) == expected:
            figures["identical"] += 1
        else:
            print(f"  chain {chain}: NOT identical (exit {status.returncode}) {status.stderr[-300:]}")
        figures["hidden_after_resume"] += hidden(run)
        chain += 1
    return figures


# --- search ------------------------------------------------------------------------------------------------------

def search_argv(inputs: Path, output: Path) -> list[str]:
    return [sys.executable, "-P", "-m", "lorakit", "search", "--model", str(inputs / "model"), "--task", "csv",
            "--train-file", str(inputs / "train.csv"), "--eval-file", str(inputs / "dev.csv"), "--batch-size", "8",
            "--max-length", "32", "--max-steps", "4", "--eval-steps", "2", "--seed", "0", "--space", "lora_r=1,2",
            "--space", "lora_alpha=4,8", "--workers", "2", "--threads", "1", "--output", str(output)]


def search_outcome(output: Path) -> dict:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="lorakit-search", storage=f"sqlite:///{output / 'study.db'}")
    complete, directories = {}, {}
    for trial in study.get_trials(deepcopy=False):
        key = json.dumps(trial.system_attrs.get("fixed_params", {}), sort_keys=True)
        if trial.state.name == "COMPLETE":
            complete.setdefault(key, []).append(trial.value)
    for result in output.glob("trials/*/result.json"):
        job = json.loads((result.parent / "job.json").read_text())["config"]
        if json.loads(result.read_text())["status"] == "complete":
            key = json.dumps({"lora_alpha": job["lora_alpha"], "lora_r": job["lora_r"]}, sort_keys=True)
            directories[key] = directories.get(key, 0) + 1
    return {"complete": complete, "finished_directories": directories}


def search_campaign(inputs: Path, work: Path, kills: int, rng: random.Random) -> dict:
    reference = work / "search-reference"
    began = time.perf_counter()
    subprocess.run(search_argv(inputs, reference), env=env(), check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    typical = time.perf_counter() - began
    expected = {k: v[0] for k, v in search_outcome(reference)["complete"].items()}
    output = work / "search-killed"
    figures = {"kills": 0, "runs": 0, "reference_s": round(typical, 1)}
    while figures["kills"] < kills:
        process = subprocess.Popen(search_argv(inputs, output), env=env(), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        figures["runs"] += 1
        try:
            process.wait(timeout=rng.uniform(1.0, typical))
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            figures["kills"] += 1
            continue
        shutil.rmtree(output)  # finished before the kill: start over, so each kill interrupts the study
    subprocess.run(search_argv(inputs, output), env=env(), check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    figures.update(trial_figures(output, expected), expected=expected)
    return figures


def trial_figures(output: Path, expected: dict) -> dict:
    """A finished search against the uninterrupted one's objectives: points, lost, run twice, identical."""
    outcome = search_outcome(output)
    return {"points": len(expected),
            "lost": sum(1 for k in expected if k not in outcome["complete"]),
            "run_twice": sum(len(v) - 1 for v in outcome["complete"].values())
            + sum(n - 1 for n in outcome["finished_directories"].values() if n > 1),
            "identical": sum(1 for k, v in expected.items() if outcome["complete"].get(k) == [v])}


# --- search: its trial processes killed -----------------------------------------------------------------------

def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def search_trial_campaign(inputs: Path, work: Path, kills: int, expected: dict, rng: random.Random) -> dict:
    """SIGKILL a trial process of a running search (the search lives on), then rerun the same command until it
    exits 0; every grid point must end with one complete trial, the uninterrupted search's objective."""
    output = work / "search-trials"
    figures = {"kills": 0, "runs": 0, "nonzero_while_missing": 0}
    for _ in range(4 * kills + 8):
        process = subprocess.Popen(search_argv(inputs, output), env=env(), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        figures["runs"] += 1
        while figures["kills"] < kills and process.poll() is None and not children(process.pid):
            time.sleep(0.2)  # wait for trial processes, then kill one of them a random moment later
        if figures["kills"] < kills and process.poll() is None:
            time.sleep(rng.uniform(0.5, 8.0))
            trials = children(process.pid)
            if trials and process.poll() is None:
                os.kill(rng.choice(trials), signal.SIGKILL)
                figures["kills"] += 1
        status = process.wait()
        figures["nonzero_while_missing"] += status != 0
        if status == 0 and figures["kills"] >= kills:
            break
        if status == 0:
            shutil.rmtree(output)  # finished before any kill: start over
    figures.update(trial_figures(output, expected), final_status=status)
    return figures


# --- merge and export ---------------------------------------------------------------------------------------------

def merge_argv(run: Path, output: Path) -> list[str]:
    return [sys.executable, "-P", "-m", "lorakit", "merge", "--adapter", str(run / "adapter"), "--output", str(output)]


def export_inputs(root: Path) -> tuple[Path, Path]:
    """A tiny Llama (byte-level BPE of 300 tokens) and a random all-linear LoRA adapter on it, saved."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from lorakit import LoraConfig, add_lora, save_adapter

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(["a tiny model reads a tiny text"] * 4, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = tf.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    torch.manual_seed(0)
    base = tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2,
                                              num_attention_heads=4, num_key_value_heads=2, intermediate_size=128))
    base.save_pretrained(root / "llama")
    tok.save_pretrained(root / "llama")
    model = add_lora(tf.AutoModelForCausalLM.from_pretrained(root / "llama"),
                     LoraConfig(r=4, alpha=8, target_modules="all-linear"))
    save_adapter(model, root / "llama-adapter")
    return root / "llama", root / "llama-adapter"


def export_argv(base: Path, adapter: Path, output: Path) -> list[str]:
    return [sys.executable, "-P", "-m", "lorakit", "export", "--adapter", str(adapter), "--model", str(base),
            "--gguf", str(output), "--gguf-type", "f32"]


def output_incomplete(path: Path) -> list[str]:
    """A merged model directory that does not load completely, or a GGUF file GGUFReader cannot read."""
    if not path.exists():
        return []
    if path.suffix == ".gguf":
        import gguf

        try:
            gguf.GGUFReader(str(path))
            return []
        except Exception as err:  # noqa: BLE001 - any failure to read is what is counted
            return [f"{path}: {type(err).__name__}"]
    missing = [f"{path}: no {name}" for name in ("config.json", "model.safetensors", "lorakit.json")
               if not (path / name).is_file()]
    return missing or incomplete(path)


def command_campaign(argv: list[str], output: Path, kills: int, rng: random.Random) -> dict:
    """SIGKILL one command at random moments; after each kill its output is absent or complete; then it runs to
    the end (exit 0) and its output is complete."""
    began = time.perf_counter()
    subprocess.run(argv, env=env(), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    typical = time.perf_counter() - began
    figures = {"kills": 0, "incomplete": [], "reference_s": round(typical, 1)}
    for _ in range(3 * kills):
        if figures["kills"] >= kills:
            break
        if run_killed(argv, "random", rng, typical, {}):
            figures["kills"] += 1
            figures["incomplete"] += output_incomplete(output)
    status = subprocess.run(argv, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    figures["final_status"] = status.returncode
    figures["incomplete"] += output_incomplete(output) + ([status.stderr[-300:]] if status.returncode else [])
    figures["hidden_after_rerun"] = [str(p) for p in output.parent.glob(f".{output.name}*")]
    return figures


# --- the user's files ----------------------------------------------------------------------------------------------

def user_directory(root: Path) -> Path:
    """The working directory of every command: files of the user's own, and a concurrent.py that leaves a mark
    (concurrent.py.ran) if any lorakit process imports it from the working directory."""
    root.mkdir(parents=True)
    (root / "config.yaml").write_text("mine: true\n")
    (root / "adapter").mkdir()
    (root / "adapter" / "notes.txt").write_text("keep me\n")
    (root / "concurrent.py").write_text("open(__file__ + '.ran', 'w').close()\n")
    return root


def checksums(*roots: Path) -> dict[str, str]:
    import hashlib

    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for root in roots for p in sorted(root.rglob("*"))
            if p.is_file()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch directory (emptied first)")
    parser.add_argument("--train-kills", type=int, default=14, help="random-moment kills of train")
    parser.add_argument("--strace-kills", type=int, default=12, help="kills on a rename / unlink / fsync (strace)")
    parser.add_argument("--search-kills", type=int, default=6)
    parser.add_argument("--trial-kills", type=int, default=6, help="kills of a search's trial processes")
    parser.add_argument("--merge-kills", type=int, default=6)
    parser.add_argument("--export-kills", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.strace_kills and shutil.which("strace") is None:
        parser.error("--strace-kills needs strace (apt-get install strace), or pass --strace-kills 0")
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    args.work = args.work.resolve()
    rng = random.Random(args.seed)
    inputs = make_inputs(args.work / "inputs")
    user = user_directory(args.work / "user")
    before = checksums(user, inputs)
    os.chdir(user)  # every command runs among the user's files
    began = time.perf_counter()
    train = train_campaign(inputs, args.work, args.train_kills, args.strace_kills, rng)
    others = {}
    if args.merge_kills:
        others["merge"] = command_campaign(merge_argv(args.work / "reference", args.work / "merged"),
                                           args.work / "merged", args.merge_kills, rng)
    if args.export_kills:
        base, adapter = export_inputs(args.work / "export-inputs")
        before.update(checksums(base, adapter))
        others["export"] = command_campaign(export_argv(base, adapter, args.work / "export" / "model.gguf"),
                                            args.work / "export" / "model.gguf", args.export_kills, rng)
    search = search_campaign(inputs, args.work, args.search_kills, rng) if args.search_kills else None
    trials = search_trial_campaign(inputs, args.work, args.trial_kills, search["expected"], rng) \
        if search and args.trial_kills else None
    changed = sorted(set(before.items()) ^ set(checksums(user, inputs, *(
        [args.work / "export-inputs"] if args.export_kills else [])).items()))
    kills = sum(train["kills"].values()) + (search["kills"] if search else 0) + (trials["kills"] if trials else 0) \
        + sum(o["kills"] for o in others.values())
    print(f"kills: {kills} (train: {train['kills']}; search --workers 2: {search['kills'] if search else 0}; its "
          f"trial processes: {trials['kills'] if trials else 0}; "
          + "; ".join(f"{name}: {o['kills']}" for name, o in others.items()) + ")")
    print(f"train: {train['identical']} of {train['chains']} kill-and-resume chains bit-identical to the "
          f"uninterrupted run; incomplete files after a kill: {len(train['incomplete'])}; hidden temporaries after "
          f"the final resume: {len(train['hidden_after_resume'])}; dangerous syscalls per run: "
          f"{train['syscalls_per_run']}")
    for line in train["incomplete"][:10] + train["hidden_after_resume"][:10]:
        print("  ", line)
    ok = train["identical"] == train["chains"] and not train["incomplete"] and not train["hidden_after_resume"]
    if search:
        print(f"search: {search['points']} grid points, {search['runs']} search runs; trials lost: {search['lost']}; "
              f"run twice: {search['run_twice']}; objective identical to an uninterrupted search: "
              f"{search['identical']} of {search['points']}")
        ok = ok and search["lost"] == 0 and search["run_twice"] == 0 and search["identical"] == search["points"]
    if trials:
        print(f"search, trial processes killed: {trials['runs']} search runs ({trials['nonzero_while_missing']} "
              f"exited non-zero with a point missing); trials lost: {trials['lost']}; run twice: "
              f"{trials['run_twice']}; identical: {trials['identical']} of {trials['points']}; final exit "
              f"{trials['final_status']}")
        ok = ok and trials["lost"] == 0 and trials["run_twice"] == 0 and trials["final_status"] == 0
    for name, o in others.items():
        print(f"{name}: incomplete outputs after a kill or the rerun: {len(o['incomplete'])}; final exit "
              f"{o['final_status']}; temporaries beside the output after the rerun: {len(o['hidden_after_rerun'])}")
        for line in o["incomplete"][:5]:
            print("  ", line)
        ok = ok and not o["incomplete"] and o["final_status"] == 0
    print(f"user files changed, added or removed (checksums of {len(before)} files): {len(changed)}")
    for path, _ in changed[:10]:
        print("  ", path)
    ok = ok and not changed
    print(f"{'PASS' if ok else 'FAIL'} in {time.perf_counter() - began:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
