"""A user's own data: ``imagefolder:PATH`` (PNG folders) and ``npz:PATH``, written tiny under
tmp_path and read by the real loaders; every mistake is one line naming the fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_files import pixels, write_png

from arena.data import is_dataset, load_dataset
from arena.errors import DatasetMissing, InvalidDataset, UnknownPlugin


def one_line_error(kind: type[Exception], name: str, *parts: str) -> str:
    """Load ``name`` expecting ``kind``; its message is one line holding every part."""
    with pytest.raises(kind) as info:
        load_dataset(name)
    message = str(info.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, message
    return message


# ---- imagefolder:PATH -------------------------------------------------------------------------


def grey_folder(root: Path, train: int = 6, test: int = 2) -> dict[str, np.ndarray]:
    """``root/{train,test}/{ant,bee}/*.png``, grey 5 high and 6 wide, in file order."""
    written = {}
    for part, n, seed in (("train", train, 10), ("test", test, 11)):
        for c, cls in enumerate(("ant", "bee")):
            images = pixels(n, (5, 6), seed + 10 * c)
            for i, image in enumerate(images):
                write_png(root / part / cls / f"{i:03d}.png", image)
            written[f"{part}/{cls}"] = images
    return written


def test_imagefolder_reads_grey_pngs_and_splits_off_every_fifth(tmp_path: Path) -> None:
    written = grey_folder(tmp_path / "bugs")
    d = load_dataset(f"imagefolder:{tmp_path / 'bugs'}")
    assert d.name == f"imagefolder:{tmp_path / 'bugs'}"
    assert (d.num_classes, d.class_names, d.input_shape) == (2, ("ant", "bee"), (1, 5, 6))
    assert (len(d.victim_train), len(d.attacker_pool), len(d.test)) == (10, 2, 4)
    train = np.concatenate([written["train/ant"], written["train/bee"]])
    expected = torch.from_numpy(train).float().div(255).unsqueeze(1)
    assert torch.equal(d.attacker_pool.x, expected[[4, 9]])  # positions 4 and 9
    assert torch.equal(d.victim_train.x, expected[[0, 1, 2, 3, 5, 6, 7, 8, 10, 11]])
    assert d.attacker_pool.y.tolist() == [0, 1]
    assert d.test.y.tolist() == [0, 0, 1, 1]
    for split in (d.victim_train, d.attacker_pool, d.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
    again = load_dataset(f"imagefolder:{tmp_path / 'bugs'}")
    assert torch.equal(again.attacker_pool.x, d.attacker_pool.x) and d.normalization is None


def test_imagefolder_with_a_pool_folder_and_rgb_images(tmp_path: Path) -> None:
    root = tmp_path / "rgb"
    grey_folder(root, train=3, test=1)
    colour = pixels(1, (5, 6, 3), 20)[0]
    write_png(root / "pool" / "bee" / "x.png", colour)
    d = load_dataset(f"imagefolder:{root}")
    assert d.input_shape == (3, 5, 6)  # one RGB file: all read as RGB
    assert (len(d.victim_train), len(d.attacker_pool), len(d.test)) == (6, 1, 2)
    assert torch.equal(
        d.attacker_pool.x[0], torch.from_numpy(colour).float().div(255).permute(2, 0, 1)
    )
    assert d.attacker_pool.y.tolist() == [1]
    grey = d.victim_train.x[0]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])


def test_imagefolder_mistakes_are_one_line_with_the_fix(tmp_path: Path) -> None:
    root = tmp_path / "data"
    one_line_error(DatasetMissing, f"imagefolder:{root}", str(root / "train"), "<class>")
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    one_line_error(DatasetMissing, f"imagefolder:{root}", "no images in", "<class>/*.png")
    grey_folder(root, train=2, test=1)
    write_png(root / "test" / "ant" / "wide.png", np.zeros((5, 9), dtype=np.uint8))
    one_line_error(InvalidDataset, f"imagefolder:{root}", "wide.png", "9x5", "one size")
    (root / "test" / "ant" / "wide.png").unlink()
    (root / "test" / "ant" / "broken.png").write_bytes(b"not a png")
    one_line_error(InvalidDataset, f"imagefolder:{root}", "broken.png", "remove or replace it")
    (root / "test" / "ant" / "broken.png").unlink()
    (root / "test" / "bee" / "notes.txt").write_text("not an image")  # ignored: not an image
    write_png(root / "test" / "cat" / "0.png", np.zeros((5, 6), dtype=np.uint8))
    one_line_error(InvalidDataset, f"imagefolder:{root}", "['cat']", "training images")


# ---- npz:PATH ---------------------------------------------------------------------------------


def save(path: Path, **arrays: np.ndarray) -> str:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return f"npz:{path}"


def test_npz_channels_last_bytes(tmp_path: Path) -> None:
    x_train, x_test = pixels(10, (4, 4, 3), 30), pixels(3, (4, 4, 3), 31)
    y_train, y_test = np.arange(10) % 3, np.array([2, 0, 1])
    name = save(tmp_path / "d.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    d = load_dataset(name)
    assert (d.input_shape, d.num_classes, d.class_names) == ((3, 4, 4), 3, ("0", "1", "2"))
    assert (len(d.victim_train), len(d.attacker_pool), len(d.test)) == (8, 2, 3)
    expected = torch.from_numpy(x_train).float().div(255).permute(0, 3, 1, 2)
    assert torch.equal(d.attacker_pool.x, expected[[4, 9]])
    assert d.victim_train.y.tolist() == [0, 1, 2, 0, 2, 0, 1, 2]
    assert torch.equal(d.test.x[0, 2], torch.from_numpy(x_test[0, :, :, 2]).float().div(255))
    assert d.test.y.dtype == torch.int64


def test_npz_floats_channels_first_and_a_pool_of_its_own(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x_train = rng.random((4, 1, 6, 6)).astype(np.float64)
    name = save(
        tmp_path / "f.npz",
        x_train=x_train,
        y_train=np.array([0, 1, 1, 0], dtype=np.uint8),
        x_test=rng.random((2, 6, 6)).astype(np.float32),  # [N, H, W]
        y_test=np.array([[1], [0]]),  # [N, 1]
        x_pool=rng.random((3, 6, 6, 1)).astype(np.float32),
        y_pool=np.array([1, 1, 0]),
    )
    d = load_dataset(name)
    assert d.input_shape == (1, 6, 6) and d.num_classes == 2
    assert (len(d.victim_train), len(d.attacker_pool), len(d.test)) == (4, 3, 2)
    assert torch.equal(d.victim_train.x, torch.from_numpy(x_train).float())
    assert d.victim_train.x.dtype == torch.float32 and d.test.y.tolist() == [1, 0]


@pytest.mark.parametrize(
    "change, parts",
    [
        ({"x_test": None}, ("no x_test", "save x_train, y_train, x_test, y_test")),
        (
            {"x_train": np.full((5, 4, 4), 2.0)},
            ("x_train holds values in [2, 2]", "scale float images to [0, 1]"),
        ),
        ({"x_train": np.full((5, 4, 4), np.nan)}, ("x_train", "[0, 1]")),
        ({"x_train": np.zeros((5, 4, 4), dtype=np.int16)}, ("x_train is int16", "uint8")),
        ({"x_train": np.zeros((5, 4, 4, 5), dtype=np.uint8)}, ("[5, 4, 4, 5]", "C 1 or 3")),
        ({"x_test": np.zeros((2, 3, 3), dtype=np.uint8)}, ("x_test [1, 3, 3]", "one [C, H, W]")),
        ({"y_train": np.arange(4)}, ("4 labels for 5 images", "one per image")),
        ({"y_train": np.linspace(0, 1, 5)}, ("y_train is float64", "integer class")),
        ({"y_train": np.array([0, 1, -1, 0, 1])}, ("label -1", "0..C-1")),
        ({"y_test": np.array([0, 7])}, ("y_test has the label 7", "0..1")),
        ({"x_pool": np.zeros((2, 4, 4), dtype=np.uint8)}, ("x_pool and y_pool",)),
    ],
)
def test_npz_mistakes_are_one_line_with_the_fix(
    tmp_path: Path, change: dict[str, np.ndarray | None], parts: tuple[str, ...]
) -> None:
    arrays: dict[str, np.ndarray | None] = {
        "x_train": pixels(5, (4, 4), 40),
        "y_train": np.array([0, 1, 0, 1, 0]),
        "x_test": pixels(2, (4, 4), 41),
        "y_test": np.array([1, 0]),
        **change,
    }
    name = save(tmp_path / "bad.npz", **{k: v for k, v in arrays.items() if v is not None})
    one_line_error(InvalidDataset, name, *parts)


def test_npz_missing_or_not_an_archive(tmp_path: Path) -> None:
    one_line_error(DatasetMissing, f"npz:{tmp_path / 'none.npz'}", "no file", "numpy.savez")
    (tmp_path / "junk.npz").write_bytes(b"this is not a zip")
    one_line_error(InvalidDataset, f"npz:{tmp_path / 'junk.npz'}", "not a readable .npz")
    np.savez(tmp_path / "obj.npz", x_train=np.array([{"a": 1}], dtype=object))
    one_line_error(InvalidDataset, f"npz:{tmp_path / 'obj.npz'}", "not a readable .npz")


def test_too_few_training_images_for_a_pool(tmp_path: Path) -> None:
    name = save(
        tmp_path / "tiny.npz",
        x_train=pixels(3, (4, 4), 50),
        y_train=np.array([0, 1, 0]),
        x_test=pixels(1, (4, 4), 51),
        y_test=np.array([1]),
    )
    one_line_error(InvalidDataset, name, "3 training images", "at least 5")


def test_forms_and_plain_names() -> None:
    assert is_dataset("npz:/anywhere.npz") and is_dataset("imagefolder:rel/path")
    assert is_dataset("cifar10") and not is_dataset("imagenet")
    assert not is_dataset("npz:") and not is_dataset("zip:/x")
    assert not is_dataset("npz:/x\n.npz") and not is_dataset("npz:/" + "x" * 500)
    with pytest.raises(UnknownPlugin, match="unknown dataset 'zip:/x'"):
        load_dataset("zip:/x")
    with pytest.raises(UnknownPlugin):
        load_dataset("npz:  ")


def test_a_victim_of_a_user_dataset_is_trained_cached_and_reloaded(tmp_path: Path) -> None:
    """The dataset form holds a path: the cache entry's file name must still be one file."""
    from arena.specs import VictimSpec
    from arena.victims import cache_path, load_cached, load_or_train

    rng = np.random.default_rng(0)
    archive = tmp_path / "deep" / "folder" / "mine.npz"
    archive.parent.mkdir(parents=True)
    np.savez(
        archive,
        x_train=rng.integers(0, 256, (50, 8, 8), dtype=np.uint8),
        y_train=np.arange(50) % 3,
        x_test=rng.integers(0, 256, (12, 8, 8), dtype=np.uint8),
        y_test=np.arange(12) % 3,
    )
    spec = VictimSpec(dataset=f"npz:{archive}", arch="mlp", epochs=1)
    data = load_dataset(spec.dataset)
    cache = tmp_path / "victims"
    trained = load_or_train(spec, data, cache)
    entry = cache_path(spec, cache)
    assert entry.parent == cache and entry.is_file()
    cached = load_cached(spec, data, cache)
    assert cached is not None and cached.test_accuracy == trained.test_accuracy
