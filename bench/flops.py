"""The machine's matmul peak (GFLOP/s) in bf16 and fp32, measured in the bench's own run,
and the model-FLOPs share a trainer reaches of it."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Peak:
    dtype: str
    size: int
    gflops: float


def matmul_peak(dtype: torch.dtype, size: int = 2048, seconds: float = 3.0) -> Peak:
    """Best GFLOP/s over repeated square torch.matmul calls with torch's default threads."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    out = torch.empty(size, size, dtype=dtype)
    for _ in range(2):  # oneDNN primitive creation, page faults
        torch.matmul(a, b, out=out)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.matmul(a, b, out=out)
        best = max(best, 2 * size**3 / (time.perf_counter() - start) / 1e9)
    return Peak(str(dtype).removeprefix("torch."), size, best)


def model_flops(non_embedding_params: int, layers: int, hidden: int, real_tokens: int,
                sum_sq_lengths: int) -> float:
    """Training FLOPs on the real (non-padding) tokens, after PaLM (Chowdhery et al. 2022,
    appendix B): 6·N per token for the dense weights, plus 12·L·d·T per token of length-T
    sequences for attention scores and mixing (forward + backward)."""
    return 6 * non_embedding_params * real_tokens + 12 * layers * hidden * sum_sq_lengths
