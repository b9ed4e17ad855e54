"""Loading libxpu_ops, the DLPack structs, array -> DLTensor conversion, errors.

Every op module declares its C functions with :func:`function` and converts
its arguments with :func:`tensor` / :func:`tensor_out` / :func:`opt_tensor`,
then calls :func:`call`, which raises :class:`Error` on a non-zero status.
"""

from __future__ import annotations

import ctypes
import enum
import os
import sys
from pathlib import Path
from typing import Any, Optional

__all__ = [
    "Error",
    "Status",
    "library_path",
    "lib",
]


# --------------------------------------------------------------------------
# Loading


def _lib_filename() -> str:
    if sys.platform == "darwin":
        return "libxpu_ops.dylib"
    if sys.platform == "win32":
        return "xpu_ops.dll"
    return "libxpu_ops.so"


def _find_library() -> Path:
    name = _lib_filename()
    env = os.environ.get("XPU_OPS_LIB")
    if env:
        p = Path(env)
        if p.is_dir():
            p = p / name
        if not p.is_file():
            raise ImportError(f"XPU_OPS_LIB={env!r}: no such library file")
        return p
    here = Path(__file__).resolve().parent
    candidates = [
        here / "lib" / name,  # a copy bundled into the package
        here.parent.parent / "target" / "release" / name,  # the source tree
    ]
    for p in candidates:
        if p.is_file():
            return p
    tried = ", ".join(str(c) for c in candidates)
    raise ImportError(
        f"cannot find {name}: set XPU_OPS_LIB to its path, or build it with "
        f"`cargo build --release -p xpu-ops-ffi` (tried {tried})"
    )


_PATH = _find_library()
lib = ctypes.CDLL(str(_PATH))


def library_path() -> str:
    """The path of the loaded shared library."""
    return str(_PATH)


# --------------------------------------------------------------------------
# Status and errors


class Status(enum.IntEnum):
    """``xops_status`` codes (``include/xpu_ops.h``)."""

    OK = 0
    INVALID_ARGUMENT = 1001
    NULL_POINTER = 1002
    DTYPE_MISMATCH = 1003
    SHAPE_MISMATCH = 1004
    INDEX_OUT_OF_RANGE = 1005
    UNSUPPORTED = 1006
    INVALID_STRIDE = 1007
    ALIASING = 1008
    INVALID_VALUE = 1009
    DEVICE_UNAVAILABLE = 1010
    INTERNAL = 1011


class Error(Exception):
    """An xpu-ops call failed: ``status`` (a :class:`Status`) and ``message``
    (naming the argument and the offending value)."""

    def __init__(self, status: int, message: str):
        try:
            status = Status(status)
        except ValueError:
            pass  # a code newer than this package: keep the number
        self.status = status
        self.message = message
        super().__init__(status, message)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        name = getattr(self.status, "name", str(self.status))
        return f"xpu_ops.Error({name}, {self.message!r})"


lib.xops_last_error.restype = ctypes.c_char_p
lib.xops_last_error.argtypes = []


def call(fn: Any, *args: Any) -> None:
    """Calls a status-returning C function; raises :class:`Error` on failure."""
    rc = fn(*args)
    if rc != 0:
        msg = lib.xops_last_error()
        raise Error(rc, msg.decode("utf-8", "replace") if msg else "")


def function(name: str, argtypes: list, restype: Any = ctypes.c_int) -> Any:
    """Declares and returns the C function ``name``."""
    fn = getattr(lib, name)
    fn.argtypes = argtypes
    fn.restype = restype
    return fn


# --------------------------------------------------------------------------
# DLPack


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


#: ``const DLTensor*`` in argtypes.
TENSOR = ctypes.POINTER(DLTensor)
#: ``const DLTensor* const*`` in argtypes.
TENSOR_ARRAY = ctypes.POINTER(TENSOR)

_KDL_CPU = 1
# dtype name -> (DLPack code, bits); DLPack 1.x codes.
_DTYPES = {
    "float32": (2, 32),
    "float16": (2, 16),
    "bfloat16": (4, 16),
    "float8_e4m3fn": (10, 8),
    "float8_e5m2": (12, 8),
    "int8": (0, 8),
    "uint8": (1, 8),
    "int32": (0, 32),
    "int64": (0, 64),
    "bool": (6, 8),
}


