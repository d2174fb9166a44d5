"""Weight quantization for QLoRA: NF4, FP4, 8-bit dynamic (double quantization) and int8, on plain tensors.

    q = quantize_4bit(w, kind="nf4", block_size=64, double_quant=True)   # w: any shape, float
    w_hat = dequantize_4bit(q)                                           # same shape, float32
    q8 = quantize_int(w, bits=8)                                         # LLM.int8 vector-wise (per row)
    quantize(w, kind, ...) / dequantize(q) dispatch on the kind name.

4-bit block-wise absmax quantization (Dettmers et al. 2023, QLoRA eq. 1-2), for a flattened weight X
of n elements cut into blocks of B (the last block may be shorter):
    c_b      = max_i |X_b,i|                       absmax "quantization constant" of block b, fp32
    code_i   = argmin_j |X_i / c_b - q_j|          nearest of the 16 table values q_j in [-1, 1]
    X_hat_i  = q[code_i] · c_b
Two 4-bit codes share a byte, the first element in the high nibble (bitsandbytes' order).
Double quantization (QLoRA section 3) stores c = c_2(c - mean(c)) in 8 bits: the constants minus their
mean, in blocks of 256, with bitsandbytes' signed 8-bit dynamic map; 32/64 bits per parameter become
8/64 + 32/(64·256), so NF4 costs 4.127 instead of 4.5 bits.

Codes, constants and dequantized values are bit-identical to bitsandbytes (0.50, CPU) for the same
settings: its rounding is reproduced in the functions below and tested in tests/test_quant_codes.py. One
caveat: bitsandbytes' C++ FP4 dequantizer returns -0.0 for code 8 where its table (and this module)
has +0.0; the values compare equal.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

KINDS = ("nf4", "fp4", "int8")
BLOCK_SIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)  # as bitsandbytes.functional.quantize_4bit
INT_BITS = (2, 3, 4, 5, 6, 7, 8)  # linear integer codes stored in int8
DQ_BLOCK_SIZE = 256  # blocks of absmax constants in double quantization (QLoRA)


def create_normal_map(offset: float = 0.9677083) -> torch.Tensor:
    """NormalFloat table (QLoRA section 3): 16 values = normalized quantiles of N(0, 1).

    Positive half: Φ⁻¹ at 9 evenly spaced probabilities from `offset` down to 0.5, dropping 0.5 -> 8 values;
    negative half: -Φ⁻¹ at 8 such probabilities, dropping 0.5 -> 7 values; plus an exact 0. The table is
    asymmetric (8 positive, 7 negative) so that 0 is representable with 4 bits; dividing by the largest
    value maps it to [-1, 1]. offset = 0.9677083 is bitsandbytes' choice (Φ⁻¹(offset) ≈ 1.848).
    Computed exactly as bitsandbytes' create_normal_map(offset, use_extra_value=True): the result equals
    NF4_CODE bit for bit (tested).
    """
    from scipy.stats import norm  # only here: the hard-coded table below needs no scipy

    positive = norm.ppf(torch.linspace(offset, 0.5, 9)[:-1]).tolist()  # 8 values, largest first
    negative = (-norm.ppf(torch.linspace(offset, 0.5, 8)[:-1])).tolist()  # 7 values
    values = torch.tensor(positive + [0.0] + negative).sort().values  # (16,) float32, ascending
    return values / values.max()


# NF4 table, index = 4-bit code; bitsandbytes' exact float32 values (== create_normal_map()).
NF4_CODE = torch.tensor(
    [
        -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
        -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
        0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
        0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
    ],
    dtype=torch.float32,
)  # fmt: skip


def create_fp4_map() -> torch.Tensor:
    """FP4 (E2M1) table with bitsandbytes' bit layout, index = 4-bit code s e1 e0 m.

    s (bit 3) is the sign. Exponent field e = (e1 e0) and mantissa bit m give the magnitude
        e = 0:  m · 0.0625                 (subnormal: 0 or 0.0625)
        e > 0:  (1 + m/2) · 2^(4 - e)      (e=1: 8, 12;  e=2: 4, 6;  e=3: 2, 3)
    i.e. a larger exponent field means a smaller value (bitsandbytes' convention, not IEEE-like).
    The 16 magnitudes are divided by the largest (12) to lie in [-1, 1]. Code 8 (sign set, e = m = 0)
    is +0.0, not -0.0, exactly as in bitsandbytes.get_4bit_type("fp4").
    """
    magnitudes = []
    for code in range(8):
        e, m = code >> 1, code & 1
        magnitudes.append(m * 0.0625 if e == 0 else (1 + m / 2) * 2.0 ** (4 - e))
    values = torch.tensor(magnitudes + [-v if v else 0.0 for v in magnitudes])  # (16,) float32
    return values / values.abs().max()


FP4_CODE = create_fp4_map()
CODES = {"nf4": NF4_CODE, "fp4": FP4_CODE}


def create_dynamic_map() -> torch.Tensor:
    """bitsandbytes' signed 8-bit dynamic map (Dettmers 2016): create_dynamic_map(signed=True), 256 values.

    Byte = sign bit, then a run of zeros whose length k = 0..6 is a decimal exponent, a 1 as indicator,
    then the remaining 6 - k bits as a linear fraction. For exponent k there are 2^(6-k) fractions: the
    midpoints of 2^(6-k) equal bins of [0.1, 1], scaled by 10^-k (both signs). Plus 0 and 1.0, sorted:
    (2 · 127 + 2 = 256) values in [-0.9930, 1], fine near 0, coarse near ±1.
    """
    data = []
    for i in range(7):  # i = 6 - k: i = 6 has the most fraction bits (largest values)
        boundaries = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)  # (2^i + 1,)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0  # (2^i,) bin midpoints
        data += ((10 ** (i - 6)) * means).tolist()
        data += (-(10 ** (i - 6)) * means).tolist()
    data += [0.0, 1.0]
    return torch.tensor(sorted(data), dtype=torch.float32)  # (256,) ascending


DYNAMIC_CODE = create_dynamic_map()


def _check(name: str, value, accepted) -> None:
    if value not in accepted:
        raise ValueError(f"{name}={value!r} is not supported; accepted: {list(accepted)}")


@dataclass
class QuantizedTensor:
    """A quantized weight: codes, constants and what is needed to rebuild it (see dequantize)."""

    kind: str  # "nf4" | "fp4" | "int8"
    shape: tuple[int, ...]  # shape of the original tensor
    block_size: int | None  # elements per absmax constant; None = int8 with one constant per row
    bits: int  # bits per code: 4 for nf4/fp4, 2..8 for the linear integer codes
    qweight: torch.Tensor  # 4-bit: (ceil(n/2),) uint8, two codes a byte; int: `shape`, int8
    absmax: torch.Tensor | None = None  # (n_blocks,) or (rows,) fp32; None when double-quantized
    absmax_q: torch.Tensor | None = None  # double quant: (n_blocks,) uint8 dynamic-map codes of absmax - offset
    absmax_scale: torch.Tensor | None = None  # double quant: (ceil(n_blocks/256),) fp32 absmax of those
    absmax_offset: torch.Tensor | None = None  # double quant: () fp32 mean of absmax

    def tensors(self) -> dict[str, torch.Tensor]:
        """The stored tensors by field name (None fields left out): what a module keeps as buffers."""
        names = ("qweight", "absmax", "absmax_q", "absmax_scale", "absmax_offset")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def bits_per_parameter(self) -> float:
        return 8 * self.nbytes() / math.prod(self.shape)


# ---------------------------------------------------------------- 4-bit packing

def pack_4bit(codes: torch.Tensor) -> torch.Tensor:
    """(n,) codes in [0, 15] -> (ceil(n/2),) uint8, element 2i in the high nibble; odd n pads a 0 code."""
    if codes.numel() and int(codes.max()) > 15:
        raise ValueError(f"pack_4bit: codes must be 4-bit values in [0, 15], got a code {int(codes.max())}")
    codes = codes.to(torch.uint8)
    if codes.numel() % 2:
        codes = torch.cat([codes, codes.new_zeros(1)])
    return (codes[0::2] << 4) | codes[1::2]


# ---------------------------------------------------------------- 8-bit dynamic (double quantization)

def _dynamic_lut() -> torch.Tensor:
    """bitsandbytes' CPU kernel looks codes up on a grid of 2^16 points over [-1, 1]: grid point g
    gets the nearest map value (ties to the lower code). Returns (65536,) uint8."""
    thresholds = (DYNAMIC_CODE[:-1] + DYNAMIC_CODE[1:]) * 0.5  # (255,) midpoints between map values
    i = torch.arange(65536, dtype=torch.float32)
    grid = (i + i) / torch.full_like(i, 65535.0) - 1.0  # (65536,) float32, as the kernel computes it
    return torch.searchsorted(thresholds, grid).to(torch.uint8)  # number of midpoints < grid value


_LUT = _dynamic_lut()


def quantize_blockwise_8bit(x: torch.Tensor, block_size: int = DQ_BLOCK_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-wise absmax quantization to the 8-bit dynamic map, as bitsandbytes.functional.quantize_blockwise
    on CPU. Returns codes (n,) uint8 and absmax (n_blocks,) fp32 for a flattened x of n elements.

    Rounding (bitsandbytes 0.50 CPU kernel): y = clamp(x · (1/c_b), -1, 1) is snapped to the grid point
    trunc(65535 · (y + 1)/2 + 0.5) (one float32 rounding, as its fused multiply-add), whose nearest map
    value is the code. This differs from the exact nearest map value within ~3e-5 of a midpoint (by one
    code), and near 0, where map values are closer than the grid step 3.05e-5: codes 124..130
    (|value| < 1e-5, exact 0 included) are never produced, y = 0 gets code 131 (+2.1e-5).
    An all-zero block gets codes 0 and absmax 0.
    """
    _check("block_size", block_size, BLOCK_SIZES)
    flat = x.reshape(-1).float()
    n = flat.numel()
    n_blocks = -(-n // block_size)
    blocks = torch.nn.functional.pad(flat, (0, n_blocks * block_size - n)).view(n_blocks, block_size)
    absmax = blocks.abs().amax(dim=1)  # (n_blocks,); the zero padding never raises it
    y = (blocks * (1.0 / absmax)[:, None]).clamp(-1.0, 1.0)  # (n_blocks, B) in [-1, 1]
    half = (y + 1.0) * 0.5  # float32, in [0, 1]
    grid_index = (half.double() * 65535.0 + 0.5).float().long()  # exact in float64, then one rounding
    codes = _LUT.to(x.device)[grid_index.clamp(0, 65535)]
    codes[absmax == 0] = 0
    return codes.reshape(-1)[:n], absmax


def dequantize_blockwise_8bit(codes: torch.Tensor, absmax: torch.Tensor, block_size: int = DQ_BLOCK_SIZE) -> torch.Tensor:
    """(n,) uint8 codes, (n_blocks,) absmax -> (n,) fp32: DYNAMIC_CODE[code] · c_b."""
    values = DYNAMIC_CODE.to(codes.device)[codes.long()]  # (n,)
    return values * absmax.repeat_interleave(block_size)[: codes.numel()]


# ---------------------------------------------------------------- NF4 / FP4

def quantize_4bit(x: torch.Tensor, kind: str = "nf4", block_size: int = 64, double_quant: bool = False) -> QuantizedTensor:
    """Block-wise absmax 4-bit quantization, bit-identical to bitsandbytes.functional.quantize_4bit(x,
    blocksize=block_size, quant_type=kind, compress_statistics=double_quant) (codes are its packed bytes,
    flattened; with double_quant absmax_q / absmax_scale / absmax_offset are its absmax / state2.absmax /
    offset).

    bitsandbytes' rounding, reproduced: full blocks are scaled by x · (1/c_b), the shorter last block by
    x / c_b (its constant clamped to >= 1e-38, zero full blocks use that only for the scaling); the code
    is the table value whose sorted-order midpoints bracket the scaled value, a value exactly on a midpoint
    going to the lower one. FP4 has two zeros (codes 0 and 8, both +0.0): values in (-0.0026, 0] get
    code 0, values in (0, 0.0026] code 8. An odd element count leaves a spare low nibble: the code of 0.0.
    """
    _check("kind", kind, ("nf4", "fp4"))
    _check("block_size", block_size, BLOCK_SIZES)
    code = CODES[kind].to(x.device)
    flat = x.reshape(-1).float()  # (n,)
    n = flat.numel()
    full = n - n % block_size
    blocks = flat[:full].view(-1, block_size)  # (n_full_blocks, B)
    absmax = blocks.abs().amax(dim=1)  # (n_full_blocks,)
    scaled = (blocks * (1.0 / absmax.clamp(min=1e-38))[:, None]).clamp(-1, 1).reshape(-1)  # (full,)
    if full < n:
        tail_absmax = flat[full:].abs().max().clamp(min=1e-38)
        absmax = torch.cat([absmax, tail_absmax[None]])  # (n_blocks,)
        scaled = torch.cat([scaled, (flat[full:] / tail_absmax).clamp(-1, 1)])  # (n,)

    if n % 2:
        scaled = torch.nn.functional.pad(scaled, (0, 1))  # odd n: the spare low nibble encodes 0.0
    order = torch.argsort(code, stable=True)  # table indices by value (NF4: identity)
    midpoints = (code[order[:-1]] + code[order[1:]]) / 2  # (15,) decision boundaries
    codes = order[torch.bucketize(scaled, midpoints)]  # (n or n+1,) nearest value, ties to the lower one
    qt = QuantizedTensor(kind, tuple(x.shape), block_size, 4, pack_4bit(codes))
    if double_quant:
        qt.absmax_offset = absmax.mean()  # ()
        qt.absmax_q, qt.absmax_scale = quantize_blockwise_8bit(absmax - qt.absmax_offset, DQ_BLOCK_SIZE)
    else:
        qt.absmax = absmax
    return qt


def _absmax(qt: QuantizedTensor) -> torch.Tensor:
    """The fp32 constants, rebuilt from their 8-bit codes when double-quantized: c = c_2 · q + mean."""
    if qt.absmax is not None:
        return qt.absmax
    return dequantize_blockwise_8bit(qt.absmax_q, qt.absmax_scale, DQ_BLOCK_SIZE) + qt.absmax_offset


_PAIR_TABLES: dict[tuple[str, torch.device], torch.Tensor] = {}


def pair_table(kind: str, device: torch.device) -> torch.Tensor:
    """(256, 2) fp32: row b holds the values of both codes packed in byte b, (table[b >> 4], table[b & 15]).

    One gather of the packed bytes into this table dequantizes two elements at once, without unpacking the
    nibbles into a temporary: about 2x faster than splitting the nibbles first and then a 16-entry lookup. Built once per device.
    """
    key = (kind, torch.device(device))
    if key not in _PAIR_TABLES:
        code = CODES[kind]
        _PAIR_TABLES[key] = torch.stack([code.repeat_interleave(16), code.repeat(16)], dim=1).to(device)
    return _PAIR_TABLES[key]


def dequantize_4bit(qt: QuantizedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """QuantizedTensor -> tensor of qt.shape: table[code] · c_b, computed in fp32, then cast to dtype.

    Bytes are gathered into pair_table (int32 indices: index_select is several times faster with them than
    with int64 ones on CPU) and scaled in place per block; the products are the same fp32 ones as element
    by element, so results stay bit-identical to bitsandbytes.
    """
    n = math.prod(qt.shape)
    table = pair_table(qt.kind, qt.qweight.device)
    values = table.index_select(0, qt.qweight.int()).view(-1)  # (2·ceil(n/2),) in [-1, 1]
    absmax = _absmax(qt)  # (n_blocks,)
    if n % qt.block_size == 0:  # whole blocks (every real weight): scale each block row in place
        out = values.view(-1, qt.block_size).mul_(absmax[:, None])
    else:  # a shorter last block
        out = values[:n] * absmax.repeat_interleave(qt.block_size)[:n]
    return out.view(qt.shape).to(dtype)


# ---------------------------------------------------------------- linear integer (int8)

def quantize_int(x: torch.Tensor, bits: int = 8, block_size: int | None = None) -> QuantizedTensor:
    """Symmetric absmax integer quantization: code = round(x · qmax / c), qmax = 2^(bits-1) - 1.

    block_size None: one constant per row of a 2-D x (LLM.int8 vector-wise; with bits=8 the codes and
    constants equal bitsandbytes.functional.int8_vectorwise_quant). Otherwise one per block of the
    flattened x. Rounding is torch.round (half to even). Zero rows/blocks get code 0.
    """
    _check("bits", bits, INT_BITS)
    qmax = 2 ** (bits - 1) - 1
    flat = x.float()
    if block_size is None:
        if x.dim() != 2:
            raise ValueError(f"row-wise int quantization needs a 2-D tensor, got shape {tuple(x.shape)}")
        rows = flat  # (out, in): one constant per output row
    else:
        _check("block_size", block_size, BLOCK_SIZES)
        n = x.numel()
        rows = torch.nn.functional.pad(flat.reshape(-1), (0, -n % block_size)).view(-1, block_size)
    absmax = rows.abs().amax(dim=1)  # (rows,) or (n_blocks,)
    scale = torch.where(absmax > 0, qmax / absmax, torch.zeros_like(absmax))  # codes per unit
    codes = torch.round(rows * scale[:, None]).to(torch.int8)
    qweight = codes.reshape(-1)[: x.numel()].view(x.shape)
    return QuantizedTensor("int8", tuple(x.shape), block_size, bits, qweight, absmax=absmax)


def dequantize_int(qt: QuantizedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """code · c · (1/qmax), per row or per block (rows: equal to bitsandbytes' int8_vectorwise_dequant)."""
    inv_qmax = 1.0 / (2 ** (qt.bits - 1) - 1)
    if qt.block_size is None:  # one fp32 temporary, scaled in place: (code · c) · (1/qmax)
        return qt.qweight.float().mul_(qt.absmax[:, None]).mul_(inv_qmax).to(dtype)  # (out, in)
    n = qt.qweight.numel()
    absmax = qt.absmax.repeat_interleave(qt.block_size)[:n]  # (n,)
    return qt.qweight.reshape(-1).float().mul_(absmax).mul_(inv_qmax).view(qt.shape).to(dtype)


# ---------------------------------------------------------------- dispatch and error

def quantize(
    x: torch.Tensor, kind: str = "nf4", block_size: int = 64, double_quant: bool = False, int8_blockwise: bool = False
) -> QuantizedTensor:
    """One entry for the QuantConfig kinds: nf4/fp4 (block_size, double_quant) or int8 (per row, or
    per block of block_size when int8_blockwise; double_quant does not apply)."""
    _check("kind", kind, KINDS)
    if kind == "int8":
        return quantize_int(x, bits=8, block_size=block_size if int8_blockwise else None)
    return quantize_4bit(x, kind, block_size, double_quant)


def dequantize(qt: QuantizedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    _check("kind", qt.kind, KINDS)
    if qt.kind == "int8":
        return dequantize_int(qt, dtype)
    return dequantize_4bit(qt, dtype)


def requantize_error(original: torch.Tensor, requantized: torch.Tensor) -> dict[str, float]:
    """How far a (de)quantized copy is from the original: max |W - W'| and ||W - W'||_F / ||W||_F."""
    if original.shape != requantized.shape:
        raise ValueError(f"shapes differ: original {tuple(original.shape)}, requantized {tuple(requantized.shape)}")
    diff = original.float() - requantized.float()
    norm = original.float().norm()
    return {
        "max_abs": diff.abs().max().item() if diff.numel() else 0.0,
        "rel_fro": (diff.norm() / norm).item() if norm > 0 else diff.norm().item(),
    }
