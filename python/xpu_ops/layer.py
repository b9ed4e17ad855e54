"""Layer ops with vLLM's signatures (``vllm._custom_ops``): ``rms_norm``,
``fused_add_rms_norm``, ``rotary_embedding``, ``silu_and_mul``. Outputs and
in-place arguments are written through, never copied.

float32 / float16 / bfloat16 (``ml_dtypes.bfloat16``) arrays; every op
computes in float32 and rounds once per output. Nothing is written when an
argument is invalid: :class:`xpu_ops.Error` is raised instead.
"""

from __future__ import annotations

import ctypes
from typing import Any, Optional

from . import _lib
from ._lib import TENSOR

__all__ = ["rms_norm", "fused_add_rms_norm", "rotary_embedding", "silu_and_mul"]

_rms_norm = _lib.function("xops_rms_norm", [TENSOR, TENSOR, TENSOR, ctypes.c_double])
_fused_add_rms_norm = _lib.function(
    "xops_fused_add_rms_norm", [TENSOR, TENSOR, TENSOR, ctypes.c_double]
)
_rotary_embedding = _lib.function(
    "xops_rotary_embedding", [TENSOR, TENSOR, TENSOR, ctypes.c_int64, TENSOR, ctypes.c_int32]
)
_silu_and_mul = _lib.function("xops_silu_and_mul", [TENSOR, TENSOR])


def rms_norm(out: Any, input: Any, weight: Any, epsilon: float) -> None:
    """``out = input / sqrt(mean(input**2, -1) + epsilon) * weight``.

    input: ``[..., hidden_size]`` (last dim contiguous; leading dims may be a
    row-strided view). out: same shape and dtype; may be ``input`` itself.
    weight: ``[hidden_size]`` float32/float16/bfloat16. epsilon >= 0.
    """
    o = _lib.tensor_out(out, "out")
    x = _lib.tensor(input, "input")
    w = _lib.tensor(weight, "weight")
    _lib.call(_rms_norm, o.ref, x.ref, w.ref, float(epsilon))


def fused_add_rms_norm(input: Any, residual: Any, weight: Any, epsilon: float) -> None:
    """In place: ``residual = input + residual`` (rounded to the dtype), then
    ``input = rms_norm(residual, weight, epsilon)``. input and residual:
    ``[..., hidden_size]``, same shape and dtype, not overlapping."""
    x = _lib.tensor_out(input, "input")
    r = _lib.tensor_out(residual, "residual")
    w = _lib.tensor(weight, "weight")
    _lib.call(_fused_add_rms_norm, x.ref, r.ref, w.ref, float(epsilon))


def rotary_embedding(
    positions: Any,
    query: Any,
    key: Optional[Any],
    head_size: int,
    cos_sin_cache: Any,
    is_neox: bool,
) -> None:
    """Rotates the first ``rot_dim = cos_sin_cache.shape[1]`` dims of every
    head of ``query`` (and ``key``) in place by the angle of the token's
    position. ``cos_sin_cache[p]`` holds cos in ``[0, rot_dim/2)`` and sin
    after; NeoX pairs ``(i, i + rot_dim/2)``, GPT-J (``is_neox=False``) pairs
    ``(2i, 2i + 1)``.

    positions: int64/int32 ``[num_tokens]`` or ``[batch, seq_len]``, each in
    ``[0, max_position)``. query: ``[*positions.shape, num_heads * head_size]``
    or ``[*positions.shape, num_heads, head_size]`` (views of a qkv buffer
    work). key: ``None`` or like query with num_kv_heads dividing num_heads.
    """
    p = _lib.tensor(positions, "positions")
    q = _lib.tensor_out(query, "query")
    k = None if key is None else _lib.tensor_out(key, "key")
    c = _lib.tensor(cos_sin_cache, "cos_sin_cache")
    _lib.call(
        _rotary_embedding, p.ref, q.ref, _lib.ref(k), int(head_size), c.ref, 1 if is_neox else 0
    )


def silu_and_mul(out: Any, input: Any) -> None:
    """``out = silu(input[..., :d]) * input[..., d:]`` for input ``[..., 2*d]``
    and out ``[..., d]`` of the same dtype (``silu(x) = x / (1 + exp(-x))``)."""
    o = _lib.tensor_out(out, "out")
    x = _lib.tensor(input, "input")
    _lib.call(_silu_and_mul, o.ref, x.ref)
