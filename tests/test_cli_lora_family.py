"""The LoRA family on the command line: --dora, --lora-init pissa|olora|loftq, --loftq-iter; compare's rows."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import error_line, make_tiny_run_inputs, tiny_flags

from lorakit.cli.main import build_parser, main
from lorakit.cli.flags import train_config_from_args
from lorakit.experiments.compare import method_configs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_run_inputs(tmp_path_factory.mktemp("family"))


def test_flags_reach_the_lora_config(tiny, tmp_path):
    args = build_parser().parse_args(tiny_flags(tiny, tmp_path, "--method", "lora", "--dora", "--lora-init", "kaiming"))
    config = train_config_from_args(args).lora_config()
    assert config.use_dora and config.init == "kaiming"
    args = build_parser().parse_args(tiny_flags(tiny, tmp_path, "--method", "qlora", "--lora-init", "loftq",
                                                "--loftq-iter", "3"))
    config = train_config_from_args(args).lora_config()
    assert config.init == "loftq" and config.loftq_iter == 3


@pytest.mark.parametrize("extra", [("--lora-init", "bogus"), ("--method", "lora", "--lora-init", "loftq"),
                                   ("--method", "qlora", "--lora-init", "pissa")])
def test_bad_family_flags_are_one_line(tiny, tmp_path, capsys, extra):
    try:
        code = main(tiny_flags(tiny, tmp_path / "o", *extra))
    except SystemExit as exit_:  # argparse's own check of the --lora-init value
        code = exit_.code
    assert code == 2
    assert "init" in error_line(capsys)


@pytest.mark.parametrize("extra", [("--method", "lora", "--dora"), ("--method", "lora", "--lora-init", "pissa"),
                                   ("--method", "qlora", "--lora-init", "loftq", "--loftq-iter", "2")])
def test_train_runs_and_saves(tiny, tmp_path, extra):
    main([*tiny_flags(tiny, tmp_path / "run", *extra), "--threads", "1"])
    fields = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert fields["use_dora"] == ("--dora" in extra)
    assert fields["r"] == (16 if "pissa" in extra else 8)  # PiSSA saved as rank-2r LoRA on the original base


def test_compare_rows():
    configs = method_configs({"model": "m", "task": "sst2"}, ["dora", "pissa", "olora", "qlora-loftq"], Path("/tmp/c"))
    assert configs["dora"].dora and configs["dora"].method == "lora"
    assert configs["pissa"].lora_init == "pissa" and configs["olora"].lora_init == "olora"
    assert configs["qlora-loftq"].method == "qlora" and configs["qlora-loftq"].lora_init == "loftq"
    assert str(configs["qlora-loftq"].output).endswith("qlora-loftq")
