"""Image side: folder listings, path resolution, transforms, backbones, resumable extraction,
feature-file round trips and the custom-dataset splits (no transformers needed here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image, ImageDraw
from torch import nn

from zsl.cli import custom as custom_cli
from zsl.cli import extract as extract_cli
from zsl.data.errors import DataError
from zsl.data.formats.xlsa17 import load_xlsa17
from zsl.features import backbones, custom
from zsl.features.backbones import Backbone, BackboneSpec
from zsl.features.clip import clean_class_name, prompt_names, resolve_templates
from zsl.features.extract import extract_features, extract_to_file
from zsl.features.images import (
    batch_plan,
    imagenet_transform,
    list_image_folder,
    resolve_image_paths,
)
from zsl.models.base import ModelLoadError

COLOURS = {"Red": (220, 30, 30), "Green": (30, 200, 30), "Blue": (30, 30, 220)}


def draw_folder(root: Path, per_class: int = 3, size: int = 32) -> Path:
    """``root/<nnn.Colour_Shape>/img_k.png``: a coloured disc or square on grey noise."""
    rng = np.random.default_rng(0)
    for c, (colour, rgb) in enumerate(COLOURS.items()):
        folder = root / f"{c + 1:03d}.{colour}_{'Disc' if c % 2 else 'Square'}"
        folder.mkdir(parents=True)
        for k in range(per_class):
            img = Image.fromarray(rng.integers(90, 160, (size, size, 3), dtype=np.uint8))
            x, y = rng.integers(2, size // 3, 2)
            box = (int(x), int(y), int(x) + size // 2, int(y) + size // 2)
            draw = ImageDraw.Draw(img)
            (draw.ellipse if c % 2 else draw.rectangle)(box, fill=rgb)
            img.save(folder / f"img_{k}.png")
    return root


class MeanColour(nn.Module):
    """A cheap stand-in backbone: per-channel means (3-d features), counting images seen."""

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__()
        self.seen = 0
        self.fail_after = fail_after

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.fail_after is not None and self.seen >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.seen += pixels.shape[0]
        return pixels.mean(dim=(2, 3))


def fake_backbone(fail_after: int | None = None) -> Backbone:
    return Backbone(MeanColour(fail_after), imagenet_transform(36, 32), "fake weights=none")


# ----------------------------------------------------------------------------- listings


def test_list_image_folder_sorted_with_labels(tmp_path: Path) -> None:
    folder = list_image_folder(draw_folder(tmp_path / "imgs"))
    assert folder.class_names == ("001.Red_Square", "002.Green_Disc", "003.Blue_Square")
    assert folder.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [p.name for p in folder.paths[:3]] == ["img_0.png", "img_1.png", "img_2.png"]
    assert all(p.parent.name == folder.class_names[y] for p, y in zip(folder.paths, folder.labels))


def test_list_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="image folder not found"):
        list_image_folder(tmp_path / "missing")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    (tmp_path / "empty" / "cls" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="holds no images"):
        list_image_folder(tmp_path / "empty")


# ----------------------------------------------------------------------------- resolution


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_resolve_strips_the_authors_prefix_at_any_root_level(tmp_path: Path) -> None:
    stored = [
        "/BS/Deep_Fragments/work/MSc/CUB_200_2011/images/001.Black_footed_Albatross/a_1.jpg",
        "/BS/Deep_Fragments/work/MSc/CUB_200_2011/images/002.Laysan_Albatross/b_2.jpg",
    ]
    local = [
        _touch(
            tmp_path / "cub" / "CUB_200_2011" / "images" / "001.Black_footed_Albatross" / "a_1.jpg"
        ),
        _touch(tmp_path / "cub" / "CUB_200_2011" / "images" / "002.Laysan_Albatross" / "b_2.jpg"),
    ]
    for root in ("cub", "cub/CUB_200_2011", "cub/CUB_200_2011/images"):
        assert resolve_image_paths(stored, tmp_path / root) == local
    windows = [s.replace("/BS", "C:").replace("/", "\\") for s in stored]
    assert resolve_image_paths(windows, tmp_path / "cub") == local


def test_resolve_names_the_first_missing_image(tmp_path: Path) -> None:
    stored = [f"/abs/prefix/imgs/c/{i}.jpg" for i in range(4)]
    for i in (0, 1, 3):
        _touch(tmp_path / "imgs" / "c" / f"{i}.jpg")
    with pytest.raises(DataError) as err:
        resolve_image_paths(stored, tmp_path)
    assert err.value.where == "/abs/prefix/imgs/c/2.jpg"
    assert "1 of 4 images missing" in str(err.value)


def test_resolve_missing_root_names_root_and_first_image(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        resolve_image_paths(["x/first.jpg", "x/second.jpg"], tmp_path / "nowhere")
    assert err.value.where == str(tmp_path / "nowhere")
    assert "'x/first.jpg'" in str(err.value) and "data.image_root" in str(err.value)


def test_resolve_without_root_uses_absolute_or_base_relative_paths(tmp_path: Path) -> None:
    a = _touch(tmp_path / "abs" / "a.jpg")
    b = _touch(tmp_path / "ds" / "rel" / "b.jpg")
    assert resolve_image_paths([str(a), "rel/b.jpg"], None, tmp_path / "ds") == [a, b]
    with pytest.raises(DataError, match="1 of 2 images missing") as err:
        resolve_image_paths([str(a), "rel/c.jpg"], None, tmp_path / "ds")
    assert err.value.where == str(tmp_path / "ds" / "rel" / "c.jpg")


# ----------------------------------------------------------------------------- transforms


def test_imagenet_transform_shape_and_normalisation() -> None:
    img = Image.new("RGB", (80, 60), (124, 116, 104))  # ~ the ImageNet mean colour
    out = imagenet_transform()(img)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    assert out.abs().max() < 0.05


def test_batch_plan_never_crosses_chunks_and_skips_done() -> None:
    plan = batch_plan(10, 3, 4, skip_chunks={1})
    assert plan == [[0, 1, 2], [3], [8, 9]]
    assert sorted(i for b in batch_plan(10, 3, 4, set()) for i in b) == list(range(10))


# ----------------------------------------------------------------------------- backbones


def test_torchvision_backbone_removes_head_and_is_reproducible(tmp_path: Path) -> None:
    first = backbones.torchvision_backbone("resnet18", "none")
    second = backbones.torchvision_backbone("resnet18", "none")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = first.module.eval()(x)
        assert out.shape == (2, 512)  # penultimate layer, no classifier
        assert torch.equal(out, second.module.eval()(x))  # seeded random init: resumable
    # a local checkpoint (with its classifier head, which is dropped) gives the same network
    import torchvision

    net = torchvision.models.resnet18(num_classes=7)
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "w.pth"
    )
    loaded = backbones.torchvision_backbone("resnet18", str(tmp_path / "w.pth"))
    net.fc = nn.Identity()
    with torch.no_grad():
        assert torch.allclose(loaded.module.eval()(x), net.eval()(x))
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="does not fit torchvision resnet18"):
        backbones.torchvision_backbone("resnet18", str(tmp_path / "bad.pth"))


def test_torchvision_backbone_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="unknown backbone 'resnet9000'.*resnet101"):
        backbones.torchvision_backbone("resnet9000", "none")
    import torchvision

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("Name or service not known")

    monkeypatch.setattr(torchvision.models, "get_model", offline)
    with pytest.raises(
        ModelLoadError, match=r"ImageNet weights of resnet101.*--weights /path/to/file.pth"
    ):
        backbones.torchvision_backbone("resnet101", "imagenet")


def test_extract_cli_reports_bad_input_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "res101.mat"
    with pytest.raises(SystemExit) as err:
        extract_cli.main(["--from", str(missing), "--output", str(tmp_path / "out.mat")])
    assert err.value.code == f"error: {missing}: file not found"
    (tmp_path / "images" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a" / "x.png")
    with pytest.raises(SystemExit) as err:
        extract_cli.main(
            ["--images", str(tmp_path / "images"), "--backbone", "resnet9000"]
            + ["--weights", "none", "--output", str(tmp_path / "out.mat")]
        )
    message = err.value.code
    assert isinstance(message, str) and "\n" not in message
    assert message.startswith("error: unknown backbone 'resnet9000'"), message


@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_image_is_one_line_with_or_without_workers(
    tmp_path: Path, workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With data-loader workers the image is read in another process; its error must still
    reach the user as the one DataError line (not a worker traceback)."""
    folder = draw_folder(tmp_path / "imgs")
    bad = folder / "002.Green_Disc" / "img_1.png"
    bad.write_bytes(b"not a png at all")
    monkeypatch.setattr(backbones, "torchvision_backbone", lambda *a, **k: fake_backbone())
    with pytest.raises(SystemExit) as err:
        extract_cli.main(
            ["--images", str(folder), "--backbone", "resnet18", "--weights", "none"]
            + ["--output", str(tmp_path / "out.mat"), "--no-progress", "--batch-size", "2"]
            + ["--num-workers", str(workers)]
        )
    message = err.value.code
    assert isinstance(message, str) and "\n" not in message, message
    assert message.startswith(f"error: {bad}: cannot read image (UnidentifiedImageError"), message
    assert "Traceback" not in message and "worker" not in message


