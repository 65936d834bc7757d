"""``python -m zsl [group=option ...] [key=value ...]``: the same as ``python train.py``."""

from zsl.cli.train import main

if __name__ == "__main__":
    main()
