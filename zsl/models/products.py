"""Float32 matrix products on the CPU through oneDNN.

PyTorch sends a float32 CPU ``a @ b`` to its BLAS (MKL in the official wheels). MKL picks its
code path by CPU vendor: on AMD processors it runs its AVX2 kernels even where the CPU has
AVX-512. oneDNN, which PyTorch also ships (and already uses for bfloat16 products), picks
kernels by the instruction sets the CPU reports. Measured on a 2-core AMD EPYC with AVX-512,
one thread, the shapes of a classical fit on CUB VGG (a 128 x 4096 batch against 4096 x 312
weights, 4096 x 4096 evaluation batches against 200 classes): MKL 69-96 GFLOP/s, oneDNN
118-195 GFLOP/s (``experiments/results/classical_cost_epyc.md``).

:func:`mm` is ``a @ b`` for 2-D tensors, with a gradient, that routes float32 CPU products
outside autocast through oneDNN. Everything else (other devices and dtypes, products under
an autocast region, which PyTorch already casts and sends to oneDNN) is plain ``a @ b``.
The two libraries round differently: results agree to float32 rounding (about 1e-6
relative), not bit for bit. :func:`use_onednn` switches the route off and on.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

__all__ = ["mm", "onednn_available", "use_onednn"]

_ENABLED = True


@functools.cache
def onednn_available() -> bool:
    """Whether this PyTorch build has oneDNN and its dense linear kernel (asked once: every
    product checks it)."""
    return bool(torch.backends.mkldnn.is_available()) and hasattr(
        torch.ops.mkldnn, "_linear_pointwise"
    )


@contextlib.contextmanager
def use_onednn(enabled: bool) -> Iterator[None]:
    """Within the block, float32 CPU products of :func:`mm` go through oneDNN (``True``, the
    default) or PyTorch's BLAS (``False``)."""
    global _ENABLED
    before, _ENABLED = _ENABLED, enabled
    try:
        yield
    finally:
        _ENABLED = before


def _routed(a: Tensor, b: Tensor) -> bool:
    return (
        _ENABLED
        and a.dtype == torch.float32
        and b.dtype == torch.float32
        and a.device.type == "cpu"
        and b.device.type == "cpu"
        and a.dim() == 2
        and b.dim() == 2
        and a.numel() > 0
        and b.numel() > 0
        and not torch.is_autocast_enabled("cpu")
        and onednn_available()
    )


def _dense(t: Tensor) -> Tensor:
    """``t`` itself when it is row- or column-major, else a row-major copy: oneDNN takes
    other strides (e.g. one map's slice of a stacked gradient) on a generic path about 1000x
    slower (a 4096 x 128 x 312 product: 4 s instead of 4 ms)."""
    return t if t.is_contiguous() or t.t().is_contiguous() else t.contiguous()


def _dnn(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` by oneDNN's linear kernel (``x @ w.T`` with ``w = b.T``, a view)."""
    out: Tensor = torch.ops.mkldnn._linear_pointwise(_dense(a), _dense(b).t(), None, "none", [], "")
    return out


def _count_flops() -> None:
    """Let ``torch.utils.flop_counter.FlopCounterMode`` count oneDNN's linear kernel as it
    counts ``mm`` (2 M K N), so that FLOP counts of a fit do not depend on the route."""
    try:
        from torch.utils.flop_counter import register_flop_formula  # noqa: PLC0415
    except ImportError:  # older PyTorch: products through oneDNN go uncounted
        return

    @register_flop_formula(torch.ops.mkldnn._linear_pointwise)  # type: ignore[untyped-decorator]
    def _linear_flops(x_shape: Any, w_shape: Any, *args: Any, **kwargs: Any) -> int:
        rows = 1
        for size in x_shape[:-1]:
            rows *= int(size)
        return 2 * rows * int(x_shape[-1]) * int(w_shape[0])


if onednn_available():
    _count_flops()


class _OneDNNProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor) -> Tensor:
        ctx.save_for_backward(a, b)
        return _dnn(a, b)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        a, b = ctx.saved_tensors
        grad_a = _dnn(grad, b.t()) if ctx.needs_input_grad[0] else None
        grad_b = _dnn(a.t(), grad) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b


def mm(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for ``a`` [M, K] and ``b`` [K, N]; float32 CPU products outside autocast by
    oneDNN (see the module docstring), with the same gradients as ``a @ b``."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"mm: expected [M, K] @ [K, N], got {tuple(a.shape)} @ {tuple(b.shape)}")
    if not _routed(a, b):
        return a @ b
    out: Tensor = _OneDNNProduct.apply(a, b)
    return out