def test_other_torchvision_heads() -> None:
    backbone = backbones.torchvision_backbone("mobilenet_v3_small", "none")
    with torch.no_grad():
        assert backbone.module.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1024)


# ----------------------------------------------------------------------------- extraction


def test_extraction_resumes_after_a_crash(tmp_path: Path) -> None:
    paths = list(list_image_folder(draw_folder(tmp_path / "imgs")).paths)  # 9 images
    reference = extract_features(paths, fake_backbone(), batch_size=2, chunk_size=4, progress=False)
    assert reference.shape == (9, 3) and reference.dtype == np.float32

    partial = tmp_path / "out.mat.partial"
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract_features(
            paths,
            fake_backbone(fail_after=5),
            batch_size=2,
            chunk_size=4,
            partial_dir=partial,
            progress=False,
        )
    assert sorted(p.name for p in partial.glob("chunk_*.npy")) == ["chunk_000000.npy"]
    resumed = fake_backbone()
    out = extract_features(
        paths, resumed, batch_size=2, chunk_size=4, partial_dir=partial, progress=False
    )
    assert resumed.module.seen == 5  # only the two unfinished chunks were computed
    np.testing.assert_allclose(out, reference, rtol=1e-6)

    # other settings (here another backbone description): the partial results are discarded
    other = fake_backbone()
    other.description = "fake weights=other"
    extract_features(paths, other, batch_size=2, chunk_size=4, partial_dir=partial, progress=False)
    assert other.module.seen == 9


