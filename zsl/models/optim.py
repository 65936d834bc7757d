"""Adam with the fused kernel wherever PyTorch has one.

PyTorch's default Adam on the CPU runs one tensor at a time, a handful of element-wise passes
per parameter tensor (``lerp_``, ``mul_``, ``addcmul_``, ``sqrt``, ``addcdiv_``), each a trip
through memory. The fused kernel does one pass. Measured on one thread of the 2-core x86-64
VM with CADA-VAE's parameters at CUB sizes (4.5 M floats, AMSGrad): 33 ms per step unfused,
27 ms with ``foreach``, 7 ms fused. The update is the same formula; fused and unfused results
agree to float32 rounding, not bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor
from torch.torch_version import TorchVersion

__all__ = ["adam"]


def adam(
    params: Iterable[Tensor],
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.0,
    amsgrad: bool = False,
) -> torch.optim.Adam:
    """``torch.optim.Adam`` over ``params``, fused when every parameter is on a CPU or CUDA
    device and PyTorch is 2.4 or newer (the versions with a fused CPU kernel)."""
    params = list(params)
    fused = TorchVersion(torch.__version__) >= "2.4" and all(
        p.device.type in ("cpu", "cuda") for p in params
    )
    return torch.optim.Adam(
        params,
        lr=lr,
        betas=betas,
        weight_decay=weight_decay,
        amsgrad=amsgrad,
        fused=fused or None,
    )
