"""KV-cache ops through the Python package, against a numpy reference written
here (in the style of vLLM's tests/kernels/attention/test_cache.py).

Tolerance: none. Copies are bit-exact, conversions round once from float32
to nearest-even, and fp8 stores saturate(x / scale), so every cache byte must
equal the reference's (ml_dtypes' float32 -> fp8 cast after clipping to the
format's finite range).
"""

import zlib

import ml_dtypes
import numpy as np
import pytest

import xpu_ops
from xpu_ops import Error, Status

NUM_BLOCKS, BLOCK_SIZE, NUM_HEADS, HEAD_SIZE = 4, 8, 3, 32
NUM_SLOTS = NUM_BLOCKS * BLOCK_SIZE

DTYPES = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}
FP8 = {
    "fp8": np.dtype(ml_dtypes.float8_e4m3fn),
    "fp8_e4m3": np.dtype(ml_dtypes.float8_e4m3fn),
    "fp8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
}


# --------------------------------------------------------------------------
# Reference


def stored_dtype(kv_cache_dtype, src):
    if kv_cache_dtype == "auto":
        return src
    if kv_cache_dtype in FP8:
        return FP8[kv_cache_dtype]
    return DTYPES[kv_cache_dtype]


def ref_store(x, kv_cache_dtype, scale):
    """What the cache holds for rows x [..., H, D]: fp8 saturate(x / scale)
    (scale [1] or [H]), else x rounded to the cache dtype."""
    x32 = x.astype(np.float32)
    if kv_cache_dtype in FP8:
        fp8 = FP8[kv_cache_dtype]
        s = np.float32(1.0) if scale is None else np.asarray(scale, np.float32).reshape(-1)
        if np.size(s) > 1:
            s = s[:, None]  # per head, broadcast over head_size
        y = (x32 / s).astype(np.float32)
        fmax = np.float32(ml_dtypes.finfo(fp8).max)
        return np.clip(y, -fmax, fmax).astype(fp8)
    return x32.astype(stored_dtype(kv_cache_dtype, x.dtype))


def as_cache_dtype(stored, fp8_as_uint8):
    return np.dtype(np.uint8) if (stored.itemsize == 1 and fp8_as_uint8) else stored


def random_cache(rng, shape, dtype):
    """A cache full of random bytes, so untouched elements are checkable."""
    n = int(np.prod(shape)) * dtype.itemsize
    return rng.integers(0, 256, n, dtype=np.uint8).view(dtype).reshape(shape)


def raw(a):
    """The bytes of a (contiguous) base array, for bit-exact comparison."""
    return np.ascontiguousarray(a).view(np.uint8)


def cast_bits(rows, cache):
    """rows (stored dtype) reinterpreted as the cache array's dtype (uint8 for fp8)."""
    return rows.view(cache.dtype) if rows.dtype != cache.dtype else rows


