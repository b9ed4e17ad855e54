"""Tests run against the package in this checkout (python/xpu_ops), loading
the library from XPU_OPS_LIB or target/release."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import xpu_ops  # noqa: E402

TIERS = ["generic", "neon", "avx2", "avx512", "amx"]


def available_tiers():
    """Every ISA tier this machine runs (probed through set_isa)."""
    found = []
    for t in TIERS:
        try:
            xpu_ops.set_isa(t)
            found.append(t)
        except xpu_ops.Error as e:
            assert e.status == xpu_ops.Status.UNSUPPORTED, e
    xpu_ops.set_isa("auto")
    return found


@pytest.fixture(params=available_tiers())
def tier(request):
    """Runs the test once per ISA tier, with that tier forced."""
    xpu_ops.set_isa(request.param)
    yield request.param
    xpu_ops.set_isa("auto")
