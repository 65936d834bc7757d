"""Builders of the engine: a run config -> data, datamodule, model and trainer.

Each builder takes the composed config (``zsl/conf/train.yaml`` and its groups) and nothing
else, so a notebook can call them as the CLI does. Models declare the trainer arguments they
need (:meth:`zsl.models.base.ZSLModule.trainer_arguments`); the config supplies the rest.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import Logger

from zsl import dist
from zsl.data.datamodule import ZSLDataModule
from zsl.data.formats import read_dataset
from zsl.data.types import ProtocolName, ZSLData
from zsl.errors import ConfigError
from zsl.features.prepare import prepare_features
from zsl.models.base import ZSLModule
from zsl.run.progress import quiet_lightning
from zsl.run.spec import RunSpec, TrainerSpec

_TRAINERS_BUILT = False


def load_data(spec: RunSpec, protocol: ProtocolName) -> ZSLData:
    """The benchmark of ``spec.data`` for one protocol (the synthetic one is generated on first
    use), read through the format registry, then prepared as the model class asks
    (:func:`zsl.features.prepare.prepare_features` with the class's ``feature_preparation``:
    CLIP swaps in image/text embeddings)."""
    d = spec.data
    root = d.root
    if d.synthetic is not None:
        from zsl.data.synthetic import SyntheticSpec, ensure_synthetic, scratch_synthetic

        synthetic = SyntheticSpec(**d.synthetic)
        if root is None:  # a temporary folder of this process: nothing left in the cwd
            root = str(scratch_synthetic(synthetic, d.name, d.feature_file))
        else:
            ensure_synthetic(Path(root) / d.name, synthetic, d.feature_file)
    elif root is None:
        raise ConfigError(f"data.root is not set: the folder that holds {d.name}/")
    data = read_dataset(
        d.format,
        root,
        d.name,
        d.feature_file,
        protocol,
        d.semantics_key,
        d.exclude_test_from_val,
    )
    step = spec.model.cls.feature_preparation
    return prepare_features(step, data, dict(spec.model.params), d.options())


def make_datamodule(
    spec: RunSpec, protocol: ProtocolName, data: ZSLData | None = None
) -> ZSLDataModule:
    """The datamodule of one protocol, set up (split, preprocessing fitted on training data)."""
    d, model = spec.data, spec.model
    dm = ZSLDataModule(
        name=d.name,
        root=d.root,
        feature_file=d.feature_file,
        protocol=protocol,
        preprocess=d.preprocess,
        # a model config may fix its training batch (a paper's recipe): it wins over data's
        batch_size=0 if model.cls.closed_form else int(model.batch_size or d.batch_size),
        eval_batch_size=int(d.eval_batch_size),
        val_seen_fraction=float(d.val_seen_fraction),
        split_seed=int(d.split_seed),
        data=data if data is not None else load_data(spec, protocol),
        min_steps_per_epoch=int(model.min_steps_per_epoch or 0),
    )
    dm.setup()
    return dm


def make_model(spec: RunSpec, dm: ZSLDataModule, params: dict[str, Any]) -> ZSLModule:
    """The run's model class built for the datamodule's shapes with ``params``, bound to it."""
    space = dm.class_space
    try:
        model = spec.model.cls(space.feature_dim, space.n_attributes, space.n_classes, **params)
    except ValueError as err:  # the model's own checks of its hyper-parameters
        raise ConfigError(f"model.params ({spec.model.name}): {err}") from err
    model.bind(dm)
    return model


def make_trainer(
    trainer_spec: TrainerSpec,
    model_cls: type[ZSLModule],
    max_epochs: int,
    logger: Logger | bool = False,
    validate: bool = True,
    callbacks: list[Callback] | None = None,
    root_dir: Path | None = None,
) -> pl.Trainer:
    """A Lightning trainer from the run's trainer settings and the model's own trainer
    arguments."""
    ts = trainer_spec  # typed settings
    callbacks = list(callbacks or [])
    kwargs: dict[str, Any] = {
        "max_epochs": max_epochs,
        "accelerator": ts.accelerator,
        "strategy": dist.make_strategy(str(ts.strategy)),
        "devices": ts.devices,
        "num_nodes": int(ts.num_nodes),
        # the datamodule shards every batch itself (ShardedBatchSampler)
        "use_distributed_sampler": False,
        "precision": ts.precision,
        "deterministic": ts.deterministic,
        "logger": logger,
        "callbacks": callbacks,
        # only our own ModelCheckpoints (Lightning would add a default one otherwise)
        "enable_checkpointing": any(isinstance(c, ModelCheckpoint) for c in callbacks),
        # a bar per fit is for a terminal; a log file gets the per-point lines only
        "enable_progress_bar": bool(ts.enable_progress_bar) and sys.stdout.isatty(),
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 1.0 if validate else 0,
        "log_every_n_steps": int(ts.log_every_n_steps),
        "gradient_clip_val": ts.gradient_clip_val,
        "default_root_dir": str(root_dir) if root_dir else None,
    }
    kwargs.update(model_cls.trainer_arguments())
    global _TRAINERS_BUILT
    quiet_lightning()  # Lightning's banners (GPU/TPU available, tips): the run says what ran
    try:
        trainer = pl.Trainer(**kwargs)
    except ValueError as err:  # Lightning's checks of its arguments (e.g. precision)
        raise ConfigError(f"trainer: {err}") from err
    if ts.deterministic:
        _skip_nan_fill()
    if not _TRAINERS_BUILT and str(ts.precision).startswith("bf16"):
        _warn_emulated_bf16(trainer)
    _TRAINERS_BUILT = True
    return trainer


def _skip_nan_fill() -> None:
    """Deterministic algorithms without PyTorch's debugging fill: under
    ``torch.use_deterministic_algorithms(True)`` (Lightning's ``deterministic=True``) every
    new tensor is first filled with NaN, so that a kernel reading memory it never wrote shows
    up. That is one more pass over every buffer a step allocates, and the first touch of every
    fresh page (on a bfloat16 DeViSE fit on CUB: a 4096 x 312 fill per grid point and step, 70%
    of the run's page faults). Kernels write their outputs whole, so results do not change."""
    import torch  # noqa: PLC0415

    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]


def _warn_emulated_bf16(trainer: pl.Trainer) -> None:
    """One line when bfloat16 products would run on a CPU without bfloat16 instructions
    (oneDNN emulates them there, slower than float32)."""
    if trainer.strategy.root_device.type != "cpu" or not dist.is_global_zero():
        return
    import torch  # noqa: PLC0415

    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if check is not None and not check():
        print(
            "warning: trainer.precision=bf16-mixed on a CPU without AVX512-BF16/AMX: bfloat16 "
            "products are emulated and slower than float32 (trainer.precision=32-true)",
            file=sys.stderr,
            flush=True,
        )
