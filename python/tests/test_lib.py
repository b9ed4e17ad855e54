"""Library-wide calls, library lookup and array conversion."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import xpu_ops
from conftest import TIERS, available_tiers
from xpu_ops import Error, Status

PYTHON_DIR = str(Path(__file__).resolve().parent.parent)


def test_version_matches_the_package():
    assert xpu_ops.version() == xpu_ops.__version__
    assert all(p.isdigit() for p in xpu_ops.version().split("."))


def test_isa_control():
    tiers = available_tiers()
    assert "generic" in tiers
    assert xpu_ops.isa() == tiers[-1], "the default is the best tier"
    try:
        for t in tiers:
            xpu_ops.set_isa(t)
            assert xpu_ops.isa() == t
        for t in set(TIERS) - set(tiers):
            with pytest.raises(Error) as e:
                xpu_ops.set_isa(t)
            assert e.value.status == Status.UNSUPPORTED and t in e.value.message
        with pytest.raises(Error) as e:
            xpu_ops.set_isa("sse9")
        assert e.value.status == xpu_ops.ERR_INVALID_ARGUMENT
        assert '"sse9"' in e.value.message
    finally:
        xpu_ops.set_isa("auto")
    assert xpu_ops.isa() == tiers[-1]


def test_thread_control():
    before = xpu_ops.num_threads()
    assert before >= 1
    try:
        xpu_ops.set_num_threads(3)
        assert xpu_ops.num_threads() == 3
        with pytest.raises(Error) as e:
            xpu_ops.set_num_threads(0)
        assert e.value.status == Status.INVALID_ARGUMENT and "got 0" in e.value.message
        assert xpu_ops.num_threads() == 3
    finally:
        xpu_ops.set_num_threads(before)


def test_status_constants_mirror_the_header():
    header = Path(__file__).resolve().parents[2] / "include" / "xpu_ops.h"
    codes = {}
    for line in header.read_text().splitlines():
        line = line.strip().rstrip(",")
        if line.startswith("XOPS_") and " = " in line:
            name, value = line.split(" = ")
            codes[name] = int(value)
    assert codes["XOPS_OK"] == xpu_ops.OK == 0
    python = {f"XOPS_{s.name}" if s.name == "OK" else f"XOPS_ERR_{s.name}": int(s) for s in Status}
    assert python == codes


def run_python(code, **env):
    full = dict(os.environ, PYTHONPATH=PYTHON_DIR, **env)
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True)


def test_xpu_ops_lib_env_is_honoured():
    r = run_python("import xpu_ops; print(xpu_ops.library_path())",
                   XPU_OPS_LIB=xpu_ops.library_path())
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == xpu_ops.library_path()
    # A directory works too.
    r = run_python("import xpu_ops; print(xpu_ops.library_path())",
                   XPU_OPS_LIB=str(Path(xpu_ops.library_path()).parent))
    assert r.returncode == 0, r.stderr
    r = run_python("import xpu_ops", XPU_OPS_LIB="/nonexistent/libxpu_ops.so")
    assert r.returncode != 0 and "XPU_OPS_LIB" in r.stderr


def test_conversion_is_zero_copy_and_strided():
    from xpu_ops import _lib

    a = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    v = a.transpose(1, 0, 2)[:, :, 1:]
    t = _lib.tensor(v, "v")
    assert t.dl.data == v.__array_interface__["data"][0]
    assert list(t.dl.shape[: t.dl.ndim]) == [3, 2, 3]
    assert list(t.dl.strides[: t.dl.ndim]) == [4, 12, 1]
    assert (t.dl.dtype.code, t.dl.dtype.bits, t.dl.dtype.lanes) == (2, 32, 1)
    assert t.dl.byte_offset == 0 and t.dl.device.device_type == 1
    import ml_dtypes

    for dt, code in [(ml_dtypes.bfloat16, (4, 16)), (ml_dtypes.float8_e4m3fn, (10, 8)),
                     (ml_dtypes.float8_e5m2, (12, 8)), (np.uint8, (1, 8)), (np.int64, (0, 64))]:
        t = _lib.tensor(np.zeros(2, dt), "x")
        assert (t.dl.dtype.code, t.dl.dtype.bits) == code
    with pytest.raises(Error) as e:
        _lib.tensor(np.zeros(2, ">f4"), "big")
    assert e.value.status == Status.DTYPE_MISMATCH and "`big`" in e.value.message
    with pytest.raises(TypeError):
        _lib.tensor_out([1.0, 2.0], "out")


def test_align_report_covers_every_tier_and_passes():
    rows = xpu_ops.align("reshape_and_cache")
    assert rows, "the KV-cache family registers alignment cases"
    tiers = {r["isa"] for r in rows}
    assert xpu_ops.isa() in tiers and "generic" in tiers
    assert all(r["pass"] and r["within"] == 1.0 and r["cosine"] > 0.999 for r in rows)
    assert xpu_ops.align("no-such-op") == []
