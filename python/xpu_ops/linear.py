"""FC / GEMM ops: ``F.linear``, weight-only int4/int8 linear in xpu-ops'
canonical layout (with importers from GPTQ, AWQ and compressed-tensors
checkpoints), and vLLM's W8A8 int8 ops.

Arrays are numpy (bf16 through ``ml_dtypes``) or CPU torch tensors, used
without copying. Ops that vLLM runs in place (``*_scaled_int8_quant``,
``int8_scaled_mm*``) take ``out`` first, as ``torch.ops._C`` does; ``linear``,
``wna16_linear`` and the importers allocate their results when ``out`` is not
given. Nothing is written when an argument is invalid: :class:`xpu_ops.Error`
is raised instead.
"""

from __future__ import annotations

import ctypes
from typing import Any, Optional, Sequence

from . import _lib
from ._lib import TENSOR

__all__ = [
    "linear",
    "PackedLinearWeight",
    "linear_packed",
    "wna16_linear",
    "wna16_dequantize",
    "wna16_row_bytes",
    "gptq_to_wna16",
    "awq_to_wna16",
    "compressed_tensors_to_wna16",
    "static_scaled_int8_quant",
    "dynamic_scaled_int8_quant",
    "scaled_int8_quant",
    "int8_scaled_mm",
    "int8_scaled_mm_azp",
]

_linear = _lib.function("xops_linear", [TENSOR] * 4)
_packed_create = _lib.function(
    "xops_packed_linear_weight_create", [TENSOR, ctypes.POINTER(ctypes.c_void_p)]
)
_packed_destroy = _lib.function("xops_packed_linear_weight_destroy", [ctypes.c_void_p], None)
_packed_shape = _lib.function(
    "xops_packed_linear_weight_shape",
    [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_uint64)],
)
_linear_packed = _lib.function("xops_linear_packed", [TENSOR, ctypes.c_void_p, TENSOR, TENSOR])
_wna16_linear = _lib.function("xops_wna16_linear", [TENSOR] * 7 + [ctypes.c_uint32])
_wna16_dequantize = _lib.function("xops_wna16_dequantize", [TENSOR] * 5 + [ctypes.c_uint32])
_row_bytes = _lib.function(
    "xops_wna16_row_bytes", [ctypes.c_uint32, ctypes.c_uint64], ctypes.c_uint64
)
_gptq = _lib.function(
    "xops_gptq_to_wna16",
    [TENSOR] * 4 + [ctypes.c_uint32, ctypes.c_int32] + [TENSOR] * 4 + [ctypes.POINTER(ctypes.c_int32)],
)
_awq = _lib.function("xops_awq_to_wna16", [TENSOR] * 6)
_ct = _lib.function(
    "xops_compressed_tensors_to_wna16",
    [TENSOR] * 4
    + [ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint32]
    + [TENSOR] * 4
    + [ctypes.POINTER(ctypes.c_int32)],
)
_static_quant = _lib.function("xops_static_scaled_int8_quant", [TENSOR] * 4)
_dynamic_quant = _lib.function("xops_dynamic_scaled_int8_quant", [TENSOR] * 4)
_int8_mm = _lib.function("xops_int8_scaled_mm", [TENSOR] * 6)
_int8_mm_azp = _lib.function("xops_int8_scaled_mm_azp", [TENSOR] * 8)


def _empty(like: Any, shape: Sequence[int], dtype: Any = None) -> Any:
    """A new array on `like`'s side (numpy or torch), `like`'s dtype by default."""
    if _lib._is_torch(like):
        import torch

        return torch.empty(tuple(shape), dtype=like.dtype if dtype is None else dtype)
    import numpy as np

    return np.empty(tuple(shape), dtype=like.dtype if dtype is None else dtype)


def _np_dtype(name: str) -> Any:
    import numpy as np

    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(name)


def _dtype_name(x: Any) -> str:
    return str(x.dtype).replace("torch.", "")


def _out_shape(x: Any, n: int) -> tuple:
    return tuple(x.shape[:-1]) + (n,)


def linear(x: Any, weight: Any, bias: Any = None, out: Any = None) -> Any:
    """``F.linear``: ``x @ weight.T + bias``.

    x: ``[M, K]`` or ``[K]`` float32/float16/bfloat16 (K contiguous); weight
    ``[N, K]`` of x's dtype; bias ``[N]`` (x's dtype or float32) or None; out
    ``[M, N]`` of x's dtype (allocated when None) or float32. fp32
    accumulation, identical results for any thread count. Returns ``out``.
    """
    if out is None:
        out = _empty(x, _out_shape(x, weight.shape[0]))
    xt, wt = _lib.tensor(x, "x"), _lib.tensor(weight, "weight")
    bt, ot = _lib.opt_tensor(bias, "bias"), _lib.tensor_out(out, "out")
    _lib.call(_linear, xt.ref, wt.ref, _lib.ref(bt), ot.ref)
    return out


