"""Sampling with FlashInfer's signatures (``flashinfer.sampling``) and vLLM's
sampler (``vllm/v1/sample``): sorting-free samplers and filters over probs or
logits, ``apply_penalties``, and ``sampler_forward`` (penalties, greedy rows,
temperature, min-p, top-k, top-p, draw, raw logprobs and ranks).

What is kept and drawn is defined exactly in the Rust docs
(``xpu_ops::ops::sampling``): integer weights ``trunc(p * 2**40)`` (logits:
``trunc(exp_spec(y - max) * 2**40)``), top-k keeps ties at the k-th value,
top-p keeps a token while the weight of strictly larger ones is below
``top_p`` of the total, and each row draws one 32-bit word of
Philox4x32-10 (key ``seed``, counter ``(offset // 4, subsequence)``, word
``offset % 4``) and inverts the renormalised CDF in index order. Results are
the same on every ISA tier and thread count.

Randomness: FlashInfer's ``generator`` is replaced by explicit ``seed`` and
``offset`` (ints, or int64 arrays ``[1]`` / ``[batch]``). A scalar seed makes
the Philox subsequence the output row; per-row seeds make each request's draw
independent of its batch. When both are ``None`` a module-level stream is
used (:func:`manual_seed` resets it) and its offset advances by 4 per call.
``deterministic`` and ``check_nan`` are accepted for compatibility: every op
is deterministic and always rejects NaN rows.

Inputs are numpy arrays (float32 / float16 / ``ml_dtypes.bfloat16``) or CPU
torch tensors, never copied; samples come back as int32 arrays (the dtype of
``indices`` when given) unless ``out`` is passed. Bad input raises
:class:`xpu_ops.Error` and writes nothing.
"""

from __future__ import annotations

import ctypes
from collections import namedtuple
from typing import Any, Optional, Tuple

from . import _lib
from ._lib import TENSOR

__all__ = [
    "manual_seed",
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
    "SamplerOutput",
    "LogprobsTensors",
]

_U64, _I64, _F64, _STR = ctypes.c_uint64, ctypes.c_int64, ctypes.c_double, ctypes.c_char_p
_RNG = [TENSOR, _U64, TENSOR, _U64]

_from_probs = _lib.function("xops_sampling_from_probs", [TENSOR, TENSOR, *_RNG, TENSOR])
_from_logits = _lib.function("xops_sampling_from_logits", [TENSOR, TENSOR, *_RNG, TENSOR])
_top_p = _lib.function("xops_top_p_sampling_from_probs", [TENSOR, TENSOR, _F64, TENSOR, *_RNG, TENSOR])
_top_k = _lib.function("xops_top_k_sampling_from_probs", [TENSOR, TENSOR, _I64, TENSOR, *_RNG, TENSOR])
_min_p = _lib.function("xops_min_p_sampling_from_probs", [TENSOR, TENSOR, _F64, TENSOR, *_RNG, TENSOR])
_KP = [TENSOR, TENSOR, _I64, TENSOR, _F64, TENSOR, _STR, *_RNG, TENSOR]
_top_k_top_p_probs = _lib.function("xops_top_k_top_p_sampling_from_probs", _KP)
_top_k_top_p_logits = _lib.function("xops_top_k_top_p_sampling_from_logits", _KP)
_top_k_renorm = _lib.function("xops_top_k_renorm_probs", [TENSOR, TENSOR, _I64, TENSOR])
_top_p_renorm = _lib.function("xops_top_p_renorm_probs", [TENSOR, TENSOR, _F64, TENSOR])
_top_k_mask = _lib.function("xops_top_k_mask_logits", [TENSOR, TENSOR, _I64, TENSOR])
_apply_penalties = _lib.function(
    "xops_apply_penalties", [TENSOR, TENSOR, TENSOR, TENSOR, TENSOR, TENSOR, _I64]
)


class _Metadata(ctypes.Structure):
    """``xops_sampling_metadata`` (include/xpu_ops.h)."""

    _fields_ = [
        ("temperature", TENSOR),
        ("top_k", TENSOR),
        ("top_p", TENSOR),
        ("min_p", TENSOR),
        ("maybe_seed_arr", TENSOR),
        ("seed_val", _U64),
        ("maybe_offset_arr", TENSOR),
        ("offset_val", _U64),
        ("prompt_token_ids", TENSOR),
        ("output_token_ids", TENSOR),
        ("presence_penalties", TENSOR),
        ("frequency_penalties", TENSOR),
        ("repetition_penalties", TENSOR),
        ("pad_token_id", _I64),
        ("max_num_logprobs", _I64),
    ]


