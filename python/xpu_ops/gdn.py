"""Linear-attention ops with vLLM / fla signatures: ``causal_conv1d_fn``,
``causal_conv1d_update`` (vLLM ``mamba/ops/causal_conv1d.py``),
``fused_gdn_gating``, ``l2norm``, ``rms_norm_gated``,
``fused_recurrent_gated_delta_rule`` and ``chunk_gated_delta_rule`` (fla
``ops/gated_delta_rule``, vLLM's continuous-batching form).

float32 / float16 / bfloat16 (``ml_dtypes.bfloat16``) arrays or CPU torch
tensors; index tensors int32/int64 (flags bool or int). Every op accumulates
in float32; the recurrent state pool is float32 ``[slots, HV, V, K]`` and is
updated in place. Outputs not passed in are allocated (zero-filled) and
returned. Nothing is written when an argument is invalid: :class:`xpu_ops.Error`
is raised instead.
"""

from __future__ import annotations

import ctypes
from typing import Any, Optional, Tuple

from . import _lib
from ._lib import TENSOR

__all__ = [
    "causal_conv1d_fn",
    "causal_conv1d_update",
    "fused_gdn_gating",
    "l2norm",
    "rms_norm_gated",
    "fused_recurrent_gated_delta_rule",
    "chunk_gated_delta_rule",
]

_STR = ctypes.c_char_p
_causal_conv1d_fn = _lib.function(
    "xops_causal_conv1d_fn",
    [TENSOR, TENSOR, TENSOR, TENSOR, TENSOR, TENSOR, TENSOR, _STR, ctypes.c_int64, TENSOR],
)
_causal_conv1d_update = _lib.function(
    "xops_causal_conv1d_update",
    [TENSOR, TENSOR, TENSOR, TENSOR, _STR, TENSOR, TENSOR, TENSOR, ctypes.c_int64, ctypes.c_int64, TENSOR],
)
_fused_gdn_gating = _lib.function(
    "xops_fused_gdn_gating",
    [TENSOR, TENSOR, TENSOR, TENSOR, ctypes.c_double, ctypes.c_double, TENSOR, TENSOR],
)
_l2norm = _lib.function("xops_l2norm", [TENSOR, ctypes.c_double, TENSOR])
_rms_norm_gated = _lib.function(
    "xops_rms_norm_gated",
    [TENSOR, TENSOR, TENSOR, TENSOR, ctypes.c_double, ctypes.c_int64, ctypes.c_int32, TENSOR],
)
_fused_recurrent = _lib.function(
    "xops_fused_recurrent_gated_delta_rule",
    [TENSOR, TENSOR, TENSOR, TENSOR, TENSOR, ctypes.c_double, TENSOR, TENSOR, TENSOR, TENSOR,
     ctypes.c_int32, TENSOR],
)
_chunk = _lib.function(
    "xops_chunk_gated_delta_rule",
    [TENSOR, TENSOR, TENSOR, TENSOR, TENSOR, ctypes.c_double, TENSOR, ctypes.c_int32, TENSOR,
     TENSOR, TENSOR, ctypes.c_int32, TENSOR],
)


def _zeros_like(x: Any) -> Any:
    if _lib._is_torch(x):
        import torch

        return torch.zeros_like(x)
    import numpy as np

    return np.zeros_like(x)


def _zeros_f32(like: Any, shape) -> Any:
    if _lib._is_torch(like):
        import torch

        return torch.zeros(tuple(shape), dtype=torch.float32)
    import numpy as np

    return np.zeros(tuple(shape), dtype=np.float32)


def _activation(activation: Any) -> Optional[bytes]:
    if activation is None or activation is False:
        return None
    if activation is True:
        return b"silu"
    return _lib.c_string(activation, "activation")


def _scale(scale: Optional[float]) -> float:
    if scale is None:
        return 0.0  # the C ABI's "default": K ** -0.5
    if scale == 0.0:
        raise _lib.Error(_lib.Status.INVALID_VALUE, "scale must be nonzero (None = K ** -0.5)")
    return float(scale)


def causal_conv1d_fn(
    x: Any,
    weight: Any,
    bias: Optional[Any],
    conv_states: Any,
    query_start_loc: Any,
    cache_indices: Optional[Any] = None,
    has_initial_state: Optional[Any] = None,
    activation: Any = "silu",
    pad_slot_id: int = -1,
    out: Optional[Any] = None,
) -> Any:
    """Prefill conv over a varlen batch; returns ``out`` (allocated like
    ``x`` when not given; pass ``out=x`` to write in place).

    x: ``(dim, total_tokens)`` (vLLM passes the channel-contiguous view).
    weight: ``(dim, width)``, width 2..6. conv_states: ``(cache_lines, dim,
    state_len >= width - 1)``, updated in place. query_start_loc: ``[B + 1]``.
    cache_indices: ``[B]`` (``None``: line = sequence; ``pad_slot_id`` skips).
    has_initial_state: ``[B]`` (``None``: all false).
    """
    if out is None:
        out = _zeros_like(x)
    xt = _lib.tensor_out(x, "x") if out is x else _lib.tensor(x, "x")
    o = _lib.tensor_out(out, "out")
    w = _lib.tensor(weight, "weight")
    b = _lib.opt_tensor(bias, "bias")
    s = _lib.tensor_out(conv_states, "conv_states")
    q = _lib.tensor(query_start_loc, "query_start_loc")
    ci = _lib.opt_tensor(cache_indices, "cache_indices")
    hi = _lib.opt_tensor(has_initial_state, "has_initial_state")
    _lib.call(
        _causal_conv1d_fn,
        xt.ref, w.ref, _lib.ref(b), s.ref, q.ref, _lib.ref(ci), _lib.ref(hi),
        _activation(activation), int(pad_slot_id), o.ref,
    )
    return out


