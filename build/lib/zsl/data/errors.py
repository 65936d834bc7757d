"""Errors raised for bad input data: each names the file, the key and what is wrong."""

from __future__ import annotations


class DataError(ValueError):
    """Invalid or inconsistent dataset input (missing file/key, bad shapes, split leakage)."""

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        self.problem = problem
        super().__init__(f"{where}: {problem}")