_sampler_forward = _lib.function(
    "xops_sampler_forward", [TENSOR, ctypes.POINTER(_Metadata), TENSOR, TENSOR, TENSOR, TENSOR]
)

#: vLLM's ``LogprobsTensors``: ``[batch, n + 1]`` ids and logprobs (column 0 the
#: sampled token, then the top-n raw logprobs) and ``[batch]`` ranks.
LogprobsTensors = namedtuple(
    "LogprobsTensors", ["logprob_token_ids", "logprobs", "selected_token_ranks"]
)
#: vLLM's ``SamplerOutput``: ``sampled_token_ids`` int32 ``[batch, 1]`` and
#: ``logprobs_tensors`` (``None`` unless logprobs were asked for).
SamplerOutput = namedtuple("SamplerOutput", ["sampled_token_ids", "logprobs_tensors"])

_stream = {"seed": 0, "offset": 0}


def manual_seed(seed: int) -> None:
    """Resets the module-level Philox stream used when ``seed`` and
    ``offset`` are both ``None``."""
    _stream["seed"] = int(seed) & (2**64 - 1)
    _stream["offset"] = 0


def _np():
    import numpy as np

    return np


def _scalar_or_tensor(x: Any, name: str, cast) -> Tuple[Optional[_lib.Tensor], Any]:
    """FlashInfer's (maybe_<x>_arr, <x>_val) pair from a number or an array."""
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return None, cast(x)
    return _lib.tensor(x, name), cast(0)


def _rng(seed: Any, offset: Any):
    if seed is None and offset is None:
        s, o = _stream["seed"], _stream["offset"]
        _stream["offset"] += 4
        return None, s, None, o
    np = _np()
    seed = 0 if seed is None else seed
    offset = 0 if offset is None else offset
    sa, sv = (None, int(seed) & (2**64 - 1)) if isinstance(seed, int) else (
        _lib.tensor(np.asarray(seed, dtype=np.int64), "seed"), 0)
    oa, ov = (None, int(offset) & (2**64 - 1)) if isinstance(offset, int) else (
        _lib.tensor(np.asarray(offset, dtype=np.int64), "offset"), 0)
    return sa, sv, oa, ov


def _samples_out(x: Any, indices: Any, out: Any):
    np = _np()
    if out is None:
        batch = len(indices) if indices is not None else x.shape[0]
        dtype = np.asarray(indices).dtype if indices is not None else np.int32
        out = np.empty(batch, dtype=dtype)
    return out, _lib.tensor_out(out, "samples")


def _check_compat(deterministic: bool, generator: Any) -> None:
    if generator is not None:
        raise TypeError("xpu_ops has no torch generator: pass seed= and offset= instead")


def _sample(fn, x: Any, xname: str, params: list, indices, seed, offset, out, extra=()):
    xt = _lib.tensor(x, xname)
    ix = _lib.opt_tensor(indices, "indices")
    out, o = _samples_out(x, indices, out)
    sa, sv, oa, ov = _rng(seed, offset)
    args = [xt.ref]
    for t, v in params:
        args += [_lib.ref(t), v]
    args.append(_lib.ref(ix))
    args += list(extra)
    args += [_lib.ref(sa), sv, _lib.ref(oa), ov, o.ref]
    _lib.call(fn, *args)
    return out


def sampling_from_probs(probs, indices=None, deterministic=True, generator=None, check_nan=False,
                        seed=None, offset=None, out=None):
    """One category per row of ``probs`` ``[batch, vocab]`` (rows sum to 1
    within 1e-3 for float32, 1e-2 for 16-bit). ``indices`` maps output rows
    to rows of ``probs``."""
    _check_compat(deterministic, generator)
    return _sample(_from_probs, probs, "probs", [], indices, seed, offset, out)


def sampling_from_logits(logits, indices=None, deterministic=True, generator=None, check_nan=False,
                         seed=None, offset=None, out=None):
    """Samples softmax(``logits``) per row."""
    _check_compat(deterministic, generator)
    return _sample(_from_logits, logits, "logits", [], indices, seed, offset, out)