def test_extract_to_file_round_trip_and_rerun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = list_image_folder(draw_folder(tmp_path / "imgs"))
    built: list[Backbone] = []

    def fake_tv(name: str, weights: str) -> Backbone:
        built.append(fake_backbone())
        built[-1].description = f"{name} weights={weights}"
        return built[-1]

    monkeypatch.setattr(backbones, "torchvision_backbone", fake_tv)
    out = tmp_path / "ds" / "feats.mat"
    files = [str(p) for p in folder.paths]
    spec = BackboneSpec("resnet18", "none")
    feats = extract_to_file(
        out, folder.paths, folder.labels, files, spec, batch_size=4, progress=False
    )
    mat = scipy.io.loadmat(str(out))
    assert mat["features"].shape == (3, 9) and mat["features"].dtype == np.float32
    assert mat["labels"].ravel().tolist() == [1, 1, 1, 2, 2, 2, 3, 3, 3]  # 1-based
    np.testing.assert_array_equal(mat["features"].T, feats)
    assert not (tmp_path / "ds" / "feats.mat.partial").exists()

    again = extract_to_file(out, folder.paths, folder.labels, files, spec, progress=False)
    assert len(built) == 1  # finished file with the same settings: nothing rebuilt
    np.testing.assert_array_equal(again, feats)
    with pytest.raises(FileExistsError, match="--overwrite"):
        extract_to_file(out, folder.paths, folder.labels, files, BackboneSpec("resnet50", "none"))
    extract_to_file(
        out,
        folder.paths,
        folder.labels,
        files,
        BackboneSpec("resnet50", "none"),
        overwrite=True,
        progress=False,
    )
    assert len(built) == 2


