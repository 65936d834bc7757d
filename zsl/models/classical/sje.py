"""SJE: Evaluation of Output Embeddings for Fine-Grained Image Classification (Akata et al.,
CVPR 2015, https://arxiv.org/abs/1409.8403). Bilinear compatibility F(x, y) = x^T W phi(y)
trained with the structured max-margin loss max_y' (Delta(y, y') + F(x, y')) - F(x, y)."""

from __future__ import annotations

from zsl.models.classical.bilinear import BilinearRanking
from zsl.models.classical.losses import structured_hinge_loss


class SJE(BilinearRanking):
    """Structured Joint Embedding (Akata et al., CVPR 2015): only the most violating class
    of each image contributes to the loss (margin 1)."""

    loss = staticmethod(structured_hinge_loss)
