"""KV-cache ops with vLLM's signatures (``vllm._custom_ops`` /
``csrc/cache_kernels.cu``), written in place into the caches.

fp8 caches may be ``uint8`` arrays (vLLM's convention; ``kv_cache_dtype``
says which format) or ``ml_dtypes.float8_e4m3fn`` / ``float8_e5m2`` arrays.
Scales are float32 arrays of shape ``[1]`` or ``[num_heads]`` (or a Python
float); ``None`` means 1. Slots < 0 are padding. Nothing is written when an
argument is invalid: :class:`xpu_ops.Error` is raised instead.
"""

from __future__ import annotations

import ctypes
from typing import Any, Sequence

from . import _lib
from ._lib import TENSOR, TENSOR_ARRAY

__all__ = ["reshape_and_cache", "reshape_and_cache_flash", "copy_blocks", "swap_blocks"]

_KV_ARGS = [TENSOR, TENSOR, TENSOR, TENSOR, TENSOR, ctypes.c_char_p, TENSOR, TENSOR]
_reshape_and_cache = _lib.function("xops_reshape_and_cache", _KV_ARGS)
_reshape_and_cache_flash = _lib.function("xops_reshape_and_cache_flash", _KV_ARGS)
_copy_blocks = _lib.function(
    "xops_copy_blocks", [TENSOR_ARRAY, TENSOR_ARRAY, ctypes.c_size_t, TENSOR]
)
_swap_blocks = _lib.function("xops_swap_blocks", [TENSOR, TENSOR, TENSOR])


def _kv_call(fn, key, value, key_cache, value_cache, slot_mapping, kv_cache_dtype, k_scale, v_scale):
    k = _lib.tensor(key, "key")
    v = _lib.tensor(value, "value")
    kc = _lib.tensor_out(key_cache, "key_cache")
    vc = _lib.tensor_out(value_cache, "value_cache")
    s = _lib.tensor(slot_mapping, "slot_mapping")
    dt = _lib.c_string(kv_cache_dtype, "kv_cache_dtype")
    ks = _lib.scale_tensor(k_scale, "k_scale")
    vs = _lib.scale_tensor(v_scale, "v_scale")
    _lib.call(fn, k.ref, v.ref, kc.ref, vc.ref, s.ref, dt, _lib.ref(ks), _lib.ref(vs))


def reshape_and_cache(
    key: Any,
    value: Any,
    key_cache: Any,
    value_cache: Any,
    slot_mapping: Any,
    kv_cache_dtype: str = "auto",
    k_scale: Any = None,
    v_scale: Any = None,
) -> None:
    """Writes each token's key and value into the paged cache.

    key, value: ``[num_tokens, num_heads, head_size]`` float32/float16/bfloat16
    (head_size contiguous; only the first ``len(slot_mapping)`` tokens are
    written). key_cache: ``[num_blocks, num_heads, head_size // x, block_size, x]``
    with ``x = 16 // cache element size``; value_cache:
    ``[num_blocks, num_heads, head_size, block_size]``. slot_mapping: int32/int64
    ``[num_tokens]``. kv_cache_dtype: ``auto``, ``float16``, ``bfloat16``, ``fp8``
    (= ``fp8_e4m3``), ``fp8_e5m2``; fp8 stores ``saturate(x / scale)``.
    """
    _kv_call(_reshape_and_cache, key, value, key_cache, value_cache, slot_mapping,
             kv_cache_dtype, k_scale, v_scale)


def reshape_and_cache_flash(
    key: Any,
    value: Any,
    key_cache: Any,
    value_cache: Any,
    slot_mapping: Any,
    kv_cache_dtype: str = "auto",
    k_scale: Any = None,
    v_scale: Any = None,
) -> None:
    """Writes each token's key and value into the flash-layout cache
    ``[num_blocks, block_size, num_heads, head_size]``.

    The caches may be strided views (the HND cache ``[num_blocks, num_heads,
    block_size, head_size]`` transposed to this shape works) and key/value may
    have any token stride (views into a fused qkv buffer). ``key_cache`` and
    ``value_cache`` may be the same array: values then land in it too.
    Other arguments as :func:`reshape_and_cache`.
    """
    _kv_call(_reshape_and_cache_flash, key, value, key_cache, value_cache, slot_mapping,
             kv_cache_dtype, k_scale, v_scale)


def copy_blocks(key_caches: Sequence[Any], value_caches: Sequence[Any], block_mapping: Any) -> None:
    """Copies blocks within every layer's caches: ``block_mapping`` is an
    int64/int32 ``[n, 2]`` array of (source block, destination block) rows,
    applied to each ``key_caches[l]`` and ``value_caches[l]`` (``[num_blocks, ...]``)."""
    kcs = [_lib.tensor_out(c, f"key_caches[{i}]") for i, c in enumerate(key_caches)]
    vcs = [_lib.tensor_out(c, f"value_caches[{i}]") for i, c in enumerate(value_caches)]
    if len(kcs) != len(vcs):
        raise _lib.Error(
            _lib.Status.SHAPE_MISMATCH,
            f"key_caches has {len(kcs)} layers but value_caches has {len(vcs)}",
        )
    m = _lib.tensor(block_mapping, "block_mapping")
    _lib.call(_copy_blocks, _lib.tensor_array(kcs), _lib.tensor_array(vcs), len(kcs), m.ref)


def swap_blocks(src: Any, dst: Any, block_mapping: Any) -> None:
    """Copies blocks from ``src`` to ``dst`` (same dtype and per-block shape):
    ``block_mapping`` is an int64/int32 ``[n, 2]`` array of (src block, dst block)."""
    s = _lib.tensor(src, "src")
    d = _lib.tensor_out(dst, "dst")
    m = _lib.tensor(block_mapping, "block_mapping")
    _lib.call(_swap_blocks, s.ref, d.ref, m.ref)
