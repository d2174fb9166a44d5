"""The tensor maths of combining LoRA adapters into one (PEFT's `add_weighted_adapter`), on plain tensors.

Each adapter at one layer is a triple (A, B, s): A (r, in), B (out, r), scaling s, and its update is
ΔW = s·B·A (out, in) (for GPT-2's Conv1D and for embeddings the layer uses ΔWᵀ; the maths is the same on B·A).
Given adapters i = 1..n with weights w_i (may be negative), the combined adapter (A', B') has scaling 1
(r' = alpha' = new rank), so its update is B'·A'. Three families, as in PEFT:

  * "cat":   A' = [w_1 s_1 A_1; ...; w_n s_n A_n] (Σr_i, in),  B' = [B_1 ... B_n] (out, Σr_i)
             => B'·A' = Σ w_i s_i B_i A_i exactly (any ranks).
  * "linear", "ties", "dare_linear", "dare_ties", "magnitude_prune": A and B are merged SEPARATELY, each with the
             weight split as sqrt: a_i = sign(w_i s_i)·sqrt(|w_i s_i|), b_i = sqrt(|w_i s_i|), then
             A' = merge({A_i}, {a_i}),  B' = merge({B_i}, {b_i}). For "linear", B'·A' = Σ_ij b_i a_j B_i A_j: the
             cross terms i≠j make it an approximation of Σ w_i s_i B_i A_i (PEFT's documentation says so too).
             Stacking A_i needs equal ranks.
  * "svd" and "<merge>_svd": ΔW = merge({s_i B_i A_i}, {w_i}) (out, in), then the rank-r' truncated SVD
             ΔW ≈ U_r' diag(S_r') V_r'ᵀ, B' = U_r' diag(S_r') (out, r'), A' = V_r'ᵀ (r', in); optionally both
             clamped to ±q, q the `clamp` quantile of their entries together (kohya-ss' svd_merge_lora).

merge() (Yadav et al. 2023 "TIES-Merging"; Yu et al. 2023 "DARE"), on task tensors τ_i stacked (n, ...):
  linear:          Σ w_i τ_i
  magnitude_prune: Σ w_i prune_k(τ_i), prune_k keeps the k = ⌊density·numel⌋ largest |τ_i| entries
  ties:            prune_k, elect the sign γ = sign(Σ_i τ_i) ("total") or sign(Σ_i sign τ_i) ("frequency")
                   (γ = +1 where that is 0), then the disjoint mean: Σ_i w_i τ_i [sign τ_i = γ] / max(1, #agree)
  dare_linear:     Σ w_i m_i ⊙ τ_i / density, m_i ~ Bernoulli(density) per entry
  dare_ties:       the DARE drop-and-rescale, then ties' sign election and disjoint mean
"""
from __future__ import annotations

import math

import torch

from lorakit.combine.config import MERGES, SVD_TYPES, base_merge

LowRank = tuple[torch.Tensor, torch.Tensor, float]  # (A (r, in), B (out, r), scaling)


# --- merging task tensors (stacked (n, ...)) ----------------------------------------------------------------

