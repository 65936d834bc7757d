"""Using a trained model: ``zsl-predict`` classifies features into the checkpoint's classes
and into new classes given only by their semantic vectors; ``zsl-eval`` repeats a run's test
evaluation from its ``model.ckpt``, to the digit; ``trainer.predict`` gives the same scores."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import UNSEEN, tiny_cli_args, write_xlsa17

from zsl.cli.evaluate import main as eval_main
from zsl.cli.predict import main as predict_main
from zsl.cli.train import run
from zsl.models.checkpoint import load_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    """(run directory, raw test-unseen features .npy, their 0-based labels) of a tiny ALE run."""
    base = tmp_path_factory.mktemp("trained")
    ds = write_xlsa17(base / "data")
    run_dir = base / "run"
    run(tiny_cli_args(ds.root, run_dir, "trainer.max_epochs=6"))
    rows = np.asarray(ds.splits["test_unseen_loc"]).ravel().astype(np.int64) - 1
    np.save(base / "unseen.npy", ds.features[rows].astype(np.float32))
    np.save(base / "att.npy", np.asarray(ds.splits["att"]).T)
    return run_dir, base / "unseen.npy", ds.labels0[rows]


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_zsl_predict_classifies_into_new_classes(
    trained: tuple[Path, Path, np.ndarray], tmp_path: Path
) -> None:
    """Two classes absent from the checkpoint, named only by semantic vectors (those of unseen
    classes 8 and 9, scaled: they are L2-normalised like the model's): with ``--only-new`` the
    rows of classes 8 and 9 go to them exactly as the model ranks 8 against 9."""
    run_dir, features, labels = trained
    att = np.load(features.parent / "att.npy")
    table = tmp_path / "new.csv"
    header = ",".join(["name", *(f"a{i}" for i in range(att.shape[1]))])
    lines = [f"novel_{c},{','.join(str(3.0 * v) for v in att[c])}" for c in UNSEEN[:2]]
    table.write_text("\n".join([header, *lines]) + "\n")
    out = tmp_path / "pred.csv"
    argv = ["--checkpoint", str(run_dir / "model.ckpt"), "--features", str(features)]
    predict_main([*argv, "--classes", str(table), "--only-new", "--top-k", "1", "--out", str(out)])
    got = {int(r["row"]): r["class"] for r in read_rows(out)}
    assert {r["split"] for r in read_rows(out)} == {"new"}

    model = load_model(run_dir / "model.ckpt")
    x = torch.from_numpy(np.load(features))
    x = x / x.norm(dim=1, keepdim=True)  # the run's data.preprocess=l2
    with torch.no_grad():
        pair = model.scores(x, model.semantics)[:, list(UNSEEN[:2])]
    expected = {i: f"novel_{UNSEEN[int(j)]}" for i, j in enumerate(pair.argmax(1).tolist())}
    assert got == expected
    mine = [i for i, y in enumerate(labels) if y in UNSEEN[:2]]
    right = sum(got[i] == f"novel_{labels[i]}" for i in mine)
    assert right >= len(mine) / 2  # the rows of 8 and 9 are told apart at least as a coin toss

    # the checkpoint's own classes plus the new ones: top-3 over all of them
    predict_main([*argv, "--classes", str(table), "--top-k", "3", "--out", str(out)])
    rows = read_rows(out)
    assert len(rows) == 3 * len(labels) and {r["split"] for r in rows} <= {"seen", "unseen", "new"}


def test_zsl_predict_refuses_bad_input_in_one_line(
    trained: tuple[Path, Path, np.ndarray], tmp_path: Path
) -> None:
    run_dir, features, _ = trained
    argv = ["--checkpoint", str(run_dir / "model.ckpt")]
    np.save(tmp_path / "short.npy", np.ones((2, 5), dtype=np.float32))
    with pytest.raises(SystemExit) as err:
        predict_main([*argv, "--features", str(tmp_path / "short.npy")])
    assert str(err.value.code) == (
        "error: features: 5-d features; the model was trained on 16-d ones"
    )
    (tmp_path / "bad.csv").write_text("wolf,1,2\n")
    with pytest.raises(SystemExit) as err:
        predict_main([*argv, "--features", str(features), "--classes", str(tmp_path / "bad.csv")])
    assert str(err.value.code) == (
        "error: classes: the new classes have 2-d semantic vectors; the model was trained "
        "with 6-d ones"
    )


def test_zsl_eval_reproduces_the_runs_test_metrics(
    trained: tuple[Path, Path, np.ndarray], tmp_path: Path
) -> None:
    run_dir, _, _ = trained
    eval_main(["--checkpoint", str(run_dir / "model.ckpt"), "--out", str(tmp_path / "eval")])
    ran = json.loads((run_dir / "metrics.json").read_text())
    again = json.loads((tmp_path / "eval" / "metrics_eval.json").read_text())
    keys = ("zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h", "gzsl_u_cal", "gzsl_s_cal", "gzsl_h_cal")
    assert {k: again[k] for k in (*keys, "ausuc", "gamma")} == {
        k: ran[k] for k in (*keys, "ausuc", "gamma")
    }
    assert again["per_class_accuracy"] == ran["per_class_accuracy"]
    assert (tmp_path / "eval" / "test_per_class_accuracy.png").is_file()


def test_trainer_predict_gives_the_calibrated_scores(
    trained: tuple[Path, Path, np.ndarray],
) -> None:
    run_dir, features, _ = trained
    model = load_model(run_dir / "model.ckpt")
    model.prepare_inference()
    x = torch.from_numpy(np.load(features))
    x = x / x.norm(dim=1, keepdim=True)
    loader = torch.utils.data.DataLoader(x, batch_size=7)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, accelerator="cpu")
    scores = torch.cat(trainer.predict(model, loader))  # type: ignore[arg-type]
    raw = model.all_scores(x)
    gamma = float(model.gamma)
    assert not np.isnan(gamma)
    expected = raw.clone()
    expected[:, model.seen_ids] -= gamma
    torch.testing.assert_close(scores, expected)


def test_a_generator_predicts_new_classes_from_its_run(tmp_path: Path) -> None:
    """f-CLSWGAN trains its final classifier for the new class set on the run's real seen
    features (found through the run's config.yaml)."""
    ds = write_xlsa17(tmp_path / "data")
    run_dir = tmp_path / "run"
    fast = ["model=clswgan", "trainer.max_epochs=2", "model.search.grid={}"]
    fast += ["model.params.pretrain_epochs=1", "model.params.second_stage.cls_steps=20"]
    run(tiny_cli_args(ds.root, run_dir, *fast))
    rows = np.asarray(ds.splits["test_unseen_loc"]).ravel().astype(np.int64) - 1
    np.save(tmp_path / "x.npy", ds.features[rows].astype(np.float32))
    att = np.asarray(ds.splits["att"]).T
    np.save(tmp_path / "new.npy", att[list(UNSEEN[:2])] * 2.0)
    out = tmp_path / "pred.csv"
    predict_main(
        ["--checkpoint", str(run_dir / "model.ckpt"), "--features", str(tmp_path / "x.npy")]
        + ["--classes", str(tmp_path / "new.npy"), "--only-new", "--out", str(out)]
    )
    found = read_rows(out)
    assert {r["class"] for r in found} == {"new_1", "new_2"}
    assert len(found) == 2 * rows.size


def test_a_run_records_its_provenance_and_the_selected_config(
    trained: tuple[Path, Path, np.ndarray],
) -> None:
    run_dir, _, _ = trained
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["seed"] == 0
    prov = metrics["provenance"]
    assert prov["seed"] == 0 and prov["versions"]["torch"] == torch.__version__
    assert prov["versions"]["pytorch-lightning"] == pl.__version__
    assert prov["machine"]["torch_threads"] == torch.get_num_threads()
    assert prov["machine"]["usable_cores"] >= 1 and prov["machine"]["cpu"]
    repo = Path(__file__).resolve().parents[2]
    if (repo / ".git").exists():  # a checkout: the commit is recorded
        assert len(prov["git"]["commit"]) == 40 and isinstance(prov["git"]["dirty"], bool)
    from omegaconf import OmegaConf

    chosen = OmegaConf.load(run_dir / "config_selected.yaml")
    assert chosen.model.params.lr == metrics["selected_params"]["lr"]
    assert chosen.trainer.max_epochs == metrics["final_epochs"]
    composed = OmegaConf.load(run_dir / "config.yaml")
    assert list(composed.model.search.grid.lr) == [0.001, 0.003, 0.01]  # the composed grid


def test_a_finished_run_keeps_only_the_model_and_the_selected_checkpoint(
    trained: tuple[Path, Path, np.ndarray],
) -> None:
    run_dir, _, _ = trained
    selection = json.loads((run_dir / "selection.json").read_text())
    kept = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*.ckpt"))
    assert kept == sorted(["model.ckpt", selection["best"]["checkpoint"]])


def test_calibrated_per_class_accuracy_is_recorded_and_drawn(
    trained: tuple[Path, Path, np.ndarray],
) -> None:
    """The per-class record has the calibrated accuracy; its class means are the calibrated
    u and s of the run; the figure comes as PNG and PDF."""
    run_dir, _, _ = trained
    metrics = json.loads((run_dir / "metrics.json").read_text())
    record = metrics["per_class_accuracy"]
    for split, key in (("unseen", "gzsl_u_cal"), ("seen", "gzsl_s_cal")):
        values = [c["accuracy_calibrated"] for c in record.values() if c["split"] == split]
        assert np.mean(values) == pytest.approx(metrics[key], abs=1e-6)
    for suffix in (".png", ".pdf"):
        assert (run_dir / f"test_per_class_accuracy{suffix}").stat().st_size > 0
        assert (run_dir / f"test_seen_unseen_curve{suffix}").stat().st_size > 0


@pytest.mark.parametrize("n_classes", [50, 200, 717])
def test_the_per_class_figure_scales_to_many_classes(tmp_path: Path, n_classes: int) -> None:
    """Every class named up to 60 per panel, only the extremes above; the height stays that
    of a page (it grew to 2500 px with 3 px labels at 200 classes)."""
    from PIL import Image

    from zsl.reporting.plots import plot_per_class_accuracy

    rng = np.random.default_rng(0)
    names = [f"{i:03d}.class_{i}" for i in range(n_classes)]
    seen = [i >= n_classes // 5 for i in range(n_classes)]
    acc = list(rng.uniform(0, 100, n_classes))
    cal = list(np.clip(np.asarray(acc) + rng.normal(0, 10, n_classes), 0, 100))
    path = plot_per_class_accuracy(names, acc, seen, tmp_path / "pc.png", "t", calibrated=cal)
    width, height = Image.open(path).size
    assert height <= 1500 and width <= 1700
    assert path.with_suffix(".pdf").stat().st_size > 0


def test_zsl_predict_reads_images_through_the_runs_backbone(tmp_path: Path) -> None:
    """A dataset built from image folders (``zsl-custom``, resnet18 with seeded random
    weights), an ESZSL run on it, then ``zsl-predict --images``: the backbone recorded in the
    run's feature file extracts the images again, and the predictions equal those of the
    dataset's own feature rows for the same images."""
    import scipy.io
    from PIL import Image

    from zsl.data.formats.matfile import strings
    from zsl.features.custom import build_custom_dataset

    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    colours = {"a": (200, 30, 30), "b": (30, 200, 30), "c": (30, 30, 200), "d": (200, 200, 30)}
    for name, colour in colours.items():
        (images / name).mkdir(parents=True)
        for k in range(6):
            pixels = np.clip(rng.normal(colour, 25, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(images / name / f"{k}.png")
    table = tmp_path / "att.csv"
    table.write_text("class,red,green,blue\na,1,0,0\nb,0,1,0\nc,0,0,1\nd,1,1,0\n")
    data = build_custom_dataset(
        images,
        table,
        ["d"],
        tmp_path / "data" / "MINE",
        backbone="resnet18",
        weights="none",
        device="cpu",
        progress=False,
        num_workers=0,
    )
    run_dir = tmp_path / "run"
    run(
        ["data=xlsa17", f"data.root={data.parent}", "data.name=MINE", "logger=csv"]
        + ["data.feature_file=resnet18.mat", "model=eszsl", f"output_dir={run_dir}"]
    )
    ckpt = ["--checkpoint", str(run_dir / "model.ckpt"), "--top-k", "2"]
    predict_main([*ckpt, "--images", str(images / "d"), "--out", str(tmp_path / "img.csv")])
    from_images = read_rows(tmp_path / "img.csv")
    assert [Path(r["input"]).name for r in from_images][::2] == [f"{k}.png" for k in range(6)]

    mat = scipy.io.loadmat(str(data / "resnet18.mat"))
    files = [str(Path(f).resolve()) for f in strings(mat["image_files"])]
    rows = [files.index(str((images / "d" / f"{k}.png").resolve())) for k in range(6)]
    np.save(tmp_path / "d.npy", np.asarray(mat["features"]).T[rows].astype(np.float32))
    predict_main([*ckpt, "--features", str(tmp_path / "d.npy"), "--out", str(tmp_path / "f.csv")])
    from_features = read_rows(tmp_path / "f.csv")
    assert [r["class"] for r in from_images] == [r["class"] for r in from_features]
    np.testing.assert_allclose(
        [float(r["score"]) for r in from_images],
        [float(r["score"]) for r in from_features],
        rtol=1e-4,
    )
