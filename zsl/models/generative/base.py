"""The shared second stage of feature-generating GZSL models.

A generative model (f-CLSWGAN, CADA-VAE) learns, on seen classes only, to produce examples of
a class from its semantic vector. Before every validation/test pass
(:meth:`GenerativeZSL.on_eval_start`) it synthesises ``n_synth`` examples per unseen class
and trains a fresh softmax classifier over the protocol's universe (seen + unseen, global
class ids) on real seen + synthetic unseen examples. ``scores`` returns that classifier's
log-probabilities, so GZSL needs no calibration trick to reach unseen classes.

How many synthetic examples: ``n_synth`` per unseen class (the papers' rule), or, when
``synth_ratio`` is set, ``synth_ratio`` times as many synthetic unseen examples in total as
there are real seen examples in the classifier's training set (an addition, not in the
papers). The papers' rule makes the unseen share of the classifier's data depend on how many
seen classes the protocol has -- the validation protocol of CUB has 100 seen classes, the test
protocol 150 -- so a count selected on validation classes gives the short, not fully converged
classifier a smaller unseen share at test time and more seen-class bias. ``synth_ratio`` keeps
the share that validation selected. For the same reason ``cls_steps`` (optional, also an
addition) fixes the classifier's number of updates: with ``cls_epochs`` the larger trainval
set (and a larger ``synth_ratio``) means more updates, and a longer-trained classifier learns
the real-vs-synthetic gap and drifts to the seen classes.

Where the classifier may look: with ``cls_pca = k`` (optional, an addition, null = the papers)
the classifier sees only the top-``k`` principal components of the real seen training examples
(equivalently: its weight is constrained to their span, a rank-``k`` softmax). A generator
varies its outputs along few directions, and a classifier on all 4096 feature dimensions
learns to tell real from synthetic along the directions where only real features vary; real
unseen test images then look "real", hence seen. Measured on CUB VGG validation classes with
one trained f-CLSWGAN generator: GZSL H 42.3 on all dimensions, 44.7 on the top 256.

"Examples" live in the model's *classifier space*: image features for f-CLSWGAN, latent codes
for CADA-VAE (:meth:`GenerativeZSL.embed`, :meth:`GenerativeZSL.embed_seen`,
:meth:`GenerativeZSL.synthesize`).

ZSL (unseen classes only) uses the same GZSL classifier: the base takes the arg-max of its
scores among the unseen classes. No second, unseen-only classifier is trained; the softmax
over the universe, restricted to unseen classes, ranks them exactly as a classifier whose
seen logits were removed, and training one more classifier per evaluation would double the
evaluation cost for a number that is not what these models are for.

The classifier is deliberately kept out of the module tree (like the base's metrics), so a
checkpoint holds only the generator; it is retrained at evaluation time from the generator,
the class space and the datamodule's seen training features.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from zsl.models.base import ZSLModule


def fit_softmax_classifier(
    x: Tensor,
    y: Tensor,
    n_out: int,
    epochs: int,
    lr: float,
    batch_size: int,
    weight_decay: float = 0.0,
    generator: torch.Generator | None = None,
    max_steps: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression on in-memory tensors: Adam (betas 0.5, 0.999), shuffled
    mini-batches, a fixed number of epochs. Returns (weight [D, n_out], bias [n_out]) that
    apply to the *unscaled* inputs.

    The inputs are multiplied by one scalar so that their mean L1 norm is 1 (folded back into
    the returned weight). Adam moves every weight by about ``lr`` per step, so a logit then
    moves by at most about ``lr`` per step whatever the feature dimension and preprocessing:
    the same ``lr``/``epochs`` behave alike on 64-d latents, 256-d and 4096-d features.

    ``max_steps`` (optional) replaces ``epochs`` by a number of mini-batch updates (reshuffling
    at every pass), so the training budget does not grow with the size of the training set.
    """
    n, dim = x.shape
    scale = 1.0 / float(x.abs().sum(dim=1).mean().clamp_min(1e-12))
    weight = torch.zeros(dim, n_out, device=x.device, dtype=x.dtype, requires_grad=True)
    bias = torch.zeros(n_out, device=x.device, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.Adam([weight, bias], lr=lr, betas=(0.5, 0.999), weight_decay=weight_decay)
    device = generator.device if generator is not None else x.device
    steps = epochs * -(-n // batch_size) if max_steps is None else max_steps
    with torch.inference_mode(False), torch.enable_grad():
        while steps > 0:
            order = torch.randperm(n, generator=generator, device=device).to(x.device)
            for idx in order.split(batch_size)[:steps]:
                logits = torch.addmm(bias, x[idx] * scale, weight)
                loss = F.cross_entropy(logits, y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps -= 1
    return weight.detach() * scale, bias.detach()


def principal_basis(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Mean [E] and the ``k`` leading principal directions [E, k] (orthonormal columns,
    descending variance) of the rows of ``x`` [N, E], from the eigenvectors of the covariance."""
    if not 0 < k <= x.shape[1]:
        raise ValueError(
            f"cls_pca={k} principal components asked of {x.shape[1]}-d classifier inputs; "
            f"use 1..{x.shape[1]} or null"
        )
    mean = x.mean(dim=0)
    centred = x - mean
    _, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    return mean, vectors[:, -k:].flip(1).contiguous()


def check_second_stage(
    synth_ratio: float | None, cls_steps: int | None, cls_pca: int | None
) -> None:
    """Raise a ValueError for a non-positive optional second-stage setting (null is allowed)."""
    for name, value in (
        ("synth_ratio", synth_ratio),
        ("cls_steps", cls_steps),
        ("cls_pca", cls_pca),
    ):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be positive or null, got {value}")


class GenerativeZSL(ZSLModule):
    """Base of feature-generating models: the GZSL classifier on real seen + synthetic unseen.

    Subclasses build their generator in ``configure_models``, train it (``training_loss``) and
    implement :meth:`synthesize` (plus :meth:`embed` / :meth:`embed_seen` when the classifier
    space is not the feature space) and :meth:`generate_features`. Hyper-parameters read here:
    ``n_synth``, ``synth_ratio``, ``cls_epochs``, ``cls_steps``, ``cls_pca``, ``cls_lr``,
    ``cls_batch_size``, ``cls_weight_decay``, ``eval_seed`` and ``projection_plot``.
    """

    uses_unseen_semantics: ClassVar[bool] = True
    #: what the classifier is trained on (for plot titles): "features" or "latent codes"
    example_space: ClassVar[str] = "features"

    def __init__(self, feature_dim: int, n_attributes: int, n_classes: int) -> None:
        super().__init__(feature_dim, n_attributes, n_classes)
        # (weight [E, U], bias [U], universe ids [U]); outside the module tree on purpose
        self._classifier: tuple[Tensor, Tensor, Tensor] | None = None
        # (key, mean, basis) of the last cls_pca basis: the real seen features of f-CLSWGAN are
        # the same at every evaluation, so their PCA is computed once
        self._basis_cache: tuple[tuple[Any, ...], Tensor, Tensor] | None = None

    # -- hooks for subclasses ---------------------------------------------------------
    def synthesize(self, class_semantics: Tensor, n: int, generator: torch.Generator) -> Tensor:
        """``n`` synthetic examples in classifier space per row of ``class_semantics`` [K, A]
        -> [K * n, E], grouped by row (row ``k`` owns ``k*n .. k*n + n - 1``)."""
        raise NotImplementedError

    def embed(self, features: Tensor) -> Tensor:
        """Image features [B, D] -> classifier space [B, E] (the identity by default)."""
        return features

    def embed_seen(
        self, features: Tensor, labels: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """The real seen training examples of the classifier (default: the features as they are)."""
        return self.embed(features), labels

    def generate_features(
        self, attributes: Tensor, n: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """``n`` synthetic image features per attribute vector [K, A] -> [K * n, D]."""
        raise NotImplementedError

    # -- data ---------------------------------------------------------------------------
    def seen_training_data(self) -> tuple[Tensor, Tensor]:
        """Real seen-class training features and global labels, from the trainer's datamodule."""
        trainer = self._trainer
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        if dm is None or not hasattr(dm, "train_x"):
            raise RuntimeError(
                f"{type(self).__name__} needs the trainer's datamodule (a ZSLDataModule exposing "
                "train_x/train_y) to train its classifier on real seen features; pass "
                "datamodule=... to trainer.fit/validate/test"
            )
        x, y = dm.train_x.to(self.device), dm.train_y.to(self.device)
        self.to_local(y)  # raises if a training label is not a seen class
        return x, y

    def _eval_generator(self) -> torch.Generator:
        """A private RNG for evaluation, so evaluating never perturbs the training RNG stream."""
        return torch.Generator().manual_seed(int(self.hparams.eval_seed) + int(self.current_epoch))

    # -- the second stage -------------------------------------------------------------
    @torch.inference_mode(False)
    def fit_classifier(self) -> None:
        """Train the GZSL softmax classifier on the real seen training examples (from the
        datamodule, through :meth:`embed_seen`) + synthetic unseen ones."""
        gen = self._eval_generator()
        was_training = self.training
        self.eval()
        with torch.no_grad():
            x, y = self.seen_training_data()
            real, real_y = self.embed_seen(x, y, gen)
        self.train(was_training)
        self.train_classifier(real, real_y, gen)

    @torch.inference_mode(False)
    def train_classifier(self, real: Tensor, real_y: Tensor, generator: torch.Generator) -> None:
        """Fit the GZSL softmax classifier over the protocol's universe (global ids) on ``real``
        seen examples in classifier space [N, E] with global labels [N] plus
        :meth:`n_synth_per_class` synthetic examples per unseen class (``cls_pca``: on the top
        principal components of ``real``)."""
        hp = self.hparams
        was_training = self.training
        self.eval()
        with torch.no_grad():
            unseen = self.unseen_ids
            n_synth = self.n_synth_per_class(real.shape[0])
            synth = self.synthesize(self.unseen_semantics(), n_synth, generator)
            synth_y = unseen.repeat_interleave(n_synth)
        self.train(was_training)
        universe = torch.nonzero(self.universe_mask()).squeeze(1)
        inputs = torch.cat([real, synth]).detach().clone()
        targets = torch.searchsorted(universe, torch.cat([real_y, synth_y]))
        self.check_finite(synth, "synthetic examples")
        rank = hp.get("cls_pca")
        if rank is not None:
            mean, basis = self.classifier_basis(real, int(rank))
            inputs = (inputs - mean) @ basis
        weight, bias = fit_softmax_classifier(
            inputs,
            targets,
            universe.numel(),
            int(hp.cls_epochs),
            float(hp.cls_lr),
            int(hp.cls_batch_size),
            float(hp.cls_weight_decay),
            generator,
            None if hp.get("cls_steps") is None else int(hp.cls_steps),
        )
        if rank is not None:  # fold the projection in: (x - mean) @ basis @ w + b
            weight = basis @ weight
            bias = bias - mean @ weight
        self._classifier = (weight, bias, universe)

    def classifier_basis(self, real: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Mean and top-``k`` principal directions of the real seen classifier inputs (cached
        while the inputs and ``k`` stay the same)."""
        key = (tuple(real.shape), k, float(real.sum()), float(real.pow(2).sum()))
        if self._basis_cache is None or self._basis_cache[0] != key:
            self._basis_cache = (key, *principal_basis(real, k))
        return self._basis_cache[1], self._basis_cache[2]

    def n_synth_per_class(self, n_real_seen: int) -> int:
        """Synthetic examples per unseen class: ``n_synth``, or with ``synth_ratio`` set
        ``round(synth_ratio * n_real_seen / n_unseen_classes)`` (at least 1)."""
        ratio = self.hparams.get("synth_ratio")
        if ratio is None:
            return int(self.hparams.n_synth)
        return max(1, round(float(ratio) * n_real_seen / self.unseen_ids.numel()))

    def on_eval_start(self) -> None:
        self.fit_classifier()

    def scores(self, features: Tensor, class_semantics: Tensor) -> Tensor:
        """Log-probabilities of the GZSL classifier; ``-inf`` for classes outside the universe.

        The classifier is trained on the installed class space, so ``class_semantics`` must be
        ``self.semantics`` (the base always passes it)."""
        if self._classifier is None:
            raise RuntimeError(
                f"{type(self).__name__}: the GZSL classifier is trained at the start of each "
                "validation/test pass (on_eval_start); call fit_classifier() first"
            )
        if class_semantics.shape != self.semantics.shape:
            raise ValueError(
                f"{type(self).__name__} scores the classes of its class space "
                f"{tuple(self.semantics.shape)}, got semantics {tuple(class_semantics.shape)}"
            )
        weight, bias, universe = self._classifier
        logp = torch.log_softmax(torch.addmm(bias, self.embed(features), weight), dim=1)
        out = logp.new_full((features.shape[0], self.n_classes), float("-inf"))
        out[:, universe] = logp
        return out

    # -- checkpoints ------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the model class so :func:`zsl.cli.generate.load_generator` can rebuild it."""
        super().on_save_checkpoint(checkpoint)
        checkpoint["zsl_model_class"] = f"{type(self).__module__}:{type(self).__qualname__}"

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resize the class-id buffers to the stored ones before the state dict is loaded."""
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("state_dict", {})
        for name in ("seen_ids", "unseen_ids"):
            if name in state:
                setattr(self, name, torch.empty_like(state[name]))

    # -- test-time artefacts ----------------------------------------------------------
    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        if self.hparams.projection_plot and self.trainer.is_global_zero:  # one file under DDP
            self.save_projection_plot()

    def run_dir(self) -> Path:
        """Where test-time artefacts go: the logger's save_dir, else the trainer's root dir."""
        logger = self.logger
        save_dir = getattr(logger, "save_dir", None) if logger is not None else None
        return Path(save_dir if save_dir else self.trainer.default_root_dir)

    @torch.no_grad()
    def save_projection_plot(self, n_classes: int = 5, n_per_class: int = 100) -> Path | None:
        """PCA plot of real vs synthetic examples of a few unseen classes, saved into the run
        directory (and logged as an image to W&B)."""
        from zsl.reporting.plots import plot_feature_projection

        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "eval_x"):
            return None
        eval_y = dm.eval_y
        classes = [c for c in self.unseen_ids.tolist() if bool((eval_y == c).any())][:n_classes]
        if not classes:
            return None
        gen = torch.Generator().manual_seed(int(self.hparams.eval_seed))
        real, real_y = [], []
        for c in classes:
            idx = torch.nonzero(eval_y == c).squeeze(1)[:n_per_class]
            real.append(self.embed(dm.eval_x[idx].to(self.device)))
            real_y.append(torch.full((idx.numel(),), c, dtype=torch.long))
        ids = torch.tensor(classes, device=self.device)
        synth = self.synthesize(self.semantics[ids], n_per_class, gen)
        synth_y = ids.cpu().repeat_interleave(n_per_class)
        names = getattr(getattr(dm, "class_space", None), "class_names", None)
        path = self.run_dir() / f"{type(self).__name__.lower()}_projection.png"
        plot_feature_projection(
            torch.cat(real).cpu(),
            torch.cat(real_y),
            synth.cpu(),
            synth_y,
            path,
            class_names=names,
            title=f"{type(self).__name__}: real vs synthetic {self.example_space}, unseen classes",
        )
        log_image = getattr(self.logger, "log_image", None)
        if log_image is not None and type(self.logger).__name__ == "WandbLogger":
            log_image(key="test/feature_projection", images=[str(path)])
        return path


def linear_warmup(epoch: float, start: float, end: float) -> float:
    """0 before ``start``, 1 from ``end`` on, linear in between (CADA-VAE's warm-up)."""
    if end <= start:
        return 1.0 if epoch >= start else 0.0
    return min(max((epoch - start) / (end - start), 0.0), 1.0)


def check_positive(**values: float) -> None:
    """Raise a ValueError naming every non-positive (or NaN) value."""
    bad = [f"{k}={v}" for k, v in values.items() if not (v > 0) or math.isnan(v)]
    if bad:
        raise ValueError(f"must be positive: {', '.join(bad)}")