def magnitude_prune_tensor(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the k = ⌊density·numel⌋ entries of largest |τ| (torch.topk's choice among ties), zero the rest."""
    if density >= 1:
        return tensor
    k = int(density * tensor.numel())
    keep = torch.zeros(tensor.numel(), dtype=tensor.dtype, device=tensor.device)
    keep[torch.topk(tensor.abs().reshape(-1), k=k, largest=True).indices] = 1
    return tensor * keep.reshape(tensor.shape)


def dare_tensor(tensor: torch.Tensor, density: float, generator: torch.Generator | None) -> torch.Tensor:
    """DARE: drop each entry with probability 1 - density, rescale the kept ones by 1/density (E unchanged)."""
    if density >= 1:
        return tensor
    kept = torch.bernoulli(torch.full_like(tensor, density), generator=generator)  # m ~ Bernoulli(density)
    return tensor * kept / density


def elected_sign_mask(stacked: torch.Tensor, method: str) -> torch.Tensor:
    """TIES' sign election on τ (n, ...): [sign τ_i = γ], γ = sign of Σ_i τ_i ("total") or of Σ_i sign τ_i
    ("frequency"), +1 where the sum is 0. A zero entry (pruned) never agrees."""
    sign = stacked.sign()
    votes = stacked.sum(dim=0) if method == "total" else sign.sum(dim=0)
    elected = torch.where(votes >= 0, 1.0, -1.0).to(stacked.dtype)
    return sign == elected


def merge_tensors(merge: str, tensors: list[torch.Tensor], weights: list[float], density: float | None,
                  sign_method: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """One of MERGES on the task tensors τ_i (all one shape) with weights w_i; the formulas are in the docstring
    of this module. The random draws (DARE) come in the order of `tensors`."""
    if merge in ("ties", "magnitude_prune"):
        tensors = [magnitude_prune_tensor(t, density) for t in tensors]
    elif merge in ("dare_linear", "dare_ties"):
        tensors = [dare_tensor(t, density, generator) for t in tensors]
    stacked = torch.stack(tensors)  # (n, ...)
    w = torch.tensor(weights, dtype=stacked.dtype, device=stacked.device).reshape(-1, *[1] * (stacked.dim() - 1))
    if merge in ("ties", "dare_ties"):
        agree = elected_sign_mask(stacked, sign_method)
        return (stacked * w * agree).sum(dim=0) / agree.sum(dim=0).clamp(min=1)  # the disjoint mean
    return (stacked * w).sum(dim=0)


# --- one layer: n adapters -> (A', B') with scaling 1 ------------------------------------------------------

def pad_rank(A: torch.Tensor, B: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero rows of A (rank, in) and columns of B (out, rank) up to `rank`: B·A unchanged (PEFT's layout: every
    layer of the new adapter has the new rank)."""
    extra = rank - A.shape[0]
    if extra <= 0:
        return A, B
    return torch.cat([A, A.new_zeros(extra, A.shape[1])]), torch.cat([B, B.new_zeros(B.shape[0], extra)], dim=1)


def combine_cat(factors: list[LowRank], weights: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """A' = [w_i s_i A_i] stacked on the rank axis (Σr_i, in), B' = [B_i] side by side (out, Σr_i)."""
    A = torch.cat([A_i * w * s for (A_i, _, s), w in zip(factors, weights)], dim=0)
    B = torch.cat([B_i for _, B_i, _ in factors], dim=1)
    return A, B


def unequal_ranks(combination_type: str, ranks: list[int]) -> ValueError:
    """The error of an entry-wise merge (MERGES) asked to combine adapters of different ranks."""
    return ValueError(f"combination_type {combination_type!r} needs adapters of equal rank (got ranks {ranks}): "
                      f"{', '.join(MERGES)} merge A and B entry by entry; cat, svd and the _svd variants "
                      f"({', '.join(SVD_TYPES[1:])}) take any ranks")


def combine_merged_factors(merge: str, factors: list[LowRank], weights: list[float], density: float | None,
                           sign_method: str, generator: torch.Generator | None = None):
    """A' = merge({A_i}, {sign(w_i s_i)·sqrt|w_i s_i|}), B' = merge({B_i}, {sqrt|w_i s_i|}): equal ranks only.
    The draws (DARE) come in PEFT's order: every A_i, then every B_i."""
    ranks = [A.shape[0] for A, _, _ in factors]
    if len(set(ranks)) != 1:
        raise unequal_ranks(merge, ranks)
    ws = [w * s for (_, _, s), w in zip(factors, weights)]
    a = [(1 if x >= 0 else -1) * math.sqrt(abs(x)) for x in ws]  # the sign goes on A's side only
    b = [math.sqrt(abs(x)) for x in ws]
    dtype = factors[0][0].dtype
    A = merge_tensors(merge, [A_i for A_i, _, _ in factors], a, density, sign_method, generator)
    B = merge_tensors(merge, [B_i for _, B_i, _ in factors], b, density, sign_method, generator)
    return A.to(dtype), B.to(dtype)


def combine_svd(merge: str, factors: list[LowRank], weights: list[float], rank: int, density: float | None,
                sign_method: str, clamp: float | None = None, full_matrices: bool = True,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """ΔW = merge({s_i B_i A_i}, {w_i}) (out, in); its rank-`rank` SVD gives B' = U_r diag(S_r), A' = V_rᵀ."""
    deltas = [s * (B_i @ A_i) for A_i, B_i, s in factors]  # (out, in) each
    delta = merge_tensors(merge, deltas, weights, density, sign_method, generator)
    U, S, Vh = torch.linalg.svd(delta, full_matrices=full_matrices)  # U (out, k), S (k,), Vh (k, in)
    k = min(rank, S.shape[0])
    B = U[:, :k] @ torch.diag(S[:k])  # (out, k)
    A = Vh[:k, :]  # (k, in)
    if clamp is not None:
        high = torch.quantile(torch.cat([B.flatten(), A.flatten()]), clamp)
        B, A = B.clamp(-high, high), A.clamp(-high, high)
    return pad_rank(A, B, rank)  # a layer narrower than `rank`: zero directions


def combine_layer(combination_type: str, factors: list[LowRank], weights: list[float], rank: int,
                  density: float | None = None, sign_method: str = "total", svd_clamp: float | None = None,
                  svd_full_matrices: bool = True, generator: torch.Generator | None = None):
    """(A' (rank, in), B' (out, rank)) of one layer, scaling 1: the adapters present at the layer (A_i, B_i, s_i)
    and their weights, combined by `combination_type` (one of COMBINATION_TYPES)."""
    if combination_type == "cat":
        A, B = combine_cat(factors, weights)
    elif combination_type in SVD_TYPES:
        return combine_svd(base_merge(combination_type), factors, weights, rank, density, sign_method, svd_clamp,
                           svd_full_matrices, generator)
    else:
        A, B = combine_merged_factors(combination_type, factors, weights, density, sign_method, generator)
    return pad_rank(A, B, rank)