def top_p_sampling_from_probs(probs, top_p, indices=None, deterministic=True, generator=None,
                              check_nan=False, seed=None, offset=None, out=None):
    """Nucleus sampling; ``top_p`` in (0, 1], a float or a ``[batch]`` array."""
    _check_compat(deterministic, generator)
    p = _scalar_or_tensor(top_p, "top_p", float)
    return _sample(_top_p, probs, "probs", [p], indices, seed, offset, out)


def top_k_sampling_from_probs(probs, top_k, indices=None, deterministic=True, generator=None,
                              check_nan=False, seed=None, offset=None, out=None):
    """Top-k sampling; ``top_k >= 1`` (ties at the k-th value kept), an int
    or an int32/int64 ``[batch]`` array."""
    _check_compat(deterministic, generator)
    k = _scalar_or_tensor(top_k, "top_k", int)
    return _sample(_top_k, probs, "probs", [k], indices, seed, offset, out)


def min_p_sampling_from_probs(probs, min_p, indices=None, deterministic=True, generator=None,
                              check_nan=False, seed=None, offset=None, out=None):
    """Keeps ``p >= min_p * max(p)``; ``min_p`` in [0, 1]."""
    _check_compat(deterministic, generator)
    m = _scalar_or_tensor(min_p, "min_p", float)
    return _sample(_min_p, probs, "probs", [m], indices, seed, offset, out)


def top_k_top_p_sampling_from_probs(probs, top_k, top_p, indices=None, filter_apply_order="top_k_first",
                                    deterministic=True, generator=None, check_nan=False, seed=None,
                                    offset=None, out=None):
    """Top-k then top-p (``"top_k_first"``: top-p over the renormalised
    top-k) or both against the whole row (``"joint"``)."""
    _check_compat(deterministic, generator)
    k = _scalar_or_tensor(top_k, "top_k", int)
    p = _scalar_or_tensor(top_p, "top_p", float)
    order = _lib.c_string(filter_apply_order, "filter_apply_order")
    return _sample(_top_k_top_p_probs, probs, "probs", [k, p], indices, seed, offset, out, [order])


def top_k_top_p_sampling_from_logits(logits, top_k, top_p, indices=None, filter_apply_order="top_k_first",
                                     deterministic=True, generator=None, check_nan=False, seed=None,
                                     offset=None, out=None):
    """As :func:`top_k_top_p_sampling_from_probs` over softmax(``logits``)."""
    _check_compat(deterministic, generator)
    k = _scalar_or_tensor(top_k, "top_k", int)
    p = _scalar_or_tensor(top_p, "top_p", float)
    order = _lib.c_string(filter_apply_order, "filter_apply_order")
    return _sample(_top_k_top_p_logits, logits, "logits", [k, p], indices, seed, offset, out, [order])


def _filter(fn, x, xname, param, out, outname):
    np = _np()
    xt = _lib.tensor(x, xname)
    if out is None:
        out = np.empty_like(x)
    o = _lib.tensor_out(out, outname)
    t, v = param
    _lib.call(fn, xt.ref, _lib.ref(t), v, o.ref)
    return out


def top_k_renorm_probs(probs, top_k, is_deterministic=True, out=None):
    """Keeps each row's top-k probabilities (ties kept), zeroes the rest and
    renormalises (fp64 sum). ``out`` may be ``probs`` itself."""
    return _filter(_top_k_renorm, probs, "probs", _scalar_or_tensor(top_k, "top_k", int), out,
                   "renorm_probs")


def top_p_renorm_probs(probs, top_p, is_deterministic=True, out=None):
    """Keeps each row's top-p nucleus, zeroes the rest and renormalises."""
    return _filter(_top_p_renorm, probs, "probs", _scalar_or_tensor(top_p, "top_p", float), out,
                   "renorm_probs")


def top_k_mask_logits(logits, top_k, out=None):
    """Keeps each row's top-k logits (ties kept), the rest become -inf."""
    return _filter(_top_k_mask, logits, "logits", _scalar_or_tensor(top_k, "top_k", int), out,
                   "mask_logits")


