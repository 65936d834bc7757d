"""``zsl-extract`` (``python -m zsl.cli.extract``): image features and CLIP class-name
semantics in the xlsa17 format; see :mod:`zsl.features.extract` for the options."""

from __future__ import annotations

from zsl.features.extract import run_cli as main

__all__ = ["main"]

if __name__ == "__main__":
    main()
