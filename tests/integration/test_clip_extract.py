"""Images to results, end to end, on a small image folder drawn on the fly.

6 classes x 8 PIL-drawn 64x64 images -> ``python -m zsl.cli.custom`` (features from a randomly
initialised torchvision resnet18) -> ``python train.py`` trains ALE on it (subprocess, started
as soon as the dataset exists and awaited by the last test, so it overlaps the CLIP work) ->
``python -m zsl.cli.extract`` with a tiny random CLIP (image features and text semantics: ALE
in CLIP space) -> ``model=clip`` zero-shot on the same split, checked against a NumPy reference.
The tiny CLIP is built offline from a ``CLIPConfig`` and a character-level tokenizer written
here; no hub access is needed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.io
from conftest import REPO_ROOT
from PIL import Image, ImageDraw

from zsl.cli import custom, extract
from zsl.cli.train import run as train_main
from zsl.data.errors import DataError
from zsl.features.extract import extract_features

pytestmark = pytest.mark.slow

CLASSES = {  # name: (colour, shape)
    "001.Red_Disc": ((220, 40, 40), "disc"),
    "002.Green_Square": ((40, 200, 40), "square"),
    "003.Blue_Triangle": ((40, 40, 220), "triangle"),
    "004.Yellow_Disc": ((230, 220, 40), "disc"),
    "005.Cyan_Square": ((40, 210, 210), "square"),
    "006.Magenta_Triangle": ((210, 40, 210), "triangle"),
}
UNSEEN = ("004.Yellow_Disc", "006.Magenta_Triangle")
PER_CLASS = 8
SIZE = 64


def draw_images(root: Path, seed: int = 0) -> Path:
    """``root/<class>/img_k.jpg``: the class's shape in its colour on a noisy background."""
    rng = np.random.default_rng(seed)
    for name, (rgb, shape) in CLASSES.items():
        (root / name).mkdir(parents=True)
        for k in range(PER_CLASS):
            img = Image.fromarray(rng.integers(60, 190, (SIZE, SIZE, 3), dtype=np.uint8))
            side = int(rng.integers(24, 40))
            x, y = (int(v) for v in rng.integers(2, SIZE - side - 2, 2))
            draw = ImageDraw.Draw(img)
            if shape == "disc":
                draw.ellipse((x, y, x + side, y + side), fill=rgb)
            elif shape == "square":
                draw.rectangle((x, y, x + side, y + side), fill=rgb)
            else:
                draw.polygon([(x, y + side), (x + side, y + side), (x + side // 2, y)], fill=rgb)
            img.save(root / name / f"img_{k}.jpg", quality=92)
    return root


def write_attributes(path: Path) -> Path:
    """class,red,green,blue,disc,square,triangle (colour in [0, 1] and a one-hot shape)."""
    lines = ["class,red,green,blue,disc,square,triangle"]
    for name, (rgb, shape) in CLASSES.items():
        onehot = [int(shape == s) for s in ("disc", "square", "triangle")]
        lines.append(",".join([name, *(f"{v / 255:.3f}" for v in rgb), *map(str, onehot)]))
    path.write_text("\n".join(lines) + "\n")
    return path


def build_tiny_clip(folder: Path) -> Path:
    """A randomly initialised CLIP (16-d embeddings, 32 px) with a character-level tokenizer."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocab = {"<|startoftext|>": 0}
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789,.'-":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)  # the highest id: pooling finds it either way
    tok_dir = folder / "tokenizer-src"
    tok_dir.mkdir(parents=True)
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir))
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ),
        tokenizer=tokenizer,
    )
    eos = vocab["<|endoftext|>"]
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=64,
            bos_token_id=0,
            eos_token_id=eos,
            pad_token_id=eos,
        ),
        vision_config=dict(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
        ),
        projection_dim=16,
    )
    torch.manual_seed(0)
    out = folder / "tiny-clip"
    CLIPModel(config).save_pretrained(str(out))
    processor.save_pretrained(str(out))
    return out


def train_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        WANDB_DIR=str(home),
        WANDB_CACHE_DIR=str(home / "cache"),
        WANDB_CONFIG_DIR=str(home / "config"),
        WANDB_DATA_DIR=str(home / "data"),
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1",
    )
    return env


@dataclass
class Workspace:
    base: Path
    images: Path
    data_root: Path  # <data_root>/CUSTOM: the built dataset
    ale: subprocess.Popen[str]
    ale_args: list[str]

    @property
    def dataset(self) -> Path:
        return self.data_root / "CUSTOM"

    def train_args(self, name: str, feature_file: str, run: str, *extra: str) -> list[str]:
        return [
            "data=cub",
            f"data.root={self.data_root}",
            f"data.name={name}",
            f"data.feature_file={feature_file}",
            "logger=csv",
            "trainer.max_epochs=2",
            f"output_dir={self.base / 'runs' / run}",
            "trainer.enable_progress_bar=false",
            *extra,
        ]


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    base = tmp_path_factory.mktemp("images")
    images = draw_images(base / "images")
    data_root = base / "data"
    custom.main(
        [
            "--images",
            str(images),
            "--attributes",
            str(write_attributes(base / "attributes.csv")),
            "--unseen",
            ",".join(UNSEEN),
            "--output",
            str(data_root / "CUSTOM"),
            "--backbone",
            "resnet18",
            "--weights",
            "none",
            "--batch-size",
            "16",
            "--num-workers",
            "0",
            "--no-progress",
            "--seed",
            "0",
        ]
    )
    partial = Workspace(base, images, data_root, None, [])  # type: ignore[arg-type]
    args = partial.train_args("CUSTOM", "resnet18.mat", "ale")
    ale = subprocess.Popen(
        [sys.executable, "train.py", *args],
        cwd=REPO_ROOT,
        env=train_env(base / "wandb"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    workspace = Workspace(base, images, data_root, ale, args)
    yield workspace
    if ale.poll() is None:
        ale.kill()
        ale.communicate()


@pytest.fixture(scope="module")
def tiny_clip(ws: Workspace) -> Path:
    pytest.importorskip("transformers")
    return build_tiny_clip(ws.base / "clip")


# ----------------------------------------------------------------------------- features


def test_custom_dataset_has_resnet_features_and_splits(ws: Workspace) -> None:
    feats = scipy.io.loadmat(str(ws.dataset / "resnet18.mat"))
    n = len(CLASSES) * PER_CLASS
    assert feats["features"].shape == (512, n) and feats["features"].dtype == np.float32
    assert feats["labels"].ravel().tolist() == [
        c + 1 for c in range(len(CLASSES)) for _ in range(PER_CLASS)
    ]
    assert Path(str(feats["image_files"][0, 0][0])).is_file()
    splits = scipy.io.loadmat(str(ws.dataset / "att_splits.mat"))
    assert splits["att"].shape == (6, 6)
    unseen_rows = {c for c, name in enumerate(CLASSES) if name in UNSEEN}
    labels0 = feats["labels"].ravel().astype(int) - 1
    assert set(labels0[splits["test_unseen_loc"].ravel().astype(int) - 1]) == unseen_rows
    assert splits["test_unseen_loc"].size == 2 * PER_CLASS
    # the same command again is a no-op on the finished feature file
    before = (ws.dataset / "resnet18.mat").stat().st_mtime_ns
    extract.main(
        [
            "--images",
            str(ws.images),
            "--output",
            str(ws.dataset / "resnet18.mat"),
            "--backbone",
            "resnet18",
            "--weights",
            "none",
            "--no-progress",
        ]
    )
    assert (ws.dataset / "resnet18.mat").stat().st_mtime_ns == before


def test_extract_clip_image_features_and_text_semantics(ws: Workspace, tiny_clip: Path) -> None:
    clip_ds = ws.data_root / "CUSTOM_CLIP"
    extract.main(
        [
            "--from",
            str(ws.dataset / "resnet18.mat"),
            "--backbone",
            "clip",
            "--weights",
            str(tiny_clip),
            "--output",
            str(clip_ds / "clip.mat"),
            "--batch-size",
            "16",
            "--num-workers",
            "0",
            "--no-progress",
        ]
    )
    src = scipy.io.loadmat(str(ws.dataset / "resnet18.mat"))
    feats = scipy.io.loadmat(str(clip_ds / "clip.mat"))
    assert feats["features"].shape == (16, len(CLASSES) * PER_CLASS)
    np.testing.assert_array_equal(feats["labels"], src["labels"])
    assert [str(f[0]) for f in feats["image_files"].ravel()] == [
        str(f[0]) for f in src["image_files"].ravel()
    ]

    extract.main(
        [
            "--text-semantics",
            str(ws.dataset / "att_splits.mat"),
            "--weights",
            str(tiny_clip),
            "--templates",
            "bird",
            "--output",
            str(clip_ds / "att_splits.mat"),
        ]
    )
    old = scipy.io.loadmat(str(ws.dataset / "att_splits.mat"))
    new = scipy.io.loadmat(str(clip_ds / "att_splits.mat"))
    assert new["att"].shape == (16, len(CLASSES))
    np.testing.assert_allclose(np.linalg.norm(new["att"], axis=0), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(new["att_attributes"], old["att"])
    for key in ("trainval_loc", "test_seen_loc", "test_unseen_loc", "train_loc", "val_loc"):
        np.testing.assert_array_equal(new[key], old[key])

    # every model can train in CLIP space: ALE on CLIP image features and CLIP class semantics
    metrics = train_main(ws.train_args("CUSTOM_CLIP", "clip.mat", "ale_clip_space"))
    assert 0.0 <= metrics["zsl_t1"] <= 100.0 and metrics["model"] == "ale"


# ----------------------------------------------------------------------------- model=clip


def _reference_zsl_t1(ws: Workspace, tiny_clip: Path) -> float:
    """Per-class top-1 over the unseen classes, computed directly from the CLIP embeddings."""
    from zsl.features.clip import class_text_embeddings, clip_image_backbone, load_clip

    feats = scipy.io.loadmat(str(ws.dataset / "resnet18.mat"))
    splits = scipy.io.loadmat(str(ws.dataset / "att_splits.mat"))
    paths = [Path(str(f[0])) for f in feats["image_files"].ravel()]
    image = extract_features(paths, clip_image_backbone(str(tiny_clip)), progress=False)
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    text = class_text_embeddings(load_clip(str(tiny_clip)), list(CLASSES), "generic", device="cpu")
    labels = feats["labels"].ravel().astype(int) - 1
    idx = splits["test_unseen_loc"].ravel().astype(int) - 1
    unseen = np.array(sorted({c for c, name in enumerate(CLASSES) if name in UNSEEN}))
    pred = unseen[(image[idx] @ text[unseen].T).argmax(axis=1)]
    return 100.0 * float(np.mean([np.mean(pred[labels[idx] == c] == c) for c in unseen]))


def test_model_clip_zero_shot_on_the_same_split(ws: Workspace, tiny_clip: Path) -> None:
    metrics = train_main(
        ws.train_args(
            "CUSTOM",
            "resnet18.mat",
            "clip",
            "model=clip",
            f"model.params.model={tiny_clip}",
            "model.params.num_workers=0",
            "model.params.device=cpu",
        )
    )
    assert metrics["model"] == "clip" and metrics["selected_epochs"] == 1
    for key in ("zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h", "gzsl_h_cal"):
        assert 0.0 <= metrics[key] <= 100.0
    assert set(metrics["per_class_accuracy"]) == set(CLASSES)
    assert metrics["zsl_t1"] == pytest.approx(_reference_zsl_t1(ws, tiny_clip), abs=1e-4)


def test_model_clip_missing_image_root_names_the_first_image(
    ws: Workspace, tiny_clip: Path
) -> None:
    first = str(scipy.io.loadmat(str(ws.dataset / "resnet18.mat"))["image_files"][0, 0][0])
    # the DataError itself, or the CLI's exit carrying its message
    with pytest.raises((DataError, SystemExit)) as err:
        train_main(
            ws.train_args(
                "CUSTOM",
                "resnet18.mat",
                "clip_missing",
                "model=clip",
                f"model.params.model={tiny_clip}",
                f"data.image_root={ws.base / 'not_there'}",  # a key of the xlsa17 base
            )
        )
    assert str(ws.base / "not_there") in str(err.value) and repr(first) in str(err.value)


def test_model_clip_missing_weights_is_one_line(ws: Workspace) -> None:
    missing = ws.base / "no_clip_weights"
    with pytest.raises(SystemExit) as err:
        train_main(
            ws.train_args(
                "CUSTOM",
                "resnet18.mat",
                "clip_no_weights",
                "model=clip",
                f"model.params.model={missing}",
                "model.params.num_workers=0",
                "model.params.device=cpu",
            )
        )
    message = err.value.code
    assert isinstance(message, str) and "\n" not in message, message
    assert message.startswith(f"error: CLIP weights '{missing}': local directory"), message


def test_clip_weight_loading_errors(monkeypatch: pytest.MonkeyPatch, tiny_clip: Path) -> None:
    import transformers

    from zsl.features.clip import CLIPLoadError, load_clip

    with pytest.raises(CLIPLoadError, match="local directory .*missing-clip not found"):
        load_clip("/nowhere/missing-clip")

    def offline(*args: Any, **kwargs: Any) -> None:
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(transformers.CLIPModel, "from_pretrained", offline)
    with pytest.raises(CLIPLoadError) as err:
        load_clip("someone/clip-model-not-cached")
    message = str(err.value)
    assert "'someone/clip-model-not-cached'" in message and "model.params.model=DIR" in message


# ----------------------------------------------------------------------------- ALE (subprocess)


def test_ale_trains_on_the_custom_dataset(ws: Workspace) -> None:
    stdout, stderr = ws.ale.communicate(timeout=600)
    assert ws.ale.returncode == 0, (
        f"train.py {' '.join(ws.ale_args)}\n{stdout[-3000:]}\n{stderr[-5000:]}"
    )
    metrics = json.loads((ws.base / "runs" / "ale" / "metrics.json").read_text())
    assert metrics["model"] == "ale" and metrics["protocol"] == "test"
    for key in ("zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h"):
        assert 0.0 <= metrics[key] <= 100.0
