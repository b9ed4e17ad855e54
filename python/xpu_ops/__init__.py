"""xpu-ops: operator library for LLM inference engines (ctypes over libxpu_ops).

The library is found through ``XPU_OPS_LIB`` (a file or a directory), then a
copy bundled in ``xpu_ops/lib/``, then ``target/release`` of the source tree.
Ops take numpy arrays (bf16/fp8 through ``ml_dtypes``) or CPU torch tensors
without copying and raise :class:`Error` (``status``, ``message``) on bad input.
"""

from __future__ import annotations

import ctypes
import json
import warnings

from . import _lib
from ._lib import Error, Status, library_path
from .cache import copy_blocks, reshape_and_cache, reshape_and_cache_flash, swap_blocks
from .gdn import (
    causal_conv1d_fn,
    causal_conv1d_update,
    chunk_gated_delta_rule,
    fused_gdn_gating,
    fused_recurrent_gated_delta_rule,
    l2norm,
    rms_norm_gated,
)
from .linear import (
    awq_to_wna16,
    compressed_tensors_to_wna16,
    dynamic_scaled_int8_quant,
    gptq_to_wna16,
    int8_scaled_mm,
    int8_scaled_mm_azp,
    linear,
    linear_packed,
    PackedLinearWeight,
    scaled_int8_quant,
    static_scaled_int8_quant,
    wna16_dequantize,
    wna16_linear,
    wna16_row_bytes,
)
from .layer import fused_add_rms_norm, rms_norm, rotary_embedding, silu_and_mul
from .attention import (
    flash_attn_varlen_func,
    merge_attn_states,
    paged_attention_v1,
    paged_attention_v2,
)
from . import sampling
from .sampling import (
    apply_penalties,
    min_p_sampling_from_probs,
    sampler_forward,
    sampling_from_logits,
    sampling_from_probs,
    top_k_mask_logits,
    top_k_renorm_probs,
    top_k_sampling_from_probs,
    top_k_top_p_sampling_from_logits,
    top_k_top_p_sampling_from_probs,
    top_p_renorm_probs,
    top_p_sampling_from_probs,
)

__version__ = "0.1.0"

__all__ = [
    "Error",
    "Status",
    "library_path",
    "version",
    "isa",
    "set_isa",
    "set_num_threads",
    "num_threads",
    "align",
    "reshape_and_cache",
    "reshape_and_cache_flash",
    "copy_blocks",
    "swap_blocks",
    "linear",
    "linear_packed",
    "PackedLinearWeight",
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
    "rms_norm",
    "fused_add_rms_norm",
    "rotary_embedding",
    "silu_and_mul",
    "paged_attention_v1",
    "paged_attention_v2",
    "flash_attn_varlen_func",
    "merge_attn_states",
    "causal_conv1d_fn",
    "causal_conv1d_update",
    "fused_gdn_gating",
    "l2norm",
    "rms_norm_gated",
    "fused_recurrent_gated_delta_rule",
    "chunk_gated_delta_rule",
    "sampling",
    "sampling_from_probs",
    "sampling_from_logits",
    "top_p_sampling_from_probs",
    "top_k_sampling_from_probs",
    "min_p_sampling_from_probs",
    "top_k_top_p_sampling_from_probs",
    "top_k_top_p_sampling_from_logits",
    "top_k_renorm_probs",
    "top_p_renorm_probs",
    "top_k_mask_logits",
    "apply_penalties",
    "sampler_forward",
]

# Status codes by name, as in the C header (xpu_ops.OK, xpu_ops.ERR_NULL_POINTER, ...).
OK = Status.OK
for _s in Status:
    if _s is not Status.OK:
        globals()["ERR_" + _s.name] = _s
        __all__.append("ERR_" + _s.name)
del _s

_version = _lib.function("xops_version", [], ctypes.c_char_p)
_isa = _lib.function("xops_isa", [], ctypes.c_char_p)
_set_isa = _lib.function("xops_set_isa", [ctypes.c_char_p])
_set_num_threads = _lib.function("xops_set_num_threads", [ctypes.c_int])
_get_num_threads = _lib.function("xops_get_num_threads", [], ctypes.c_int)
_align = _lib.function(
    "xops_align",
    [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.POINTER(ctypes.c_size_t),
        ctypes.POINTER(ctypes.c_size_t),
    ],
)


def version() -> str:
    """The loaded library's version ("MAJOR.MINOR.PATCH")."""
    return _version().decode()


def isa() -> str:
    """The kernel tier ops run: "amx", "avx512", "avx2", "neon" or "generic"."""
    return _isa().decode()


def set_isa(name: str) -> None:
    """Forces the kernel tier for the process ("auto" = the best available).
    Raises :class:`Error` (UNSUPPORTED) for a tier this machine cannot run."""
    _lib.call(_set_isa, _lib.c_string(name, "name"))


def set_num_threads(n: int) -> None:
    """Sets the number of worker threads ops use."""
    _lib.call(_set_num_threads, int(n))


def num_threads() -> int:
    """The number of worker threads ops use."""
    return int(_get_num_threads())


def align(filter: str = "") -> list:
    """The node-level alignment report: every op case whose name contains
    ``filter`` against the reference on every ISA tier this machine runs. A
    list of dicts (op, shape, isa, elements, cosine, rel_rmse, max_abs,
    within, atol, rtol, pass); ``all(r["pass"] for r in rows)`` when every
    case lies within its documented tolerance."""
    needed, failures = ctypes.c_size_t(0), ctypes.c_size_t(0)
    name = _lib.c_string(filter, "filter")
    # The report is computed on every call: offer room for it up front
    # (a full report is ~50 KB) and call again only if it did not fit.
    size = 1 << 20
    while True:
        buf = ctypes.create_string_buffer(size)
        _lib.call(_align, name, buf, size, ctypes.byref(needed), ctypes.byref(failures))
        if needed.value <= size:
            return json.loads(buf.value.decode())
        size = needed.value


if version() != __version__:
    warnings.warn(
        f"xpu_ops {__version__} loaded library version {version()} from {library_path()}",
        RuntimeWarning,
        stacklevel=2,
    )
