"""Attention ops with upstream signatures: vLLM's ``paged_attention_v1``,
``paged_attention_v2`` and ``merge_attn_states`` (``vllm._custom_ops``), and
vllm-flash-attn's ``flash_attn_varlen_func`` over a paged cache
(``block_table``). Outputs are written through, never copied.

Queries and outputs are float32 / float16 / bfloat16 (``ml_dtypes``); caches
have the query dtype or are fp8 (``uint8`` with ``kv_cache_dtype`` for the
vLLM ops, ``ml_dtypes.float8_e4m3fn`` / ``float8_e5m2`` arrays for either).
Logits and softmax are float32, probabilities are rounded to the query dtype
before P.V, and the output is rounded once. Nothing is written when an
argument is invalid: :class:`xpu_ops.Error` is raised instead.
"""

from __future__ import annotations

import ctypes
from typing import Any, Optional, Sequence

from . import _lib
from ._lib import TENSOR, Error, Status

__all__ = [
    "paged_attention_v1",
    "paged_attention_v2",
    "flash_attn_varlen_func",
    "merge_attn_states",
]

_PAGED_TAIL = [
    ctypes.c_int64,  # num_kv_heads
    ctypes.c_double,  # scale
    TENSOR,  # block_tables
    TENSOR,  # seq_lens
    ctypes.c_int64,  # block_size
    ctypes.c_int64,  # max_seq_len
    TENSOR,  # alibi_slopes
    ctypes.c_char_p,  # kv_cache_dtype
    TENSOR,  # k_scale
    TENSOR,  # v_scale
]
_v1 = _lib.function("xops_paged_attention_v1", [TENSOR] * 4 + _PAGED_TAIL)
_v2 = _lib.function("xops_paged_attention_v2", [TENSOR] * 7 + _PAGED_TAIL)
_varlen = _lib.function(
    "xops_flash_attn_varlen_func",
    [
        TENSOR,  # q
        TENSOR,  # k
        TENSOR,  # v
        ctypes.c_int64,  # max_seqlen_q
        TENSOR,  # cu_seqlens_q
        ctypes.c_int64,  # max_seqlen_k
        TENSOR,  # seqused_k
        ctypes.c_double,  # softmax_scale (0 = default)
        ctypes.c_int32,  # causal
        ctypes.c_int64,  # window_left
        ctypes.c_int64,  # window_right
        ctypes.c_double,  # softcap
        TENSOR,  # alibi_slopes
        TENSOR,  # block_table
        TENSOR,  # softmax_lse
        TENSOR,  # out
        TENSOR,  # k_descale
        TENSOR,  # v_descale
        TENSOR,  # s_aux
    ],
)
_merge = _lib.function("xops_merge_attn_states", [TENSOR] * 6)


def _unsupported(message: str) -> Error:
    return Error(int(Status.UNSUPPORTED), message)


def _check_blocksparse(vert_stride: int) -> None:
    if vert_stride > 1:
        raise _unsupported(
            f"blocksparse attention (blocksparse_vert_stride={vert_stride}) is not supported"
        )


def _paged_tail(
    num_kv_heads, scale, block_tables, seq_lens, block_size, max_seq_len, alibi_slopes,
    kv_cache_dtype, k_scale, v_scale,
):
    bt = _lib.tensor(block_tables, "block_tables")
    sl = _lib.tensor(seq_lens, "seq_lens")
    al = _lib.opt_tensor(alibi_slopes, "alibi_slopes")
    ks = _lib.scale_tensor(k_scale, "k_scale")
    vs = _lib.scale_tensor(v_scale, "v_scale")
    keep = (bt, sl, al, ks, vs)
    args = [
        int(num_kv_heads),
        float(scale),
        bt.ref,
        sl.ref,
        int(block_size),
        int(max_seq_len),
        _lib.ref(al),
        _lib.c_string(kv_cache_dtype, "kv_cache_dtype"),
        _lib.ref(ks),
        _lib.ref(vs),
    ]
    return keep, args