# ----------------------------------------------------------------------------- custom datasets


def test_read_attribute_csv_and_errors(tmp_path: Path) -> None:
    good = tmp_path / "a.csv"
    good.write_text("class,red,round\nb,0,1\na,1,0.5\n")
    table = custom.read_attribute_csv(good)
    assert table.class_names == ("b", "a") and table.attribute_names == ("red", "round")
    np.testing.assert_array_equal(table.row("a"), [1.0, 0.5])
    for text, message in [
        ("class,red\na,1\na,2\n", "appears twice"),
        ("class,red\na,x\n", "non-numeric"),
        ("class,red,round\na,1\n", "2 cells"),
        ("class\n", "header row"),
    ]:
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(DataError, match=message):
            custom.read_attribute_csv(bad)


def test_make_splits_is_a_valid_seeded_proposed_split() -> None:
    labels = np.repeat(np.arange(8), 10)[np.random.default_rng(3).permutation(80)]
    unseen = np.array([2, 5])
    a = custom.make_splits(labels, 8, unseen, seed=1)
    b = custom.make_splits(labels, 8, unseen, seed=1)
    c = custom.make_splits(labels, 8, unseen, seed=2)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a)
    cls = {k: set(labels[v].tolist()) for k, v in a.items()}
    assert cls["test_unseen_loc"] == {2, 5} and a["test_unseen_loc"].size == 20
    assert cls["trainval_loc"] == cls["test_seen_loc"] == {0, 1, 3, 4, 6, 7}
    assert not set(a["trainval_loc"]) & set(a["test_seen_loc"])
    assert a["test_seen_loc"].size == 6 * 2  # 20 % of 10 images per seen class
    assert set(a["train_loc"]) | set(a["val_loc"]) == set(a["trainval_loc"]) | set(
        a["test_seen_loc"]
    )
    assert len(cls["val_loc"]) == 2 and not cls["val_loc"] & cls["train_loc"]  # 25 % of 6
    with pytest.raises(ValueError, match="two seen classes"):
        custom.make_splits(labels, 8, np.arange(7))


