"""The LoRA family's initialisations: PiSSA, OLoRA (W0 keeps a residual) and LoftQ (W0 quantized against B·A).

Shapes: W0 (out, in) (GPT-2 Conv1D stores (in, out); transposed here and back); A (r, in); B (out, r); s = alpha/r.

PiSSA (Meng et al. 2024, eq. 2-4): W0 = U·S·Vᵀ;  B = U_r·sqrt(S_r / s),  A = sqrt(S_r / s)·V_rᵀ,  W_res = W0 - s·B·A.
    "pissa_niter_<N>": the top-r triplets by randomized SVD (torch.svd_lowrank, N subspace iterations; Halko 2011).
OLoRA (Büyükakyüz 2024): W0 = Q·R (thin QR);  B = Q[:, :r],  A = R[:r, :],  W_res = W0 - s·B·A (as PEFT: no 1/s).
    Both start exactly at W0 (W_res + s·B·A = W0) and train the principal / orthonormal directions.
    Saved adapters work on the unmodified base: with A0, B0 the initial values,
        W_res + s·B·A = W0 + s·(B·A - B0·A0) = W0 + s·[B | -B0]·[A ; A0]
    an ordinary LoRA of rank 2r and the same scaling (alpha doubled; alpha·sqrt(2) with rsLoRA), which is what
    PEFT's save_pretrained(path_initial_model_for_weight_conversion=...) writes.
LoftQ (Li et al. 2023, alg. 1): A_0 = B_0 = 0; for t = 1..T:
        Q_t = q(W0 - s·B_{t-1}·A_{t-1});   U·S·Vᵀ = W0 - dq(Q_t);   B_t = U_r·sqrt(S_r / s),  A_t = sqrt(S_r / s)·V_rᵀ
    with q lorakit's own NF4 / FP4 / int8 (quant.py), on CPU or GPU: no bitsandbytes. The base layer keeps
    Q_T and the adapter starts at (A_T, B_T), so dq(Q_T) + s·B_T·A_T is closer to W0 than dq(q(W0)) alone.
"""
from __future__ import annotations

import dataclasses
import logging

import torch
from torch import nn

from lorakit.config import QuantConfig

from lorakit.state import adapter_state
from lorakit.layers.lora import LoRALinear
from lorakit.quant.codes import dequantize, quantize
from lorakit.quant.linear import QuantLinear, quantize_model

logger = logging.getLogger(__name__)

RESIDUAL_INITS = ("pissa", "olora")  # and "pissa_niter_<N>"


def is_residual_init(init: str) -> bool:
    """PiSSA / OLoRA: the base weight holds W0 - s·B0·A0, so saved adapters are converted to plain LoRA."""
    return init in RESIDUAL_INITS or init.startswith("pissa_niter_")


def _weight(layer: LoRALinear) -> torch.Tensor:
    if isinstance(layer.base_layer, QuantLinear):
        raise ValueError("PiSSA / OLoRA / LoftQ initialise from the full-precision weight; inject LoRA before "
                         "quantize_model (LoftQ: lorakit.apply_loftq quantizes the base itself)")
    w = layer.base_layer.weight.detach().float()
    return w.t() if layer.fan_in_fan_out else w  # (out, in)


def _set_weight(layer: LoRALinear, w: torch.Tensor) -> None:
    """Write (out, in) fp32 `w` into the base weight in its own layout and dtype."""
    weight = layer.base_layer.weight
    with torch.no_grad():
        weight.copy_((w.t() if layer.fan_in_fan_out else w).to(weight.dtype))


def principal_factors(w: torch.Tensor, r: int, scaling: float, niter: int | None = None):
    """(A (r, in), B (out, r)) with s·B·A the best rank-r approximation of w (out, in): exact SVD, or randomized
    with `niter` subspace iterations."""
    if niter is None:
        u, s_vals, vh = torch.linalg.svd(w, full_matrices=False)  # u (out, k), s (k,), vh (k, in)
        u, s_vals, vh = u[:, :r], s_vals[:r], vh[:r]
    else:
        u, s_vals, v = torch.svd_lowrank(w, q=r, niter=niter)  # u (out, r), s (r,), v (in, r)
        vh = v.t()
    root = (s_vals / scaling).sqrt()  # sqrt(S_r / s): (r,)
    return root[:, None] * vh, u * root[None, :]  # A = sqrt(S_r/s)·V_rᵀ, B = U_r·sqrt(S_r/s)


@torch.no_grad()
def residual_init(layer: LoRALinear, init: str) -> None:
    """PiSSA / OLoRA: set A, B from W0 and replace W0 by the residual W0 - s·B·A; keep A0, B0 for saving."""
    w = _weight(layer)  # (out, in) fp32
    r, s = layer.r, layer.scaling
    if init == "olora":
        q, rr = torch.linalg.qr(w)  # q (out, k), rr (k, in)
        a, b = rr[:r].contiguous(), q[:, :r].contiguous()
    elif init == "pissa":
        a, b = principal_factors(w, r, s)
    elif init.startswith("pissa_niter_"):
        a, b = principal_factors(w, r, s, niter=int(init.removeprefix("pissa_niter_")))
    else:
        raise ValueError(f"residual_init: init={init!r}; accepted: pissa, pissa_niter_<N>, olora")
    layer.lora_A.weight.copy_(a)
    layer.lora_B.weight.copy_(b)
    _set_weight(layer, w - s * (b @ a))
    layer.register_buffer("init_A", a.clone(), persistent=False)  # A0 (r, in)
    layer.register_buffer("init_B", b.clone(), persistent=False)  # B0 (out, r)


