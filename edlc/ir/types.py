"""Tensor types: a shape (ints, or strings for symbolic dims) and a dtype name."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Dim = int | str

# dtype names follow numpy; bfloat16 and float8 types come from ml_dtypes.
DTYPES = (
    "bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
    "float16", "bfloat16", "float32", "float64", "string",
    "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "int4", "uint4",
)


def dtype_name(dtype) -> str:
    """Canonical dtype name of a numpy dtype (or anything numpy accepts)."""
    dt = np.dtype(dtype)
    if dt.kind in "OUS":
        return "string"
    return str(dt.name) if dt.name != "bool_" else "bool"


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype for a dtype name, ml_dtypes for the narrow floats."""
    if name == "string":
        return np.dtype(object)
    try:
        return np.dtype(name)
    except TypeError:
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name))


@dataclass(frozen=True)
class TensorType:
    """Shape and dtype of a value. `shape` is None when even the rank is unknown."""

    shape: tuple[Dim, ...] | None
    dtype: str

    def __post_init__(self):
        if self.shape is not None:
            object.__setattr__(self, "shape", tuple(self.shape))
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype '{self.dtype}'")

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    @property
    def numel(self) -> int | None:
        if not self.is_static:
            return None
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int | None:
        n = self.numel
        if n is None or self.dtype == "string":
            return None
        if self.dtype in ("int4", "uint4"):
            return (n + 1) // 2
        return n * numpy_dtype(self.dtype).itemsize

    @classmethod
    def of(cls, array: np.ndarray) -> TensorType:
        return cls(tuple(int(d) for d in array.shape), dtype_name(array.dtype))

    def __str__(self) -> str:
        if self.shape is None:
            return f"{self.dtype}[?]"
        return f"{self.dtype}[{', '.join(str(d) for d in self.shape)}]"