def make_slots(rng, num_tokens, dtype=np.int64):
    slots = rng.choice(NUM_SLOTS, size=num_tokens, replace=False).astype(dtype)
    slots[0] = NUM_SLOTS - 1  # the last slot of the last block
    slots[num_tokens // 2] = -1  # padding
    slots[-1] = -1
    return slots


def make_kv(rng, num_tokens, src, extra_tokens=2):
    """key and value as views into a fused qkv buffer [T + extra, 3, H, D]:
    a token stride of 3*H*D elements; the extra tokens must not be written."""
    qkv = (rng.standard_normal((num_tokens + extra_tokens, 3, NUM_HEADS, HEAD_SIZE)) * 60.0)
    qkv = qkv.astype(np.float32).astype(DTYPES[src])
    return qkv[:, 1], qkv[:, 2]


def scales(rng, kv_cache_dtype):
    if kv_cache_dtype not in FP8:
        return None, None
    k_scale = np.array([0.05], np.float32)  # large keys saturate
    v_scale = rng.uniform(0.5, 3.0, NUM_HEADS).astype(np.float32)  # per head
    return k_scale, v_scale


# --------------------------------------------------------------------------
# Parity

KV_CACHE_DTYPES = ["auto", "float16", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2"]


@pytest.mark.parametrize("src", list(DTYPES))
@pytest.mark.parametrize("kv_cache_dtype", KV_CACHE_DTYPES)
@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_reshape_and_cache_flash(tier, src, kv_cache_dtype, layout):
    rng = np.random.default_rng(zlib.crc32(f"{src}/{kv_cache_dtype}/{layout}".encode()))
    num_tokens = 13
    key, value = make_kv(rng, num_tokens, src)
    slots = make_slots(rng, num_tokens, np.int32 if layout == "HND" else np.int64)
    k_scale, v_scale = scales(rng, kv_cache_dtype)
    stored = stored_dtype(kv_cache_dtype, DTYPES[src])
    cdt = as_cache_dtype(stored, fp8_as_uint8=kv_cache_dtype != "fp8_e4m3")

    def caches():
        r = np.random.default_rng(7)
        if layout == "NHD":
            shape = (NUM_BLOCKS, BLOCK_SIZE, NUM_HEADS, HEAD_SIZE)
            bases = [random_cache(r, shape, cdt) for _ in range(2)]
            return bases, bases
        shape = (NUM_BLOCKS, NUM_HEADS, BLOCK_SIZE, HEAD_SIZE)
        bases = [random_cache(r, shape, cdt) for _ in range(2)]
        return bases, [b.transpose(0, 2, 1, 3) for b in bases]  # HND seen as NHD

    (kb, vb), (kc, vc) = caches()
    (rkb, rvb), (rkc, rvc) = caches()
    xpu_ops.reshape_and_cache_flash(key, value, kc, vc, slots, kv_cache_dtype, k_scale, v_scale)

    k_rows = cast_bits(ref_store(key[:num_tokens], kv_cache_dtype, k_scale), rkc)
    v_rows = cast_bits(ref_store(value[:num_tokens], kv_cache_dtype, v_scale), rvc)
    for t, s in enumerate(slots):
        if s < 0:
            continue
        b, o = divmod(int(s), BLOCK_SIZE)
        rkc[b, o] = k_rows[t]
        rvc[b, o] = v_rows[t]
    np.testing.assert_array_equal(raw(kb), raw(rkb))
    np.testing.assert_array_equal(raw(vb), raw(rvb))
    if kv_cache_dtype in ("fp8", "fp8_e4m3"):
        assert np.any(raw(kb) & 0x7F == 0x7E), "some keys saturate at 448"


@pytest.mark.parametrize("src", list(DTYPES))
@pytest.mark.parametrize("kv_cache_dtype", KV_CACHE_DTYPES)
def test_reshape_and_cache(tier, src, kv_cache_dtype):
    rng = np.random.default_rng(zlib.crc32(f"{src}/{kv_cache_dtype}/paged".encode()))
    num_tokens = 11
    key, value = make_kv(rng, num_tokens, src)
    slots = make_slots(rng, num_tokens)
    k_scale, v_scale = scales(rng, kv_cache_dtype)
    stored = stored_dtype(kv_cache_dtype, DTYPES[src])
    cdt = as_cache_dtype(stored, fp8_as_uint8=kv_cache_dtype != "fp8_e5m2")
    x = 16 // stored.itemsize
    kshape = (NUM_BLOCKS, NUM_HEADS, HEAD_SIZE // x, BLOCK_SIZE, x)
    vshape = (NUM_BLOCKS, NUM_HEADS, HEAD_SIZE, BLOCK_SIZE)
    r = np.random.default_rng(3)
    kc, vc = random_cache(r, kshape, cdt), random_cache(r, vshape, cdt)
    rkc, rvc = kc.copy(), vc.copy()
    xpu_ops.reshape_and_cache(key, value, kc, vc, slots, kv_cache_dtype, k_scale, v_scale)

    k_rows = cast_bits(ref_store(key[:num_tokens], kv_cache_dtype, k_scale), rkc)
    v_rows = cast_bits(ref_store(value[:num_tokens], kv_cache_dtype, v_scale), rvc)
    for t, s in enumerate(slots):
        if s < 0:
            continue
        b, o = divmod(int(s), BLOCK_SIZE)
        rkc[b, :, :, o, :] = k_rows[t].reshape(NUM_HEADS, HEAD_SIZE // x, x)
        rvc[b, :, :, o] = v_rows[t]
    np.testing.assert_array_equal(raw(kc), raw(rkc))
    np.testing.assert_array_equal(raw(vc), raw(rvc))


def test_scalar_scale_and_one_tensor_as_both_caches():
    # GDN-style state write-back: block_size 1, key is value, one cache passed twice.
    rng = np.random.default_rng(11)
    state = rng.standard_normal((3, NUM_HEADS, HEAD_SIZE)).astype(np.float32)
    cache = random_cache(rng, (5, 1, NUM_HEADS, HEAD_SIZE), np.dtype(np.uint8))
    want = cache.copy()
    slots = np.array([4, -1, 0], np.int64)
    xpu_ops.reshape_and_cache_flash(state, state, cache, cache, slots, "fp8", 2.0, 2.0)
    rows = ref_store(state, "fp8", np.array([2.0], np.float32)).view(np.uint8)
    want[4, 0], want[0, 0] = rows[0], rows[2]
    np.testing.assert_array_equal(cache, want)


@pytest.mark.parametrize("dtype", ["bfloat16", "fp8_uint8", "float32"])
def test_copy_blocks(dtype):
    rng = np.random.default_rng(5)
    num_layers, num_blocks = 3, 10
    dt = np.dtype(np.uint8) if dtype == "fp8_uint8" else DTYPES[dtype]
    shape = (num_blocks, BLOCK_SIZE, NUM_HEADS, HEAD_SIZE)
    key_caches = [random_cache(rng, shape, dt) for _ in range(num_layers)]
    value_caches = [random_cache(rng, shape, dt) for _ in range(num_layers)]
    # vLLM's test: distinct source and destination blocks.
    perm = rng.permutation(num_blocks)
    pairs = np.stack([perm[:4], perm[4:8]], axis=1).astype(np.int64)
    want_k = [c.copy() for c in key_caches]
    want_v = [c.copy() for c in value_caches]
    for src, dst in pairs:
        for c in want_k + want_v:
            c[dst] = c[src]
    xpu_ops.copy_blocks(key_caches, value_caches, pairs)
    for got, want in zip(key_caches + value_caches, want_k + want_v):
        np.testing.assert_array_equal(raw(got), raw(want))


def test_swap_blocks():
    rng = np.random.default_rng(6)
    dt = np.dtype(ml_dtypes.bfloat16)
    src = random_cache(rng, (6, BLOCK_SIZE, NUM_HEADS, HEAD_SIZE), dt)
    dst = random_cache(rng, (9, BLOCK_SIZE, NUM_HEADS, HEAD_SIZE), dt)
    mapping = np.array([[0, 8], [5, 0], [2, 3]], np.int64)
    want = dst.copy()
    for s, d in mapping:
        want[d] = src[s]
    xpu_ops.swap_blocks(src, dst, mapping)
    np.testing.assert_array_equal(raw(dst), raw(want))


def test_thread_count_does_not_change_results():
    rng = np.random.default_rng(9)
    num_tokens = NUM_SLOTS
    key, value = make_kv(rng, num_tokens, "bfloat16", extra_tokens=0)
    slots = rng.permutation(NUM_SLOTS).astype(np.int64)
    shape = (NUM_BLOCKS, BLOCK_SIZE, NUM_HEADS, HEAD_SIZE)
    before = xpu_ops.num_threads()
    results = []
    try:
        for n in (1, 3):
            xpu_ops.set_num_threads(n)
            kc = np.zeros(shape, np.uint8)
            vc = np.zeros(shape, np.uint8)
            xpu_ops.reshape_and_cache_flash(key, value, kc, vc, slots, "fp8", 0.1, 0.1)
            results.append((kc, vc))
    finally:
        xpu_ops.set_num_threads(before)
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


# --------------------------------------------------------------------------
# Bad input: a named status, a message naming the argument, caches untouched


@pytest.fixture
def flash_args():
    rng = np.random.default_rng(1)
    key, value = make_kv(rng, 5, "float32")
    shape = (NUM_BLOCKS, BLOCK_SIZE, NUM_HEADS, HEAD_SIZE)
    kc = random_cache(rng, shape, np.dtype(np.uint8))
    vc = random_cache(rng, shape, np.dtype(np.uint8))
    slots = np.array([0, 1, -1, 3, 4], np.int64)
    return dict(key=key, value=value, key_cache=kc, value_cache=vc, slot_mapping=slots,
                kv_cache_dtype="fp8", k_scale=np.array([1.0], np.float32),
                v_scale=np.array([1.0], np.float32))


def expect_error(status, fragment, fn, args, *outputs):
    snapshot = [o.copy() for o in outputs]
    with pytest.raises(Error) as e:
        fn(**args)
    assert e.value.status == status, repr(e.value)
    assert fragment in e.value.message, repr(e.value)
    for got, want in zip(outputs, snapshot):
        np.testing.assert_array_equal(got, want)
    return e.value


def test_slot_out_of_range(flash_args):
    flash_args["slot_mapping"] = np.array([0, 1, -1, NUM_SLOTS, 4], np.int64)
    err = expect_error(Status.INDEX_OUT_OF_RANGE, f"slot_mapping[3] = {NUM_SLOTS}",
                       xpu_ops.reshape_and_cache_flash, flash_args,
                       flash_args["key_cache"], flash_args["value_cache"])
    assert err.status == xpu_ops.ERR_INDEX_OUT_OF_RANGE == 1005
    assert isinstance(err, Exception) and str(err) == err.message


def test_unknown_kv_cache_dtype(flash_args):
    flash_args["kv_cache_dtype"] = "fp9"
    expect_error(Status.INVALID_ARGUMENT, '"fp9"', xpu_ops.reshape_and_cache_flash, flash_args,
                 flash_args["key_cache"], flash_args["value_cache"])


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_fp8_scale(flash_args, bad):
    flash_args["v_scale"] = np.array([1.0, bad, 1.0], np.float32)
    expect_error(Status.INVALID_VALUE, "v_scale", xpu_ops.reshape_and_cache_flash, flash_args,
                 flash_args["key_cache"], flash_args["value_cache"])


def test_dtype_mismatches(flash_args):
    args = dict(flash_args, key=flash_args["key"].astype(np.int32))
    expect_error(Status.DTYPE_MISMATCH, "`key`", xpu_ops.reshape_and_cache_flash, args,
                 flash_args["key_cache"], flash_args["value_cache"])
    args = dict(flash_args, kv_cache_dtype="bfloat16")
    expect_error(Status.DTYPE_MISMATCH, "key_cache", xpu_ops.reshape_and_cache_flash, args,
                 flash_args["key_cache"], flash_args["value_cache"])
    args = dict(flash_args, key=flash_args["key"].astype(np.float64))
    expect_error(Status.DTYPE_MISMATCH, "`key` has dtype float64",
                 xpu_ops.reshape_and_cache_flash, args,
                 flash_args["key_cache"], flash_args["value_cache"])


def test_shape_mismatch(flash_args):
    args = dict(flash_args, value=flash_args["value"][:, :2])
    expect_error(Status.SHAPE_MISMATCH, "`value`", xpu_ops.reshape_and_cache_flash, args,
                 flash_args["key_cache"], flash_args["value_cache"])


def test_paged_head_size_not_divisible_by_x():
    rng = np.random.default_rng(2)
    key = rng.standard_normal((2, 2, 20)).astype(ml_dtypes.bfloat16)  # x = 8
    kc = np.zeros((2, 2, 2, 4, 8), ml_dtypes.bfloat16)
    vc = np.zeros((2, 2, 20, 4), ml_dtypes.bfloat16)
    args = dict(key=key, value=key, key_cache=kc, value_cache=vc,
                slot_mapping=np.array([0, 1]), kv_cache_dtype="auto")
    expect_error(Status.SHAPE_MISMATCH, "not divisible by x = 8", xpu_ops.reshape_and_cache,
                 args, kc, vc)


def test_read_only_cache(flash_args):
    flash_args["key_cache"].setflags(write=False)
    expect_error(Status.INVALID_ARGUMENT, "`key_cache` is read-only",
                 xpu_ops.reshape_and_cache_flash, flash_args, flash_args["value_cache"])


def test_byte_strides_not_a_multiple_of_the_element():
    odd32 = np.lib.stride_tricks.as_strided(np.zeros(16, np.float32), shape=(2, 2, 4),
                                            strides=(34, 17, 4))
    with pytest.raises(Error) as e:
        xpu_ops.reshape_and_cache_flash(odd32, odd32, np.zeros((1, 4, 2, 4), np.float32),
                                        np.zeros((1, 4, 2, 4), np.float32), np.array([0, 1]), "auto")
    assert e.value.status == Status.INVALID_STRIDE and "`key`" in e.value.message


def test_block_mapping_out_of_range():
    rng = np.random.default_rng(4)
    caches = [random_cache(rng, (4, 2, 8), np.dtype(np.float32)) for _ in range(2)]
    snapshot = [c.copy() for c in caches]
    with pytest.raises(Error) as e:
        xpu_ops.copy_blocks(caches[:1], caches[1:], np.array([[0, 1], [2, 4]], np.int64))
    assert e.value.status == Status.INDEX_OUT_OF_RANGE
    assert "destination block 4" in e.value.message
    with pytest.raises(Error) as e:
        xpu_ops.swap_blocks(caches[0], caches[1], np.array([[-1, 1]], np.int64))
    assert e.value.status == Status.INDEX_OUT_OF_RANGE
    with pytest.raises(Error) as e:
        xpu_ops.copy_blocks(caches[:1], [], np.array([[0, 1]], np.int64))
    assert e.value.status == Status.SHAPE_MISMATCH
    for got, want in zip(caches, snapshot):
        np.testing.assert_array_equal(got, want)


def test_null_pointer_status_through_ctypes():
    # The Python API never passes NULL for a required tensor; the raw C
    # function shows the status the header documents.
    from xpu_ops import _lib, cache

    with pytest.raises(Error) as e:
        _lib.call(cache._swap_blocks, None, None, None)
    assert e.value.status == xpu_ops.ERR_NULL_POINTER
    assert e.value.message == "null pointer: `src` is NULL"


# --------------------------------------------------------------------------
# torch (CPU) tensors, when torch is installed


def test_torch_tensors_match_numpy():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    key, value = make_kv(rng, 6, "float32", extra_tokens=0)
    key, value = np.ascontiguousarray(key), np.ascontiguousarray(value)
    slots = np.array([3, -1, 9, 0, 31, 17], np.int64)
    shape = (NUM_BLOCKS, BLOCK_SIZE, NUM_HEADS, HEAD_SIZE)
    kc_np, vc_np = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    xpu_ops.reshape_and_cache_flash(key, value, kc_np, vc_np, slots, "fp8", 0.5, 0.5)

    # Typed fp8 key cache; value cache as a uint8 HND tensor seen through a transpose.
    kc_t = torch.zeros(shape, dtype=torch.float8_e4m3fn)
    vc_hnd = torch.zeros((NUM_BLOCKS, NUM_HEADS, BLOCK_SIZE, HEAD_SIZE), dtype=torch.uint8)
    vc_t = vc_hnd.transpose(1, 2)
    xpu_ops.reshape_and_cache_flash(torch.from_numpy(key), torch.from_numpy(value), kc_t, vc_t,
                                    torch.from_numpy(slots), "fp8",
                                    torch.tensor([0.5]), torch.tensor([0.5]))
    np.testing.assert_array_equal(kc_t.view(torch.uint8).numpy(), kc_np)
    np.testing.assert_array_equal(vc_t.contiguous().numpy(), vc_np)

    with pytest.raises(Error) as e:
        xpu_ops.reshape_and_cache_flash(torch.from_numpy(key).to(torch.float64),
                                        torch.from_numpy(value), kc_t, vc_t,
                                        torch.from_numpy(slots), "fp8")
    assert e.value.status == Status.DTYPE_MISMATCH