def to_plain_lora(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Adapter state (keys without PEFT's prefix) as rank-2r LoRA on the original W0: A' = [A; A0], B' = [B | -B0]."""
    out = dict(state)
    for path, layer in model.named_modules():
        if isinstance(layer, LoRALinear) and "init_A" in layer._buffers:
            a_key, b_key = f"{path}.lora_A.weight", f"{path}.lora_B.weight"
            out[a_key] = torch.cat([state[a_key], layer.init_A.cpu().to(state[a_key].dtype)], 0)  # (2r, in)
            out[b_key] = torch.cat([state[b_key], -layer.init_B.cpu().to(state[b_key].dtype)], 1)  # (out, 2r)
    return out


def plain_lora_fields(fields: dict) -> dict:
    """adapter_config.json of the converted adapter: rank 2r, the same scaling, an ordinary LoRA init."""
    factor = 2**0.5 if fields["use_rslora"] else 2
    return {**fields, "r": 2 * fields["r"], "lora_alpha": fields["lora_alpha"] * factor,
            "rank_pattern": {k: 2 * v for k, v in fields["rank_pattern"].items()},
            "alpha_pattern": {k: v * factor for k, v in fields["alpha_pattern"].items()},
            "init_lora_weights": True}


@torch.no_grad()
def loftq_factors(w: torch.Tensor, r: int, scaling: float, config: QuantConfig, iters: int):
    """LoftQ alg. 1 on w (out, in) fp32. Returns (q_input, A, B): Q_T = q(q_input), and A_T, B_T."""
    a = torch.zeros(r, w.shape[1], device=w.device)
    b = torch.zeros(w.shape[0], r, device=w.device)
    for _ in range(iters):
        q_input = w - scaling * (b @ a)  # W0 - s·B_{t-1}·A_{t-1}
        qt = quantize(q_input, config.kind, config.block_size, config.double_quant, config.int8_blockwise)
        a, b = principal_factors(w - dequantize(qt, torch.float32), r, scaling)  # rank-r SVD of the residual
    return q_input, a, b


def _roundtrip(w: torch.Tensor, config: QuantConfig) -> torch.Tensor:
    qt = quantize(w, config.kind, config.block_size, config.double_quant, config.int8_blockwise)
    return dequantize(qt, torch.float32)


@torch.no_grad()
def apply_loftq(model: nn.Module, quant_config: QuantConfig) -> dict[str, dict[str, float]]:
    """LoftQ-initialise every LoRALinear of `model` (injected by add_lora on the full-precision model with
    init="loftq"), then quantize the model (quantize_model). Returns {path: {"plain": ||W0 - dq(q(W0))||_F,
    "loftq": ||W0 - (dq(Q_T) + s·B·A)||_F}} for the adapted layers."""
    iters = adapter_state(model).config.loftq_iter
    layers = [(p, m) for p, m in model.named_modules() if isinstance(m, LoRALinear)]
    errors, q_inputs = {}, {}
    for path, layer in layers:
        w = _weight(layer)  # (out, in)
        q_input, a, b = loftq_factors(w, layer.r, layer.scaling, quant_config, iters)
        layer.lora_A.weight.copy_(a)
        layer.lora_B.weight.copy_(b)
        q_inputs[path] = q_input
        plain = (w - _roundtrip(w, quant_config)).norm().item()
        loftq = (w - _roundtrip(q_input, quant_config) - layer.scaling * (b @ a)).norm().item()
        errors[path] = {"plain": plain, "loftq": loftq}
    for path, layer in layers:
        _set_weight(layer, q_inputs[path])  # quantize_model below turns it into Q_T exactly (q is deterministic)
    # the adapters' own lora_A / lora_B are nn.Linear too: never quantize them
    quantize_model(model, dataclasses.replace(quant_config, skip_modules=(*quant_config.skip_modules, "lora_A", "lora_B")))
    for path, layer in layers:
        if isinstance(layer.base_layer, QuantLinear):
            layer.fan_in_fan_out = False  # QuantLinear keeps (out, in) whatever layer it replaced
    total_plain = sum(e["plain"] ** 2 for e in errors.values()) ** 0.5
    total_loftq = sum(e["loftq"] ** 2 for e in errors.values()) ** 0.5
    logger.info("LoftQ (T=%d): quantization error ||W0 - (Q + s·B·A)||_F %.4g vs plain %.4g over %d layers",
                iters, total_loftq, total_plain, len(errors))
    return errors