class PackedLinearWeight:
    """A ``[N, K]`` linear weight packed once (at load) for the ISA tier
    active now (AMX tiles for bfloat16 on the amx tier, a plain copy
    otherwise); run it with
    :func:`linear_packed`. The source array is not referenced afterwards.
    Using it under a tier that cannot read its layout raises
    :class:`xpu_ops.Error` (UNSUPPORTED)."""

    def __init__(self, weight: Any):
        self._h = ctypes.c_void_p()
        wt = _lib.tensor(weight, "weight")
        _lib.call(_packed_create, wt.ref, ctypes.byref(self._h))
        n, k = ctypes.c_uint64(), ctypes.c_uint64()
        _lib.call(_packed_shape, self._h, ctypes.byref(n), ctypes.byref(k))
        self.shape = (n.value, k.value)
        self.dtype = weight.dtype

    def __del__(self):
        h = getattr(self, "_h", None)
        if h is not None and h.value:
            _packed_destroy(h)
            self._h = None


def linear_packed(x: Any, weight: PackedLinearWeight, bias: Any = None, out: Any = None) -> Any:
    """:func:`linear` with a :class:`PackedLinearWeight`: same arguments,
    dtypes and errors. Returns ``out``."""
    if not isinstance(weight, PackedLinearWeight):
        raise TypeError("`weight` must be a PackedLinearWeight")
    if out is None:
        out = _empty(x, _out_shape(x, weight.shape[0]))
    xt = _lib.tensor(x, "x")
    bt, ot = _lib.opt_tensor(bias, "bias"), _lib.tensor_out(out, "out")
    _lib.call(_linear_packed, xt.ref, weight._h, _lib.ref(bt), ot.ref)
    return out


def wna16_linear(
    x: Any,
    qweight: Any,
    scales: Any,
    zeros: Any = None,
    perm: Any = None,
    bias: Any = None,
    out: Any = None,
    bits: int = 4,
) -> Any:
    """Weight-only quantized linear with canonical tensors (from
    :func:`gptq_to_wna16`, :func:`awq_to_wna16` or
    :func:`compressed_tensors_to_wna16`): qweight uint8 ``[N, row_bytes]``,
    scales ``[N, K // group_size]``, zeros like scales or None (symmetric),
    perm int32 ``[K]`` (act-order) or None. Other arguments as :func:`linear`.
    """
    if out is None:
        out = _empty(x, _out_shape(x, qweight.shape[0]))
    args = [
        _lib.tensor(x, "x"),
        _lib.tensor(qweight, "qweight"),
        _lib.tensor(scales, "scales"),
        _lib.opt_tensor(zeros, "zeros"),
        _lib.opt_tensor(perm, "perm"),
        _lib.opt_tensor(bias, "bias"),
        _lib.tensor_out(out, "out"),
    ]
    _lib.call(_wna16_linear, *[_lib.ref(a) for a in args], int(bits))
    return out


def wna16_dequantize(
    qweight: Any, scales: Any, zeros: Any = None, perm: Any = None, out: Any = None, bits: int = 4, k: Optional[int] = None
) -> Any:
    """The float weights ``[N, K]`` (input-channel order) of canonical
    tensors; ``out`` defaults to float32 (K from ``perm``, ``k`` or the
    8-bit row length)."""
    if out is None:
        if k is None:
            k = perm.shape[0] if perm is not None else qweight.shape[1] if bits == 8 else None
        if k is None:
            raise TypeError("pass `k` (or `out`) to dequantize 4-bit codes without `perm`")
        if _lib._is_torch(scales):
            import torch

            out = torch.empty((qweight.shape[0], k), dtype=torch.float32)
        else:
            out = _empty(scales, (qweight.shape[0], k), _np_dtype("float32"))
    args = [
        _lib.tensor(qweight, "qweight"),
        _lib.tensor(scales, "scales"),
        _lib.opt_tensor(zeros, "zeros"),
        _lib.opt_tensor(perm, "perm"),
        _lib.tensor_out(out, "out"),
    ]
    _lib.call(_wna16_dequantize, *[_lib.ref(a) for a in args], int(bits))
    return out


def wna16_row_bytes(bits: int, k: int) -> int:
    """Bytes per canonical qweight row: ``64 * ceil(k / 128)`` (4-bit) or ``k`` (8-bit)."""
    return int(_row_bytes(int(bits), int(k)))


def _page_aligned_codes(n: int, row_bytes: int):
    """uint8 ``[n, row_bytes]`` starting on a 4 KiB page: the decode kernels
    stream rows as 64-byte blocks, and numpy places large arrays 16 bytes
    past a page (every block load then splits over two cache lines)."""
    import numpy as np

    nbytes = n * row_bytes
    buf = np.empty(nbytes + 4096, dtype=np.uint8)
    off = (-buf.ctypes.data) % 4096
    return buf[off : off + nbytes].reshape(n, row_bytes)