def test_built_dataset_reads_with_the_loader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backbones, "torchvision_backbone", lambda name, weights: fake_backbone())
    images = draw_folder(tmp_path / "imgs", per_class=4)
    csv_path = tmp_path / "att.csv"
    csv_path.write_text(
        "class,red,green,blue,round\n003.Blue_Square,0,0,1,0\n001.Red_Square,1,0,0,0\n"
        "002.Green_Disc,0,1,0,1\n"
    )
    out = custom_cli.build(
        [
            "--images",
            str(images),
            "--attributes",
            str(csv_path),
            "--unseen",
            "002.Green_Disc",
            "--output",
            str(tmp_path / "data" / "MINE"),
            "--backbone",
            "resnet18",
            "--weights",
            "none",
            "--no-progress",
            "--num-workers",
            "0",
        ]
    )
    for protocol in ("val", "test"):
        data = load_xlsa17(tmp_path / "data", "MINE", "resnet18.mat", protocol)  # type: ignore[arg-type]
        assert data.class_names == ("001.Red_Square", "002.Green_Disc", "003.Blue_Square")
        np.testing.assert_allclose(np.linalg.norm(data.semantics, axis=1), 1.0, rtol=1e-6)
        assert data.semantics[1, 1] > 0.7  # green, in folder order (not CSV order)
    test = load_xlsa17(tmp_path / "data", "MINE", "resnet18.mat", "test")
    assert set(test.labels[test.locs["test_unseen_loc"]].tolist()) == {1}
    mat = scipy.io.loadmat(str(out / "att_splits.mat"))
    assert mat["test_unseen_loc"].min() >= 1 and mat["original_att"].shape == (4, 3)
    with pytest.raises(DataError, match="no row for"):
        custom.build_custom_dataset(
            images, _csv(tmp_path, "class,a\n001.Red_Square,1\n"), ["x"], tmp_path / "o"
        )
    with pytest.raises(DataError, match=r"\['Nope'\] are not class folders"):
        custom.build_custom_dataset(images, csv_path, ["Nope"], tmp_path / "o")


@pytest.mark.parametrize(
    ("csv_text", "expected"),
    [
        ("class,a\n001.Red_Square,1\n", "no row for"),  # a CSV missing classes
        ("class,a\n001.Red_Square,x\n002.Green_Disc,1\n003.Blue_Square,1\n", "non-numeric"),
    ],
)
def test_zsl_custom_reports_bad_input_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, csv_text: str, expected: str
) -> None:
    monkeypatch.setattr(backbones, "torchvision_backbone", lambda name, weights: fake_backbone())
    images = draw_folder(tmp_path / "imgs", per_class=4)
    argv = ["--images", str(images), "--attributes", str(_csv(tmp_path, csv_text))]
    argv += ["--unseen", "002.Green_Disc", "--output", str(tmp_path / "out"), "--no-progress"]
    with pytest.raises(SystemExit) as info:
        custom_cli.main(argv)
    message = str(info.value.code)
    assert message.startswith("error: ") and expected in message and "\n" not in message
    assert not (tmp_path / "out").exists()  # nothing half-written


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "other.csv"
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- CLIP text side


def test_clean_class_names_and_name_maps(tmp_path: Path) -> None:
    assert clean_class_name("002.Laysan_Albatross") == "Laysan Albatross"
    assert clean_class_name("grizzly+bear") == "grizzly bear"
    assert clean_class_name("airplane_cabin") == "airplane cabin"
    raw = ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
    mapping = tmp_path / "names.json"
    mapping.write_text(json.dumps({"001.Black_footed_Albatross": "black-footed albatross"}))
    assert prompt_names(raw, mapping) == ["black-footed albatross", "Laysan Albatross"]
    per_line = tmp_path / "names.txt"
    per_line.write_text("first bird\nsecond bird\n")
    assert prompt_names(raw, per_line) == ["first bird", "second bird"]
    mapping.write_text(json.dumps({"003.Nope": "x"}))
    with pytest.raises(DataError, match="not classes of the dataset"):
        prompt_names(raw, mapping)
    per_line.write_text("only one\n")
    with pytest.raises(DataError, match="lists 1 names"):
        prompt_names(raw, per_line)


def test_templates() -> None:
    assert "a photo of a {}, a type of bird." in resolve_templates("bird")
    assert resolve_templates("itap of a {}.") == ["itap of a {}."]
    assert resolve_templates(["a {}.", "the {}."]) == ["a {}.", "the {}."]
    with pytest.raises(ValueError, match="not a preset"):
        resolve_templates("birds")
    with pytest.raises(ValueError, match="exactly one"):
        resolve_templates(["no placeholder"])


def test_custom_cli_names_itself_zsl_custom() -> None:
    assert custom_cli.build_parser().format_usage().startswith("usage: zsl-custom ")
