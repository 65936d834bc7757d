"""SJE: Evaluation of Output Embeddings for Fine-Grained Image Classification (Akata et al.,
CVPR 2015, https://arxiv.org/abs/1409.8403). Bilinear compatibility F(x, y) = x^T W phi(y)
trained with the structured max-margin loss max_y' (Delta(y, y') + F(x, y')) - F(x, y)."""

from __future__ import annotations

from zsl.models.classical.ale import Bilinear
from zsl.models.classical.components import RankingModel
from zsl.models.classical.losses import structured_hinge_loss


class SJE(RankingModel):
    """Structured Joint Embedding (Akata et al., CVPR 2015): only the most violating class
    of each image contributes to the loss."""

    loss = staticmethod(structured_hinge_loss)

    def __init__(
        self,
        feature_dim: int,
        n_attributes: int,
        n_classes: int,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        margin: float = 1.0,
    ) -> None:
        super().__init__(feature_dim, n_attributes, n_classes)

    def configure_models(self) -> None:
        self.net = Bilinear(self.feature_dim, self.n_attributes)
