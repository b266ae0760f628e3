"""``x @ W.T`` for a few rows of ``x``, computed as ``(W @ x.T).T`` on a CPU.

A decode step multiplies a handful of rows (one per running request) by every weight of the model. On a CPU the
BLAS (MKL's sgemm in torch's CPU wheels) runs the row-major ``[rows, out]`` product markedly slower than the same
numbers written as the ``[out, rows]`` product ``W @ x.T``. Measured on the 2-core AMD EPYC box (AVX2), float32,
weights out of cache (``benchmarks/RESULTS.md``, "few-row GEMMs"):

    output head 512 -> 32000:   2 rows 13.3 -> 3.9 ms,  4 rows 14.3 -> 3.3 ms,  8 rows 13.6 -> 6.2 ms,
                                32 rows 18.6 -> 12.0 ms
    MLP 512 -> 1408:            4 rows 0.48 -> 0.21 ms, 8 rows 0.46 -> 0.25 ms, 32 rows 0.58 -> 0.46 ms

and whole decode steps of 2-32 rows take 0.51-0.89x their time (``benchmarks/few_rows.py``; a single shape at 8
rows can come out a little slower). One row (a GEMV) is the same either way, and prefills (hundreds of rows) are
left to the BLAS as they are. The sums are the same products in another blocking, so values can differ from
``F.linear`` in the last float bits (greedy tokens are compared with PEFT's in the tests). GPUs are left alone.
"""

from __future__ import annotations

import torch

MIN_ROWS, MAX_ROWS = 2, 64  # the row counts that take the transposed form


def few_rows(x2: torch.Tensor) -> bool:
    """Whether ``x2`` [rows, in] should take the transposed form."""
    return x2.device.type == "cpu" and MIN_ROWS <= x2.shape[0] <= MAX_ROWS


def linear_t(x2: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x2 @ weight.T`` ([rows, out], a transposed view of a contiguous [out, rows]); ``weight`` is [out, in]."""
    return torch.mm(weight, x2.t()).t()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for ``x`` [..., in] and ``weight`` [out, in]: contiguous [..., out]."""
    x2 = x.reshape(-1, x.shape[-1])
    if not few_rows(x2) or x.dtype != weight.dtype:
        return torch.nn.functional.linear(x, weight, bias)
    y = linear_t(x2, weight).contiguous()
    if bias is not None:
        y.add_(bias)
    return y.view(*x.shape[:-1], weight.shape[0])
