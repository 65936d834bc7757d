"""Train and evaluate a ZSL model: ``python train.py data=cub model=ale seed=1``."""

from zsl.cli.train import main

if __name__ == "__main__":
    main()
