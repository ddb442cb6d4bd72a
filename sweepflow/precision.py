"""Numeric precision: what `train.precision: auto` means on this machine (no Prefect import:
the bench's bare script uses it too)."""

from __future__ import annotations

import torch


def resolve_precision(precision: str) -> str:
    """'auto': bf16 autocast where the hardware has it, fp16 where only that, else fp32."""
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return "bf16-mixed"
        return "16-mixed"
    cpu = torch.cpu
    if cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported():
        return "bf16-mixed"
    return "32-true"
