"""Precision names (vocab.py) <-> torch dtypes, for the torch engine and the exporters."""

from __future__ import annotations

import torch

from reflex_ros.vocab import BF16, FP16, FP32, TORCH_PRECISIONS

_DTYPES = {FP32: torch.float32, BF16: torch.bfloat16, FP16: torch.float16}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Accept a precision name from :data:`~reflex_ros.vocab.TORCH_PRECISIONS` or a torch dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ValueError(f"unsupported dtype {dtype}; choose one of {list(TORCH_PRECISIONS)}")
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; choose one of {list(TORCH_PRECISIONS)}")
    return _DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    """The precision name of a torch dtype (``torch.bfloat16`` -> ``"bf16"``)."""
    return {v: k for k, v in _DTYPES.items()}[dtype]
