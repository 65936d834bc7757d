"""Data: xlsa17 loader, synthetic benchmark, protocol splits, datamodule."""