def _canonical_outputs(like: Any, n: int, k: int, groups: int, bits: int, scale_dtype: Any):
    import numpy as np

    if _lib._is_torch(like):
        import torch

        q = torch.empty((n, wna16_row_bytes(bits, k)), dtype=torch.uint8)
        s = torch.empty((n, groups), dtype=scale_dtype)
        z = torch.empty((n, groups), dtype=scale_dtype)
        p = torch.empty((k,), dtype=torch.int32)
    else:
        q = _page_aligned_codes(n, wna16_row_bytes(bits, k))
        s = np.empty((n, groups), dtype=scale_dtype)
        z = np.empty((n, groups), dtype=scale_dtype)
        p = np.empty((k,), dtype=np.int32)
    return q, s, z, p


def _result(q, s, z, p, act, has_zeros=True) -> dict:
    return {"qweight": q, "scales": s, "zeros": z if has_zeros else None, "perm": p if act else None}


def gptq_to_wna16(
    qweight: Any, qzeros: Any, scales: Any, g_idx: Any = None, bits: int = 4, checkpoint_format: str = "gptq"
) -> dict:
    """Imports an AutoGPTQ / GPTQModel linear (``qweight`` int32 ``[K / pack, N]``,
    ``qzeros`` int32 ``[G, N / pack]``, ``scales`` ``[G, N]``, optional ``g_idx``);
    ``checkpoint_format`` ``"gptq"`` (stored zero + 1) or ``"gptq_v2"``.
    Returns ``{"qweight", "scales", "zeros", "perm"}`` (perm None unless act-order)."""
    if checkpoint_format not in ("gptq", "gptq_v2"):
        raise ValueError(f"checkpoint_format must be 'gptq' or 'gptq_v2', got {checkpoint_format!r}")
    pack = 32 // int(bits)
    k, n, groups = qweight.shape[0] * pack, qweight.shape[1], scales.shape[0]
    q, s, z, p = _canonical_outputs(qweight, n, k, groups, bits, scales.dtype)
    act = ctypes.c_int32(0)
    ins = [_lib.tensor(qweight, "qweight"), _lib.tensor(qzeros, "qzeros"), _lib.tensor(scales, "scales"), _lib.opt_tensor(g_idx, "g_idx")]
    outs = [_lib.tensor_out(a, n_) for a, n_ in ((q, "out_qweight"), (s, "out_scales"), (z, "out_zeros"), (p, "out_perm"))]
    _lib.call(
        _gptq, *[_lib.ref(a) for a in ins], int(bits), int(checkpoint_format == "gptq_v2"),
        *[a.ref for a in outs], ctypes.byref(act),
    )
    return _result(q, s, z, p, act.value)


def awq_to_wna16(qweight: Any, qzeros: Any, scales: Any) -> dict:
    """Imports an AutoAWQ GEMM-layout linear (``qweight`` int32 ``[K, N / 8]``,
    ``qzeros`` int32 ``[G, N / 8]``, ``scales`` ``[G, N]``); returns as
    :func:`gptq_to_wna16`."""
    k, n, groups = qweight.shape[0], qweight.shape[1] * 8, scales.shape[0]
    q, s, z, p = _canonical_outputs(qweight, n, k, groups, 4, scales.dtype)
    ins = [_lib.tensor(qweight, "qweight"), _lib.tensor(qzeros, "qzeros"), _lib.tensor(scales, "scales")]
    outs = [_lib.tensor_out(a, n_) for a, n_ in ((q, "out_qweight"), (s, "out_scales"), (z, "out_zeros"))]
    _lib.call(_awq, *[a.ref for a in ins], *[a.ref for a in outs])
    return _result(q, s, z, p, 0)


def compressed_tensors_to_wna16(
    weight_packed: Any,
    weight_scale: Any,
    weight_shape: Sequence[int],
    weight_zero_point: Any = None,
    weight_g_idx: Any = None,
    num_bits: int = 4,
) -> dict:
    """Imports a compressed-tensors ``pack-quantized`` linear; ``weight_shape``
    is the checkpoint's ``[N, K]``. Returns as :func:`gptq_to_wna16` (zeros
    None for a symmetric weight)."""
    n, k = (int(v) for v in weight_shape)
    groups = weight_scale.shape[1]
    q, s, z, p = _canonical_outputs(weight_packed, n, k, groups, num_bits, weight_scale.dtype)
    act = ctypes.c_int32(0)
    ins = [
        _lib.tensor(weight_packed, "weight_packed"),
        _lib.tensor(weight_scale, "weight_scale"),
        _lib.opt_tensor(weight_zero_point, "weight_zero_point"),
        _lib.opt_tensor(weight_g_idx, "weight_g_idx"),
    ]
    has_zeros = weight_zero_point is not None
    outs = [_lib.tensor_out(q, "out_qweight"), _lib.tensor_out(s, "out_scales"),
            _lib.tensor_out(z, "out_zeros") if has_zeros else None, _lib.tensor_out(p, "out_perm")]
    _lib.call(
        _ct, *[_lib.ref(a) for a in ins], n, k, int(num_bits), *[_lib.ref(a) for a in outs], ctypes.byref(act)
    )
    return _result(q, s, z, p, act.value, has_zeros)