def apply_penalties(logits, prompt_tokens_tensor, output_tokens_tensor, presence_penalties,
                    frequency_penalties, repetition_penalties, pad_token_id=None):
    """vLLM's ``apply_penalties``, in place on ``logits`` ``[batch, vocab]``
    (returned): repetition over prompt and output tokens, then frequency and
    presence over output tokens. Token arrays ``[batch, max_len]`` are padded
    with ``pad_token_id`` (default: vocab_size, vLLM's padding)."""
    pad = logits.shape[1] if pad_token_id is None else int(pad_token_id)
    l = _lib.tensor_out(logits, "logits")
    ts = [
        _lib.tensor(prompt_tokens_tensor, "prompt_token_ids"),
        _lib.tensor(output_tokens_tensor, "output_token_ids"),
        _lib.tensor(presence_penalties, "presence_penalties"),
        _lib.tensor(frequency_penalties, "frequency_penalties"),
        _lib.tensor(repetition_penalties, "repetition_penalties"),
    ]
    _lib.call(_apply_penalties, l.ref, *[t.ref for t in ts], pad)
    return logits


def sampler_forward(logits, temperature=None, top_k=None, top_p=None, min_p=None, seed=None, offset=None,
                    prompt_token_ids=None, output_token_ids=None, presence_penalties=None,
                    frequency_penalties=None, repetition_penalties=None, pad_token_id=None,
                    max_num_logprobs=None) -> SamplerOutput:
    """vLLM's ``Sampler.forward`` over ``logits`` ``[batch, vocab]`` (not
    modified). Per-request parameters are numbers or ``[batch]`` arrays;
    ``temperature=None`` makes every row greedy (vLLM's ``all_greedy``) and
    rows below 1e-5 are greedy; top_k 0 / -1 is off. Token arrays are padded
    with ``pad_token_id`` (default vocab_size). Returns vLLM's
    ``SamplerOutput``: ``sampled_token_ids`` int32 ``[batch, 1]`` and, with
    ``max_num_logprobs``, the raw logprobs (sampled token first, then the
    top-n) and the sampled token's rank."""
    np = _np()
    batch, vocab = logits.shape
    keep = []

    def per_row(x, name, dtype):
        if x is None:
            return None
        a = np.full(batch, x, dtype=dtype) if np.isscalar(x) else x
        t = _lib.tensor(a, name)
        keep.append(t)
        return t

    md = _Metadata()
    for field, x, dt in [
        ("temperature", temperature, np.float32),
        ("top_k", top_k, np.int64),
        ("top_p", top_p, np.float32),
        ("min_p", min_p, np.float32),
        ("presence_penalties", presence_penalties, np.float32),
        ("frequency_penalties", frequency_penalties, np.float32),
        ("repetition_penalties", repetition_penalties, np.float32),
    ]:
        t = per_row(x, field, dt)
        setattr(md, field, None if t is None else ctypes.pointer(t.dl))
    for field, x in [("prompt_token_ids", prompt_token_ids), ("output_token_ids", output_token_ids)]:
        t = _lib.opt_tensor(x, field)
        keep.append(t)
        setattr(md, field, None if t is None else ctypes.pointer(t.dl))
    sa, sv, oa, ov = _rng(seed, offset)
    keep += [sa, oa]
    md.maybe_seed_arr = None if sa is None else ctypes.pointer(sa.dl)
    md.seed_val = sv
    md.maybe_offset_arr = None if oa is None else ctypes.pointer(oa.dl)
    md.offset_val = ov
    md.pad_token_id = vocab if pad_token_id is None else int(pad_token_id)
    md.max_num_logprobs = -1 if max_num_logprobs is None else int(max_num_logprobs)
    ids = np.empty((batch, 1), dtype=np.int32)
    ids_t = _lib.tensor_out(ids, "sampled_token_ids")
    lp = None
    outs = [None, None, None]
    if max_num_logprobs is not None:
        n1 = int(max_num_logprobs) + 1
        lp = LogprobsTensors(
            np.empty((batch, n1), dtype=np.int32),
            np.empty((batch, n1), dtype=np.float32),
            np.empty(batch, dtype=np.int32),
        )
        outs = [
            _lib.tensor_out(lp.logprob_token_ids, "logprob_token_ids"),
            _lib.tensor_out(lp.logprobs, "logprobs"),
            _lib.tensor_out(lp.selected_token_ranks, "selected_token_ranks"),
        ]
    _lib.call(
        _sampler_forward,
        _lib.tensor(logits, "logits").ref,
        ctypes.byref(md),
        ids_t.ref,
        *[_lib.ref(t) for t in outs],
    )
    return SamplerOutput(ids, lp)