class Tensor:
    """A DLTensor describing an array's memory (no copy), and the objects
    that must stay alive while the C call runs."""

    __slots__ = ("dl", "owner", "_shape", "_strides")

    def __init__(self, owner: Any, data: int, dtype_name: str, shape, strides, name: str):
        if dtype_name not in _DTYPES:
            raise Error(
                Status.DTYPE_MISMATCH,
                f"`{name}` has dtype {dtype_name}, which xpu-ops does not support "
                f"(supported: {', '.join(_DTYPES)})",
            )
        code, bits = _DTYPES[dtype_name]
        n = len(shape)
        self.owner = owner
        self._shape = (ctypes.c_int64 * n)(*shape)
        self._strides = (ctypes.c_int64 * n)(*strides)
        self.dl = DLTensor(
            data=data,
            device=DLDevice(_KDL_CPU, 0),
            ndim=n,
            dtype=DLDataType(code, bits, 1),
            shape=self._shape,
            strides=self._strides,
            byte_offset=0,
        )

    @property
    def ref(self):
        """The argument to pass for a ``const DLTensor*`` parameter."""
        return ctypes.byref(self.dl)


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _from_torch(t: Any, name: str, writable: bool) -> Tensor:
    if t.device.type != "cpu":
        raise Error(
            Status.DEVICE_UNAVAILABLE,
            f"`{name}` is on {t.device}, but this build of xpu-ops runs on the CPU only",
        )
    dtype_name = str(t.dtype).replace("torch.", "")
    return Tensor(t, t.data_ptr(), dtype_name, tuple(t.shape), t.stride(), name)


def _from_numpy(a: Any, name: str, writable: bool) -> Tensor:
    import numpy as np

    if not isinstance(a, np.ndarray):
        if writable:
            raise TypeError(f"`{name}` must be a numpy array or a torch tensor, got {type(a)!r}")
        a = np.asarray(a)
    if writable and not a.flags.writeable:
        raise Error(Status.INVALID_ARGUMENT, f"`{name}` is read-only but the op writes to it")
    if not a.dtype.isnative:
        raise Error(
            Status.DTYPE_MISMATCH, f"`{name}` has non-native byte order {a.dtype.str!r}"
        )
    size = a.dtype.itemsize
    strides = []
    for i, s in enumerate(a.strides):
        if s % size:
            raise Error(
                Status.INVALID_STRIDE,
                f"`{name}` stride {s} bytes in dim {i} is not a multiple of its "
                f"{size}-byte elements",
            )
        strides.append(s // size)
    data = a.__array_interface__["data"][0]
    return Tensor(a, data, a.dtype.name, a.shape, strides, name)


def tensor(x: Any, name: str) -> Tensor:
    """An input tensor: a numpy array (bf16/fp8 through ml_dtypes), a CPU
    torch tensor, or anything numpy.asarray accepts (copied)."""
    if _is_torch(x):
        return _from_torch(x, name, False)
    return _from_numpy(x, name, False)


def tensor_out(x: Any, name: str) -> Tensor:
    """An output or in-place tensor (written through, never copied)."""
    if _is_torch(x):
        return _from_torch(x, name, True)
    return _from_numpy(x, name, True)


def opt_tensor(x: Any, name: str) -> Optional[Tensor]:
    """An optional input tensor; ``None`` stays NULL."""
    return None if x is None else tensor(x, name)


def scale_tensor(x: Any, name: str) -> Optional[Tensor]:
    """An optional float32 scale: a tensor, or a Python number as shape [1]."""
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        import numpy as np

        return tensor(np.array([x], dtype=np.float32), name)
    return opt_tensor(x, name)


def ref(t: Optional[Tensor]):
    """The C argument for an optional tensor (NULL for ``None``)."""
    return None if t is None else t.ref


def tensor_array(ts: list) -> Any:
    """A ``const DLTensor* const*`` over already converted tensors."""
    arr = (TENSOR * len(ts))(*[ctypes.pointer(t.dl) for t in ts])
    return arr


def c_string(s: str, name: str) -> bytes:
    if not isinstance(s, str):
        raise TypeError(f"`{name}` must be a str, got {type(s)!r}")
    return s.encode("utf-8")
