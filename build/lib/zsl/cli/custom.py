"""``zsl-custom`` (``python -m zsl.cli.custom``): an image folder, a class x attribute CSV and
a list of unseen classes -> a complete xlsa17 dataset folder (see :mod:`zsl.data.custom`)."""

from __future__ import annotations

from zsl.data.custom import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