def paged_attention_v1(
    out: Any,
    query: Any,
    key_cache: Any,
    value_cache: Any,
    num_kv_heads: int,
    scale: float,
    block_tables: Any,
    seq_lens: Any,
    block_size: int,
    max_seq_len: int,
    alibi_slopes: Optional[Any] = None,
    kv_cache_dtype: str = "auto",
    k_scale: Any = None,
    v_scale: Any = None,
    tp_rank: int = 0,
    blocksparse_local_blocks: int = 0,
    blocksparse_vert_stride: int = 0,
    blocksparse_block_size: int = 64,
    blocksparse_head_sliding_step: int = 0,
) -> None:
    """Decode attention of one query per sequence over the paged cache.

    out, query: ``[num_seqs, num_heads, head_size]`` (head_size contiguous).
    key_cache: ``[num_blocks, num_kv_heads, head_size // x, block_size, x]``,
    value_cache: ``[num_blocks, num_kv_heads, head_size, block_size]`` (as
    written by :func:`xpu_ops.reshape_and_cache`). block_tables: int32
    ``[num_seqs, max_blocks]``; seq_lens: int32 ``[num_seqs]`` (<= max_seq_len).
    alibi_slopes: float32 ``[num_heads]`` or None. kv_cache_dtype, k_scale,
    v_scale as :func:`xpu_ops.reshape_and_cache` (fp8 = value * scale).
    Blocksparse attention is not supported (``blocksparse_vert_stride > 1``).
    """
    _check_blocksparse(blocksparse_vert_stride)
    o = _lib.tensor_out(out, "out")
    q = _lib.tensor(query, "query")
    kc = _lib.tensor(key_cache, "key_cache")
    vc = _lib.tensor(value_cache, "value_cache")
    keep, tail = _paged_tail(
        num_kv_heads, scale, block_tables, seq_lens, block_size, max_seq_len, alibi_slopes,
        kv_cache_dtype, k_scale, v_scale,
    )
    _lib.call(_v1, o.ref, q.ref, kc.ref, vc.ref, *tail)
    del keep


def paged_attention_v2(
    out: Any,
    exp_sum: Any,
    max_logits: Any,
    tmp_out: Any,
    query: Any,
    key_cache: Any,
    value_cache: Any,
    num_kv_heads: int,
    scale: float,
    block_tables: Any,
    seq_lens: Any,
    block_size: int,
    max_seq_len: int,
    alibi_slopes: Optional[Any] = None,
    kv_cache_dtype: str = "auto",
    k_scale: Any = None,
    v_scale: Any = None,
    tp_rank: int = 0,
    blocksparse_local_blocks: int = 0,
    blocksparse_vert_stride: int = 0,
    blocksparse_block_size: int = 64,
    blocksparse_head_sliding_step: int = 0,
) -> None:
    """:func:`paged_attention_v1` in partitions of 512 tokens, reduced as vLLM
    does. exp_sum, max_logits: float32 ``[num_seqs, num_heads, P]``; tmp_out:
    ``[num_seqs, num_heads, P, head_size]`` of the query dtype, with
    ``P >= ceil(max_seq_len / 512)``."""
    _check_blocksparse(blocksparse_vert_stride)
    o = _lib.tensor_out(out, "out")
    es = _lib.tensor_out(exp_sum, "exp_sums")
    ml = _lib.tensor_out(max_logits, "max_logits")
    tmp = _lib.tensor_out(tmp_out, "tmp_out")
    q = _lib.tensor(query, "query")
    kc = _lib.tensor(key_cache, "key_cache")
    vc = _lib.tensor(value_cache, "value_cache")
    keep, tail = _paged_tail(
        num_kv_heads, scale, block_tables, seq_lens, block_size, max_seq_len, alibi_slopes,
        kv_cache_dtype, k_scale, v_scale,
    )
    _lib.call(_v2, o.ref, es.ref, ml.ref, tmp.ref, q.ref, kc.ref, vc.ref, *tail)
    del keep


def _empty_like(x: Any, shape: Sequence[int], dtype: Any = None) -> Any:
    """A new array (numpy) or tensor (torch) of `shape`, like `x`."""
    if _lib._is_torch(x):
        import torch

        return torch.empty(tuple(shape), dtype=dtype if dtype is not None else x.dtype)
    import numpy as np

    return np.empty(tuple(shape), dtype=dtype if dtype is not None else np.asarray(x).dtype)