def causal_conv1d_update(
    x: Any,
    conv_state: Any,
    weight: Any,
    bias: Optional[Any] = None,
    activation: Any = None,
    conv_state_indices: Optional[Any] = None,
    num_accepted_tokens: Optional[Any] = None,
    query_start_loc: Optional[Any] = None,
    max_query_len: int = -1,
    pad_slot_id: int = -1,
    out: Optional[Any] = None,
) -> Any:
    """Decode / spec-decode conv; writes into ``x`` unless ``out`` is given
    and returns the array written.

    x: ``(B, dim)``, ``(B, dim, seqlen)`` or ``(num_tokens, dim)`` with
    ``query_start_loc``. conv_state: ``(cache_lines, dim, state_len)``.
    num_accepted_tokens: ``[B]`` for speculative decoding (window at column
    ``num_accepted - 1``; ``state_len >= width - 2 + seqlen``), any width 2..6.
    """
    xt = _lib.tensor_out(x, "x")
    o = None if out is None or out is x else _lib.tensor_out(out, "out")
    s = _lib.tensor_out(conv_state, "conv_state")
    w = _lib.tensor(weight, "weight")
    b = _lib.opt_tensor(bias, "bias")
    ci = _lib.opt_tensor(conv_state_indices, "conv_state_indices")
    na = _lib.opt_tensor(num_accepted_tokens, "num_accepted_tokens")
    q = _lib.opt_tensor(query_start_loc, "query_start_loc")
    _lib.call(
        _causal_conv1d_update,
        xt.ref, s.ref, w.ref, _lib.ref(b), _activation(activation), _lib.ref(ci), _lib.ref(na),
        _lib.ref(q), int(max_query_len), int(pad_slot_id), _lib.ref(o),
    )
    return x if o is None else out


def fused_gdn_gating(
    A_log: Any,
    a: Any,
    b: Any,
    dt_bias: Any,
    beta: float = 1.0,
    threshold: float = 20.0,
    g: Optional[Any] = None,
    beta_output: Optional[Any] = None,
) -> Tuple[Any, Any]:
    """``g = -exp(A_log) * softplus(a + dt_bias)``, ``beta_output = sigmoid(b)``;
    returns ``(g, beta_output)``, allocated float32 ``[1, num_tokens, num_heads]``
    when not given. a, b: ``[num_tokens, num_heads]``."""
    shape = (1,) + tuple(a.shape)
    if g is None:
        g = _zeros_f32(a, shape)
    if beta_output is None:
        beta_output = _zeros_f32(a, shape)
    args = [_lib.tensor(t, n) for t, n in ((A_log, "A_log"), (a, "a"), (b, "b"), (dt_bias, "dt_bias"))]
    gt = _lib.tensor_out(g, "g")
    bt = _lib.tensor_out(beta_output, "beta_output")
    _lib.call(
        _fused_gdn_gating, *[t.ref for t in args], float(beta), float(threshold), gt.ref, bt.ref
    )
    return g, beta_output


def l2norm(x: Any, eps: float = 1e-6, out: Optional[Any] = None) -> Any:
    """``x / sqrt(sum(x**2, -1) + eps)``; returns ``out`` (allocated like x)."""
    if out is None:
        out = _zeros_like(x)
    xt = _lib.tensor(x, "x")
    o = _lib.tensor_out(out, "out")
    _lib.call(_l2norm, xt.ref, float(eps), o.ref)
    return out


def rms_norm_gated(
    x: Any,
    weight: Any,
    bias: Optional[Any] = None,
    z: Optional[Any] = None,
    eps: float = 1e-6,
    group_size: Optional[int] = None,
    norm_before_gate: bool = True,
    out: Optional[Any] = None,
) -> Any:
    """Gated RMS norm per group of ``group_size`` (None: the last dim):
    ``norm(x) * weight (+ bias)`` times ``silu(z)`` (gate after the norm when
    ``norm_before_gate``, before it otherwise). Returns ``out``."""
    if out is None:
        out = _zeros_like(x)
    xt = _lib.tensor(x, "x")
    w = _lib.tensor(weight, "weight")
    b = _lib.opt_tensor(bias, "bias")
    zt = _lib.opt_tensor(z, "z")
    o = _lib.tensor_out(out, "out")
    gs = 0 if group_size is None else int(group_size)
    if group_size is not None and gs <= 0:
        raise _lib.Error(_lib.Status.INVALID_ARGUMENT, f"group_size must be positive, got {gs}")
    _lib.call(
        _rms_norm_gated,
        xt.ref, w.ref, _lib.ref(b), _lib.ref(zt), float(eps), gs, 1 if norm_before_gate else 0, o.ref,
    )
    return out


