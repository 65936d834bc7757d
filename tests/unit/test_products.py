"""Float32 CPU products through oneDNN (zsl.models.products), the batches that evaluation
reads in place, and the heap settings of a run (zsl.heap)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from zsl.data.datamodule import tensor_loader
from zsl.models import products
from zsl.models.classical.ale import ALE, bilinear_scores
from zsl.models.classical.latem import LatentBilinear
from zsl.models.products import mm, onednn_available, use_onednn

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="no oneDNN in this build")


def _pair(m: int, k: int, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(m, k, generator=gen, requires_grad=True)
    b = torch.randn(k, n, generator=gen, requires_grad=True)
    return a, b


@needs_onednn
@pytest.mark.parametrize("shape", [(37, 64, 11), (128, 300, 5), (1, 7, 1)])
def test_onednn_product_and_gradients_match_blas(shape: tuple[int, int, int]) -> None:
    a, b = _pair(*shape)
    weight = torch.randn(shape[0], shape[2])
    out = mm(a, b)
    (out * weight).sum().backward()
    grads = a.grad.clone(), b.grad.clone()  # type: ignore[union-attr]
    a.grad, b.grad = None, None
    ref = a @ b
    (ref * weight).sum().backward()
    assert out.dtype == torch.float32 and out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0], a.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[1], b.grad, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_onednn_gradient_matches_finite_differences() -> None:
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    b = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    # the route is float32 only: check the float32 gradient against a float64 difference
    a32 = a.float().requires_grad_(True)
    mm(a32, b.float()).square().sum().backward()
    eps, i, j = 1e-6, 2, 1
    bumped = a.clone()
    bumped[i, j] += eps
    numeric = ((bumped @ b).square().sum() - (a @ b).square().sum()) / eps
    assert a32.grad is not None
    assert abs(float(a32.grad[i, j]) - float(numeric)) < 1e-3 * max(1.0, abs(float(numeric)))


def _route_counter(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    original = products._dnn

    def counted(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return original(a, b)

    monkeypatch.setattr(products, "_dnn", counted)
    return calls


@needs_onednn
def test_route_only_float32_cpu_outside_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _route_counter(monkeypatch)
    a, b = _pair(8, 16, 4)
    mm(a, b)
    assert len(calls) == 1
    with torch.autocast("cpu", dtype=torch.bfloat16):  # PyTorch's own bf16 product
        out = mm(a, b)
    assert out.dtype == torch.bfloat16 and len(calls) == 1
    mm(a.double(), b.double())
    with use_onednn(False):
        mm(a, b)
    assert len(calls) == 1
    mm(a, b)  # the switch is restored after the block
    assert len(calls) == 2


def test_mm_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"\[M, K\] @ \[K, N\], got \(2, 3\) @ \(4, 5\)"):
        mm(torch.ones(2, 3), torch.ones(4, 5))


@needs_onednn
def test_compatibility_models_score_through_onednn(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _route_counter(monkeypatch)
    gen = torch.Generator().manual_seed(0)
    x, w, s = torch.randn(6, 20, generator=gen), torch.randn(20, 7), torch.randn(9, 7)
    torch.testing.assert_close(bilinear_scores(x, w, s), x @ w @ s.T, rtol=1e-5, atol=1e-5)
    assert len(calls) == 2
    latent = LatentBilinear(20, 7, n_maps=3)
    expected = torch.einsum("bd,kda->bka", x, latent.weight.detach()) @ s.T
    got = latent.map_scores(x, s)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert got.shape == (6, 3, 9)
    assert ALE(20, 7, 9).scores(x, s).shape == (6, 9)


def test_sequential_batches_are_views_and_shuffled_ones_copies() -> None:
    features = torch.arange(40, dtype=torch.float32).reshape(10, 4)
    labels = torch.arange(10)
    sequential = list(tensor_loader(features, labels, 4, shuffle=False))
    assert [b.features.shape[0] for b in sequential] == [4, 4, 2]
    for i, batch in enumerate(sequential):
        assert batch.features.data_ptr() == features[4 * i].data_ptr()  # read in place
        assert torch.equal(batch.labels, labels[4 * i : 4 * i + batch.labels.numel()])
    shuffled = list(tensor_loader(features, labels, 4, shuffle=True, seed=3))
    rows = torch.cat([b.labels for b in shuffled])
    assert sorted(rows.tolist()) == list(range(10)) and rows.tolist() != list(range(10))
    for batch in shuffled:  # gathered rows: the right ones
        assert torch.equal(batch.features, features[batch.labels])


_FAULTS = """
import ctypes, resource
{setup}
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
libc.memset.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t)
size = 20 << 20
faults = []
for _ in range(2):  # a step's buffer, allocated, written and freed twice
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffer = libc.malloc(size)
    libc.memset(buffer, 1, size)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    libc.free(buffer)
print(faults[1])
"""


def _refault_pages(setup: str) -> int:
    code = textwrap.dedent(_FAULTS.format(setup=setup))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc heap settings")
def test_retained_memory_is_reused_without_page_faults() -> None:
    """A freed 20 MB buffer is reused by the next allocation of its size instead of being
    handed back and faulted in again (5120 pages), as glibc's defaults do."""
    default = _refault_pages("")
    retained = _refault_pages(
        "from zsl.heap import retain_freed_memory\nassert retain_freed_memory()"
    )
    assert default > 4000, f"glibc's defaults no longer hand 20 MB back ({default} faults)"
    assert retained < 100, f"{retained} page faults re-allocating a retained 20 MB buffer"


def test_deterministic_trainer_skips_the_nan_fill_of_new_tensors() -> None:
    """trainer.deterministic keeps deterministic algorithms but not PyTorch's debugging
    fill of every new tensor with NaN (a write pass over each buffer a step allocates)."""
    from zsl.cli.compose import compose_spec
    from zsl.models.classical.ale import ALE
    from zsl.run.builders import make_trainer

    deterministic = torch.are_deterministic_algorithms_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory  # type: ignore[attr-defined]
    try:
        torch.utils.deterministic.fill_uninitialized_memory = True  # type: ignore[attr-defined]
        make_trainer(compose_spec(["trainer=cpu", "logger=csv"]).trainer, ALE, 1)
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.utils.deterministic.fill_uninitialized_memory  # type: ignore[attr-defined]
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.utils.deterministic.fill_uninitialized_memory = fill  # type: ignore[attr-defined]


@needs_onednn
def test_flop_counter_counts_onednn_products_as_mm() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    a, b = _pair(8, 16, 4)
    counts = []
    for product in (mm, torch.mm):
        with FlopCounterMode(display=False) as counter:
            product(a, b).sum().backward()
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] == 3 * 2 * 8 * 16 * 4  # forward and both gradients


def test_operands_with_other_strides_are_made_dense_first() -> None:
    """oneDNN runs operands that are neither row- nor column-major on a slow generic path:
    one map's slice of a stacked gradient is copied to rows first, the others are not."""
    stacked = torch.randn(16, 4, 12)[:, 1]  # row stride 48: neither layout
    assert not stacked.is_contiguous() and not stacked.t().is_contiguous()
    assert products._dense(stacked).is_contiguous()
    rows, columns = torch.randn(16, 12), torch.randn(12, 16).t()
    assert products._dense(rows) is rows and products._dense(columns) is columns