def flash_attn_varlen_func(
    q: Any,
    k: Any,
    v: Any,
    max_seqlen_q: int,
    cu_seqlens_q: Any,
    max_seqlen_k: int,
    cu_seqlens_k: Any = None,
    seqused_k: Any = None,
    q_v: Any = None,
    dropout_p: float = 0.0,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    window_size: Optional[Sequence[int]] = None,
    softcap: float = 0.0,
    alibi_slopes: Any = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
    block_table: Any = None,
    return_softmax_lse: bool = False,
    out: Any = None,
    scheduler_metadata: Any = None,
    q_descale: Any = None,
    k_descale: Any = None,
    v_descale: Any = None,
    num_splits: int = 0,
    fa_version: int = 2,
    s_aux: Any = None,
):
    """Varlen attention over a paged flash-layout cache, as vllm-flash-attn.

    q: ``[total_q, num_heads, head_size]``; k, v: caches ``[num_blocks,
    block_size, num_kv_heads, head_size]`` (any stride order with head_size
    contiguous: HND views work), of the query dtype or fp8 (``float8_e4m3fn``
    / ``float8_e5m2`` arrays, dequantised as value * k_descale / v_descale).
    cu_seqlens_q: int32 ``[batch + 1]``; seqused_k: int32 ``[batch]``;
    block_table: int32 ``[batch, max_blocks]``. causal aligns queries to the
    end of their keys; window_size ``(left, right)`` (-1 unbounded); softcap
    > 0 caps logits; alibi_slopes float32 ``[num_heads]`` or ``[batch,
    num_heads]``; s_aux ``[num_heads]`` sink logits. Returns ``out`` (created
    when None), and ``(out, softmax_lse)`` with ``return_softmax_lse``
    (``softmax_lse`` float32 ``[num_heads, total_q]``).

    Only the paged form is supported: ``block_table`` and ``seqused_k`` are
    required and ``cu_seqlens_k``, ``q_v``, ``dropout_p``, ``q_descale`` and
    ``return_attn_probs`` are refused; ``deterministic``, ``scheduler_metadata``,
    ``num_splits`` and ``fa_version`` are accepted and ignored.
    """
    if block_table is None or seqused_k is None:
        raise _unsupported("only the paged form is supported: pass block_table and seqused_k")
    if cu_seqlens_k is not None:
        raise _unsupported("cu_seqlens_k (non-paged keys) is not supported; use seqused_k")
    if q_v is not None or dropout_p != 0.0 or return_attn_probs or q_descale is not None:
        raise _unsupported("q_v, dropout_p, return_attn_probs and q_descale are not supported")
    left, right = (-1, -1) if window_size is None else (int(window_size[0]), int(window_size[1]))
    if out is None:
        out = _empty_like(q, q.shape)
    lse = None
    if return_softmax_lse:
        import numpy as np

        lse_dtype = None
        if _lib._is_torch(q):
            import torch

            lse_dtype = torch.float32
        else:
            lse_dtype = np.float32
        lse = _empty_like(q, (q.shape[1], q.shape[0]), lse_dtype)
    qt = _lib.tensor(q, "q")
    kt = _lib.tensor(k, "k")
    vt = _lib.tensor(v, "v")
    cu = _lib.tensor(cu_seqlens_q, "cu_seqlens_q")
    su = _lib.tensor(seqused_k, "seqused_k")
    al = _lib.opt_tensor(alibi_slopes, "alibi_slopes")
    bt = _lib.tensor(block_table, "block_table")
    lt = None if lse is None else _lib.tensor_out(lse, "softmax_lse")
    ot = _lib.tensor_out(out, "out")
    kd = _lib.scale_tensor(k_descale, "k_descale")
    vd = _lib.scale_tensor(v_descale, "v_descale")
    sa = _lib.opt_tensor(s_aux, "s_aux")
    scale = 0.0 if softmax_scale is None else float(softmax_scale)
    if softmax_scale is not None and scale == 0.0:
        raise Error(int(Status.INVALID_VALUE), "`softmax_scale` must be nonzero")
    _lib.call(
        _varlen,
        qt.ref, kt.ref, vt.ref, int(max_seqlen_q), cu.ref, int(max_seqlen_k), su.ref,
        scale, 1 if causal else 0, left, right, float(softcap), _lib.ref(al), bt.ref,
        _lib.ref(lt), ot.ref, _lib.ref(kd), _lib.ref(vd), _lib.ref(sa),
    )
    return (out, lse) if return_softmax_lse else out


def merge_attn_states(
    output: Any,
    prefix_output: Any,
    prefix_lse: Any,
    suffix_output: Any,
    suffix_lse: Any,
    output_lse: Any = None,
) -> None:
    """Merges two partial attention results by their log-sum-exps.

    output, prefix_output, suffix_output: ``[num_tokens, num_heads,
    head_size]`` of one dtype; prefix_lse, suffix_lse, output_lse (optional):
    float32 ``[num_heads, num_tokens]``. An LSE of -inf (or +inf, FA2's empty
    row) is an empty state; two empty states give 0 and -inf. ``output`` may
    be ``prefix_output`` or ``suffix_output`` itself.
    """
    o = _lib.tensor_out(output, "output")
    p = _lib.tensor(prefix_output, "prefix_output")
    pl = _lib.tensor(prefix_lse, "prefix_lse")
    s = _lib.tensor(suffix_output, "suffix_output")
    sl = _lib.tensor(suffix_lse, "suffix_lse")
    ol = None if output_lse is None else _lib.tensor_out(output_lse, "output_lse")
    _lib.call(_merge, o.ref, p.ref, pl.ref, s.ref, sl.ref, _lib.ref(ol))