def _qkvgb(q, k, v, g, beta):
    return (
        _lib.tensor(q, "q"),
        _lib.tensor(k, "k"),
        _lib.tensor(v, "v"),
        _lib.tensor(g, "g"),
        _lib.opt_tensor(beta, "beta"),
    )


def fused_recurrent_gated_delta_rule(
    q: Any,
    k: Any,
    v: Any,
    g: Any,
    beta: Optional[Any] = None,
    scale: Optional[float] = None,
    initial_state: Any = None,
    inplace_final_state: bool = True,
    cu_seqlens: Optional[Any] = None,
    ssm_state_indices: Optional[Any] = None,
    num_accepted_tokens: Optional[Any] = None,
    use_qk_l2norm_in_kernel: bool = False,
    out: Optional[Any] = None,
) -> Tuple[Any, Any]:
    """Decode / spec-decode recurrence over the float32 state pool
    ``initial_state`` ``[slots, HV, V, K]``, updated in place (vLLM's
    ``inplace_final_state=True``, the only form supported). Returns
    ``(o, initial_state)``; ``o`` ``[B, T, HV, V]`` has v's dtype.

    ssm_state_indices: ``None`` (slot n), ``[N]``, or ``[N, T]`` (the state
    after token t stored at column t, read at ``num_accepted_tokens - 1``);
    negative read slots skip the sequence (zero outputs).
    """
    if initial_state is None:
        raise _lib.Error(_lib.Status.NULL_POINTER, "`initial_state` (the state pool) is required")
    if not inplace_final_state:
        raise _lib.Error(
            _lib.Status.UNSUPPORTED, "inplace_final_state=False is not supported: states go to the pool"
        )
    if out is None:
        out = _zeros_like(v)
    qt, kt, vt, gt, bt = _qkvgb(q, k, v, g, beta)
    st = _lib.tensor_out(initial_state, "initial_state")
    cu = _lib.opt_tensor(cu_seqlens, "cu_seqlens")
    ix = _lib.opt_tensor(ssm_state_indices, "ssm_state_indices")
    na = _lib.opt_tensor(num_accepted_tokens, "num_accepted_tokens")
    o = _lib.tensor_out(out, "o")
    _lib.call(
        _fused_recurrent,
        qt.ref, kt.ref, vt.ref, gt.ref, _lib.ref(bt), _scale(scale), st.ref, _lib.ref(cu),
        _lib.ref(ix), _lib.ref(na), 1 if use_qk_l2norm_in_kernel else 0, o.ref,
    )
    return out, initial_state


def chunk_gated_delta_rule(
    q: Any,
    k: Any,
    v: Any,
    g: Any,
    beta: Optional[Any] = None,
    scale: Optional[float] = None,
    initial_state: Optional[Any] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[Any] = None,
    ssm_state_indices: Optional[Any] = None,
    has_initial_state: Optional[Any] = None,
    use_qk_l2norm_in_kernel: bool = False,
    out: Optional[Any] = None,
) -> Tuple[Any, Optional[Any]]:
    """Chunked prefill (64-token chunks). ``initial_state`` is the float32
    state pool ``[slots, HV, V, K]`` (None: zero states); each sequence starts
    from its slot (``ssm_state_indices[n]``, or n) unless
    ``has_initial_state[n]`` is false, and with ``output_final_state`` its
    final state is written back. Returns ``(o, initial_state or None)``."""
    if out is None:
        out = _zeros_like(v)
    qt, kt, vt, gt, bt = _qkvgb(q, k, v, g, beta)
    st = None if initial_state is None else _lib.tensor_out(initial_state, "initial_state")
    cu = _lib.opt_tensor(cu_seqlens, "cu_seqlens")
    ix = _lib.opt_tensor(ssm_state_indices, "ssm_state_indices")
    hi = _lib.opt_tensor(has_initial_state, "has_initial_state")
    o = _lib.tensor_out(out, "o")
    _lib.call(
        _chunk,
        qt.ref, kt.ref, vt.ref, gt.ref, _lib.ref(bt), _scale(scale), _lib.ref(st),
        1 if output_final_state else 0, _lib.ref(cu), _lib.ref(ix), _lib.ref(hi),
        1 if use_qk_l2norm_in_kernel else 0, o.ref,
    )
    return out, (initial_state if output_final_state else None)