def static_scaled_int8_quant(out: Any, input: Any, scale: Any, azp: Any = None) -> None:
    """vLLM ``static_scaled_int8_quant``: ``out`` int8 =
    ``sat8(round_even(input / scale) (+ azp))``; scale one float32 (or a
    Python float), azp one int32 or None."""
    args = [_lib.tensor_out(out, "out"), _lib.tensor(input, "input"), _lib.scale_tensor(scale, "scale"), _lib.opt_tensor(azp, "azp")]
    _lib.call(_static_quant, *[_lib.ref(a) for a in args])


def dynamic_scaled_int8_quant(out: Any, input: Any, scales: Any, azp: Any = None) -> None:
    """vLLM ``dynamic_scaled_int8_quant``: per-token float32 ``scales``
    (``[num_tokens, 1]``) written, and int32 ``azp`` zero points when given
    (asymmetric)."""
    args = [
        _lib.tensor_out(out, "out"),
        _lib.tensor(input, "input"),
        _lib.tensor_out(scales, "scales"),
        None if azp is None else _lib.tensor_out(azp, "azp"),
    ]
    _lib.call(_dynamic_quant, *[_lib.ref(a) for a in args])


def scaled_int8_quant(input: Any, scale: Any = None, azp: Any = None, symmetric: bool = True):
    """vLLM ``_custom_ops.scaled_int8_quant``: returns ``(out, scales, azp)``;
    static when ``scale`` is given, else dynamic per token (with zero points
    when ``symmetric`` is False)."""
    import numpy as np

    if _lib._is_torch(input):
        import torch

        out = torch.empty(tuple(input.shape), dtype=torch.int8)
    else:
        out = np.empty(input.shape, dtype=np.int8)
    if scale is not None:
        static_scaled_int8_quant(out, input, scale, azp)
        return out, scale, azp
    tokens = int(np.prod(input.shape[:-1])) if len(input.shape) > 1 else 1
    if _lib._is_torch(input):
        import torch

        scales = torch.empty((tokens, 1), dtype=torch.float32)
        zp = None if symmetric else torch.empty((tokens, 1), dtype=torch.int32)
    else:
        scales = np.empty((tokens, 1), dtype=np.float32)
        zp = None if symmetric else np.empty((tokens, 1), dtype=np.int32)
    dynamic_scaled_int8_quant(out, input, scales, zp)
    return out, scales, zp


def int8_scaled_mm(out: Any, a: Any, b: Any, a_scales: Any, b_scales: Any, bias: Any = None) -> None:
    """vLLM CPU ``int8_scaled_mm``: ``out = a_scales * b_scales * (a @ b) + bias``
    with ``a`` int8 ``[M, K]`` and ``b`` int8 ``[K, N]`` column-major (e.g.
    ``weight.T`` of an ``[N, K]`` weight)."""
    args = [_lib.tensor_out(out, "out"), _lib.tensor(a, "a"), _lib.tensor(b, "b"),
            _lib.scale_tensor(a_scales, "a_scales"), _lib.scale_tensor(b_scales, "b_scales"), _lib.opt_tensor(bias, "bias")]
    _lib.call(_int8_mm, *[_lib.ref(x) for x in args])


def int8_scaled_mm_azp(
    out: Any, a: Any, b: Any, a_scales: Any, b_scales: Any, azp_adj: Any, azp: Any = None, bias: Any = None
) -> None:
    """vLLM CPU ``int8_scaled_mm_azp``: as :func:`int8_scaled_mm` with
    ``azp[m] * azp_adj[n]`` (or ``azp_adj[n]`` alone when azp is None)
    subtracted from the integer product."""
    args = [_lib.tensor_out(out, "out"), _lib.tensor(a, "a"), _lib.tensor(b, "b"),
            _lib.scale_tensor(a_scales, "a_scales"), _lib.scale_tensor(b_scales, "b_scales"),
            _lib.tensor(azp_adj, "azp_adj"), _lib.opt_tensor(azp, "azp"), _lib.opt_tensor(bias, "bias")]
    _lib.call(_int8_mm_azp, *[_lib.ref(x) for x in args])
