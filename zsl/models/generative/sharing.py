"""Evaluation work shared by the grid points of one shared fit (:class:`zsl.run.stacked.SharedFit`).

In a validation pass of a shared fit, every point takes the host's weights (and its own
generator averages, if it keeps any) and trains its own second-stage classifier. What the
classifier is trained on is often the same for several of them: points with the same weights
embed the same real seen examples and the same evaluation batches, and those that also agree on
the synthetic counts and the model's synthesis parameters draw the same synthetic examples from
the same evaluation RNG. The points with the same weights share one dict,
:attr:`zsl.models.base.ZSLModule.shared_memo`, for the pass; the first point to need a result
computes it and leaves it there, with the RNG state and the buffers the computation left, and
the others take all three, so that each point's classifier -- and history -- is exactly the one
it would have computed alone (``tests/unit/test_stacked.py`` compares them float for float).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from zsl.models.base import BATCH_MEMO, MEMO_POINTS
from zsl.models.generative.second_stage import SoftmaxFit

__all__ = ["other_points", "shared_batch_result", "shared_fit", "shared_result"]

T = TypeVar("T")


def other_points(memo: dict[str, Any], module: nn.Module, alike: Callable[[Any], bool]) -> int:
    """How many points of ``memo`` besides ``module`` satisfy ``alike``."""
    return sum(1 for point in memo.get(MEMO_POINTS, ()) if point is not module and alike(point))


def shared_result(
    memo: dict[str, Any] | None,
    key: str,
    module: nn.Module,
    generator: torch.Generator,
    compute: Callable[[], T],
    others: int,
) -> T:
    """``compute()``, which draws from ``generator`` and may set ``module``'s buffers. With a
    ``memo``: the first call leaves the result there for ``others`` more points, which take
    it with the generator state and buffers it left (the last of them removes it)."""
    if memo is None:
        return compute()
    saved = _take(memo, key, generator)
    if saved is None:
        value = compute()
        if others > 0:
            buffers = {name: b.detach().clone() for name, b in module.named_buffers()}
            _leave(memo, key, (value, buffers), generator, others)
        return value
    value, buffers = saved
    for name, buffer in module.named_buffers():
        buffer.copy_(buffers[name])
    return value  # type: ignore[no-any-return]


def shared_fit(
    memo: dict[str, Any] | None,
    key: str,
    steps: int,
    generator: torch.Generator,
    new_fit: Callable[[], SoftmaxFit],
    pending: Callable[[], list[int]],
) -> tuple[Tensor, Tensor]:
    """The (weight, bias) of a classifier fit (``new_fit()``, drawing from ``generator``)
    after ``steps`` updates.

    With a ``memo``, the fits of one ``key`` are one sequence of updates shared by the points
    of the pass (a point's updates do not depend on their number, :class:`SoftmaxFit`), so
    every point's classifier is the one it would train alone. ``pending()`` gives the update
    counts of the points of the same ``key`` still to come. On its way to ``steps`` a fit
    leaves the result at each smaller pending count (with the generator state there); at the
    end it leaves itself for the pending points with as many updates or more, which take the
    result or continue the fit instead of starting again."""
    if memo is None:
        fit = new_fit()
        fit.run(steps)
        return fit.result()
    done = _take(memo, f"{key} at {steps}", generator)
    if done is not None:
        return done  # type: ignore[no-any-return]
    saved = memo.get(f"{key} fit")
    if saved is not None and saved[0].done <= steps:
        fit = _take(memo, f"{key} fit", generator)
        fit = fit.copy(generator) if f"{key} fit" in memo else fit
        fit.generator = generator
    else:
        fit = new_fit()
    counts = pending()
    for k in sorted(set(counts)):
        if fit.done < k < steps:
            fit.run(k - fit.done)
            _leave(memo, f"{key} at {k}", fit.result(), generator, counts.count(k))
    fit.run(steps - fit.done)
    _leave(memo, f"{key} fit", fit, generator, sum(1 for k in counts if k >= steps))
    return fit.result()


def _leave(
    memo: dict[str, Any], key: str, value: Any, generator: torch.Generator, points: int
) -> None:
    """Leave ``value`` under ``key`` for ``points`` more points (none: nothing is left), with
    ``generator``'s state now."""
    if points > 0:
        memo[key] = (value, generator.get_state(), points)


def _take(memo: dict[str, Any], key: str, generator: torch.Generator) -> Any:
    """The value left under ``key`` (None if none), with the generator state it was left
    with; the entry goes when the last of the points it was left for has taken it."""
    saved = memo.get(key)
    if saved is None:
        return None
    value, state, left = saved
    generator.set_state(state)
    if left > 1:
        memo[key] = (value, state, left - 1)
    else:
        del memo[key]
    return value


def shared_batch_result(
    memo: dict[str, Any] | None, rows: Tensor, compute: Callable[[Tensor], Tensor]
) -> Tensor:
    """``compute(rows)`` of rows of the current evaluation batch, once per ``memo`` (each
    point's pass splits the batch anew, so the rows are matched by their memory; holding
    them keeps that memory theirs until the next batch clears the entry)."""
    if memo is None:
        return compute(rows)
    done: list[tuple[Tensor, Tensor]] = memo.setdefault(BATCH_MEMO, [])
    for seen, result in done:
        if (
            seen.data_ptr() == rows.data_ptr()
            and seen.shape == rows.shape
            and seen.stride() == rows.stride()
            and seen.dtype == rows.dtype
            and seen.device == rows.device
        ):
            return result
    result = compute(rows)
    done.append((rows, result))
    return result
