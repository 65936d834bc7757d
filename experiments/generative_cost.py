"""Per-iteration cost of the feature-generating models at CUB sizes (no data needed).

Times, on random tensors of the real shapes (4096-d VGG fc7 features, 312 attributes, 150
seen / 50 unseen classes, batch 128), with the shipped configs' network sizes:

* one training iteration: CADA-VAE (forward + backward + Adam step of both VAEs),
  f-CLSWGAN (``n_critic`` critic steps with the gradient penalty + one generator step), and
  SE-GZSL, f-VAEGAN and tf-VAEGAN (their ``training_loss``: every optimiser step of one batch);
* one evaluation: synthesising the unseen examples and fitting the GZSL softmax classifier
  (what every validation epoch and the final test pay on top of training).

``python experiments/generative_cost.py [--threads N] [--repeats R] [--precision P]`` prints a
Markdown table (median seconds; the machine is named in the header). ``--precision bf16-mixed``
runs each training iteration under bfloat16 autocast, as ``trainer=cpu_bf16`` does; an
evaluation stays float32 there (the second stage runs in the epoch hooks, outside the
precision plugin's step context), and so it does here. Wall time of a whole run depends on the
epochs selected and is reported by ``train.py`` itself (``wall_time_s`` in ``metrics.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time
from collections.abc import Callable

import torch
from omegaconf import OmegaConf

from zsl.conf import CONFIG_DIR
from zsl.data.types import ZSLBatch
from zsl.models.generative.base import GenerativeZSL
from zsl.models.generative.cadavae import CADAVAE
from zsl.models.generative.clswgan import CLSWGAN, clswgan_iteration
from zsl.models.generative.second_stage import within_class_residuals  # noqa: E402
from zsl.models.generative.segzsl import SEGZSL
from zsl.models.generative.tfvaegan import TFVAEGAN
from zsl.models.generative.vaegan import FVAEGAN

D, A, SEEN, UNSEEN, BATCH, N_REAL = 4096, 312, 150, 50, 128, 7057
#: the context of every training iteration (``--precision``)
STEP_CONTEXT: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def params(name: str) -> dict:
    cfg = OmegaConf.load(CONFIG_DIR / "model" / f"{name}.yaml")
    out = OmegaConf.to_container(cfg.params, resolve=True)
    return out  # type: ignore[return-value]


def build(cls: type, name: str) -> GenerativeZSL:
    model = cls(D, A, SEEN + UNSEEN, **params(name))
    model.seen_ids = torch.arange(SEEN)
    model.unseen_ids = torch.arange(SEEN, SEEN + UNSEEN)
    model.semantics = torch.rand(SEEN + UNSEEN, A)
    return model  # type: ignore[no-any-return]


def costs(model: GenerativeZSL, step: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median seconds of one training ``step`` and of one evaluation's overhead: embed the real
    seen features, synthesise the unseen examples and fit the GZSL classifier (with
    ``cls_pca`` the principal components of the fixed real features are cached after the first
    evaluation, as in training; with ``synth_residual`` their within-class deviations are
    computed at every evaluation, as in training)."""
    real_x, real_y = torch.rand(N_REAL, D), torch.randint(0, SEEN, (N_REAL,))

    def evaluate() -> None:
        with torch.no_grad():
            real, labels = model.embed_seen(real_x, real_y, torch.Generator().manual_seed(0))
            residuals = None  # synth_residual: real seen deviations, as fit_classifier takes
            if model.second_stage.synth_residual is not None:
                residuals = within_class_residuals(real_x, real_y)
        model.train_classifier(real, labels, torch.Generator().manual_seed(0), residuals)

    def timed_step() -> None:
        with STEP_CONTEXT():
            step()

    return median_time(timed_step, repeats), median_time(evaluate, max(1, repeats // 10), 1)


def cadavae_costs(repeats: int) -> tuple[float, float]:
    model = build(CADAVAE, "cadavae")
    opt = model.configure_optimizers()
    x, sem = torch.rand(BATCH, D), torch.rand(BATCH, A)

    def step() -> None:
        terms = model.vae_losses(x, sem)
        loss = terms["recon"] + terms["kl"] + terms["cross"] + terms["distance"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return costs(model, step, repeats)


def clswgan_costs(repeats: int) -> tuple[float, float]:
    model = build(CLSWGAN, "clswgan")
    opt_g, opt_d = model.configure_optimizers()
    x, sem = torch.rand(BATCH, D), torch.rand(BATCH, A)
    labels = torch.randint(0, SEEN, (BATCH,))
    hp = model.hparams

    def step() -> None:
        clswgan_iteration(
            model.generator,
            model.critic,
            opt_g,
            opt_d,
            model.seen_logits,
            x,
            sem,
            labels,
            hp.n_critic,
            hp.gp_weight,
            hp.cls_weight,
        )
        model.update_averages()  # gen_ema, as in training

    return costs(model, step, repeats)


def manual_costs(cls: type, name: str, repeats: int) -> tuple[float, float]:
    """A model trained by its own ``training_loss`` with Lightning's manual optimisation: the
    optimisers, ``manual_backward`` and logging that a Trainer would attach, attached here."""
    model = build(cls, name)
    opts = model.configure_optimizers()
    model.optimizers = lambda use_pl_optimizer=True: opts  # type: ignore[method-assign]
    model.manual_backward = lambda loss, *a, **k: loss.backward()  # type: ignore[method-assign]
    model.log_dict = lambda *a, **k: None  # type: ignore[method-assign]
    model.generator.init_output_bias(torch.rand(D))
    labels = torch.randint(0, SEEN, (BATCH,))
    batch = ZSLBatch(torch.rand(BATCH, D), labels)
    seen_semantics = model.semantics[:SEEN]

    def step() -> None:
        model.training_loss(batch, labels, seen_semantics)
        model.update_averages()  # what the base does after every training step (gen_ema)

    return costs(model, step, repeats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--precision", choices=["32-true", "bf16-mixed"], default="32-true")
    args = p.parse_args()
    if args.precision == "bf16-mixed":
        global STEP_CONTEXT
        STEP_CONTEXT = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    steps_per_epoch = -(-N_REAL // BATCH)
    print(
        f"machine: {platform.processor() or platform.machine()}, {args.threads} torch threads, "
        f"torch {torch.__version__}, {args.precision}; CUB sizes (D={D}, A={A}, "
        f"{SEEN}+{UNSEEN} classes, "
        f"batch {BATCH}, {steps_per_epoch} iterations per trainval epoch)\n"
    )
    print("| model | s / training iteration | s / trainval epoch (training) | s / evaluation |")
    print("| --- | --- | --- | --- |")
    models: list[tuple[str, Callable[[int], tuple[float, float]]]] = [
        ("cadavae", cadavae_costs),
        ("clswgan", clswgan_costs),
    ]
    for name, cls in (("segzsl", SEGZSL), ("fvaegan", FVAEGAN), ("tfvaegan", TFVAEGAN)):
        models.append((name, lambda r, cls=cls, name=name: manual_costs(cls, name, r)))
    for name, fn in models:
        step, evaluation = fn(args.repeats)
        print(f"| {name} | {step:.4f} | {step * steps_per_epoch:.1f} | {evaluation:.2f} |")


if __name__ == "__main__":
    main()
