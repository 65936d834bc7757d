"""zsl: attribute-based zero-shot learning on PyTorch Lightning."""

__version__ = "0.1.0"
