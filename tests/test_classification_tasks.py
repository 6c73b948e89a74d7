"""The classification family's data and episodes (issue 18): splits, episode structure, purity,
rotations, the Omniglot folder loader and its one-line refusals through the CLI."""

from __future__ import annotations

import numpy as np
import pytest

from parity.cli import main
from parity.config import PRESETS, Config, ConfigError
from parity.data import SPLITS, area_weights, load, resize, sizes, split_classes
from parity.tasks import EVAL_STREAM, TRAIN_STREAM, VAL_STREAM, rng_for, sample_batch

STREAMS = {TRAIN_STREAM: "train", VAL_STREAM: "val", EVAL_STREAM: "test"}


def cls_config(**changes):
    """A tiny classification config (conv small enough for the given image size)."""
    fields = dict(family="classification", model="conv", depth=2, width=2, n_way=5, k_support=2, k_query=3)
    fields.update(changes)
    return Config(**fields)


def draw(cfg, step=0, stream=TRAIN_STREAM, batch=4):
    """The family's float64 draw (sample_batch casts every field, the class ids too)."""
    return cfg.family.sample(rng_for(cfg.seed, stream, step), batch, stream=stream)


# --- data sets and splits -----------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["digits", "synthetic"])
def test_splits_are_disjoint_and_cover_the_classes(dataset):
    data = load(dataset, "", 8)
    parts = [set(data.splits[s]) for s in SPLITS]
    assert all(parts) and sum(len(p) for p in parts) == len(set().union(*parts)) == len(data.images)
    assert sizes(dataset, "", 8) == ({s: len(data.splits[s]) for s in SPLITS}, min(len(a) for a in data.images))


def test_digits_are_scikit_learns_with_rotations_as_forty_classes():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    data = load("digits", "", 8)
    assert sum(len(a) for a in data.images) == 1797
    for digit in range(10):  # the images of each class, /16, in the data set's order
        np.testing.assert_array_equal(data.images[digit], bunch.images[bunch.target == digit] / 16.0)
    counts = {s: len(split_classes(data, s, rotations=True)) for s in SPLITS}
    assert counts == {"train": 24, "val": 8, "test": 8}
    assert {s: len(split_classes(data, s, rotations=False)) for s in SPLITS} == {"train": 6, "val": 2, "test": 2}


def test_episodes_draw_only_their_streams_split():
    cfg = cls_config()
    data = load("digits", "", 8)
    for stream, split in STREAMS.items():
        seen = set()
        for step in range(20):
            seen |= set(draw(cfg, step, stream).classes.ravel().tolist())
        allowed = {4 * base + k for base in data.splits[split] for k in range(4)}
        assert seen <= allowed and len(seen) == len(allowed)  # every class of the split, no other


# --- episode structure ----------------------------------------------------------------------


def test_episode_shapes_one_hot_labels_and_images_of_their_class():
    cfg = cls_config()
    batch = draw(cfg, step=3)
    B, N, K, Q = 4, 5, 2, 3
    assert batch.x_support.shape == (B, N * K, 1, 8, 8) and batch.y_support.shape == (B, N * K, N)
    assert batch.x_query.shape == (B, N * Q, 1, 8, 8) and batch.y_query.shape == (B, N * Q, N)
    assert batch.classes.shape == (B, N)
    np.testing.assert_array_equal(batch.y_support.argmax(-1), np.repeat(np.arange(N), K)[None].repeat(B, 0))
    np.testing.assert_array_equal(batch.y_query.argmax(-1), np.repeat(np.arange(N), Q)[None].repeat(B, 0))
    assert set(np.unique(batch.y_support)) == {0.0, 1.0} and (batch.y_query.sum(-1) == 1).all()
    assert all(len(set(row)) == N for row in batch.classes.tolist())  # N classes without replacement
    data = load("digits", "", 8)
    for b in range(B):  # each image, turned back, is an image of the class its label names
        for images, P in ((batch.x_support[b], K), (batch.x_query[b], Q)):
            for i, image in enumerate(images[:, 0]):
                base, turns = divmod(int(batch.classes[b, i // P]), 4)
                back = np.rot90(image, -turns)
                assert (np.abs(data.images[base] - back).max(axis=(1, 2)) == 0).any()


def test_labels_are_permuted_per_episode():
    cfg = cls_config()
    labels_of = {}  # class id -> the labels it got
    for step in range(30):
        for row in draw(cfg, step).classes.tolist():
            for label, cls in enumerate(row):
                labels_of.setdefault(cls, set()).add(label)
    assert len(labels_of) == 24 and all(len(labels) >= 3 for labels in labels_of.values())


def test_no_image_is_in_both_support_and_query():
    # Synthetic images are all different (noise), so equal pixels mean the same image drawn twice.
    cfg = cls_config(dataset="synthetic", k_support=5, k_query=10)
    batch = draw(cfg, batch=6)
    for b in range(6):
        for n in range(5):
            images = np.concatenate([batch.x_support[b, n * 5 : n * 5 + 5], batch.x_query[b, n * 10 : n * 10 + 10]])
            flat = images.reshape(15, -1)
            assert len(np.unique(flat, axis=0)) == 15


def test_sampler_is_a_pure_function_of_seed_stream_and_step():
    cfg = cls_config(meta_batch=3)
    a, b = sample_batch(cfg, 7), sample_batch(cfg, 7)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.x_support, sample_batch(cfg, 8).x_support)
    assert not np.array_equal(a.x_support, sample_batch(cfg.replace(seed=1), 7).x_support)
    train = set(sample_batch(cfg, 7, TRAIN_STREAM).classes.ravel())
    test = set(sample_batch(cfg, 7, EVAL_STREAM).classes.ravel())
    assert train and test and not train & test
    assert sample_batch(cfg.replace(dtype="float64"), 7).x_support.dtype == np.float64


def test_rotations_off_draws_unturned_base_classes():
    cfg = cls_config(n_way=2, rotations=False)
    seen = set()
    for step in range(10):
        seen |= set(draw(cfg, step, EVAL_STREAM).classes.ravel().tolist())
    assert seen == {3, 4}


# --- config checks ----------------------------------------------------------------------


def test_config_refuses_too_few_classes_or_images_naming_the_field():
    with pytest.raises(ConfigError, match=r"^n_way: 5 is more than the 2 val classes of digits without rotations"):
        cls_config(rotations=False)
    with pytest.raises(ConfigError, match=r"^n_way: 9 is more than the 8 val classes"):
        cls_config(n_way=9)
    with pytest.raises(ConfigError, match=r"^k_query: .* 175 images per class, but a class of digits has only 174"):
        cls_config(k_support=100, k_query=75)
    cls_config(k_support=100, k_query=74)  # 174: the fewest, accepted


def test_presets_build_and_the_omniglot_ones_wait_for_a_folder():
    d = PRESETS["digits-5w1s"]
    assert (d.dataset, d.n_way, d.k_support, d.model.name, d.depth, d.inner_steps) == ("digits", 5, 1, "conv", 3, 1)
    assert d.param_shapes["w_head"] == (5, 32)  # 8 -> 4 -> 2 -> 1 pixel after three max-pools
    assert PRESETS["digits-5w5s"].k_support == 5
    o = PRESETS["omniglot-20w1s"]
    assert (o.n_way, o.image_size, o.depth, o.width, o.pool) == (20, 28, 4, 64, "stride")
    assert o.param_shapes["w_head"] == (20, 64 * 2 * 2)  # 28 -> 14 -> 7 -> 4 -> 2
    with pytest.raises(ConfigError, match=r"^data_dir: omniglot needs its folder: pass --data DIR"):
        PRESETS["omniglot-5w1s"].family.check_ready()


# --- resize and the Omniglot folder ------------------------------------------------------


def test_area_resize_averages_blocks_and_keeps_the_mean():
    rng = np.random.default_rng(0)
    image = rng.uniform(size=(2, 12, 12))
    blocks = image.reshape(2, 6, 2, 6, 2).mean(axis=(2, 4))  # 2x2 block means: the exact halving
    np.testing.assert_allclose(resize(image, 6), blocks, rtol=0, atol=1e-15)
    big = rng.uniform(size=(105, 105))
    np.testing.assert_allclose(resize(big, 28).mean(), big.mean(), rtol=1e-12)
    np.testing.assert_allclose(area_weights(105, 28).sum(axis=1), 1.0, rtol=1e-15)


def write_omniglot(root, alphabets=(("Alpha", "Beta"), ("Gamma",)), characters=3, images=4, side=15):
    """A small folder in the standard layout of random grey PNGs; returns {path: pixels in [0, 1]}."""
    import matplotlib.image

    rng = np.random.default_rng(1)
    written = {}
    for part, names in zip(("images_background", "images_evaluation"), alphabets):
        for alphabet in names:
            for c in range(characters):
                folder = root / part / alphabet / f"character{c + 1:02d}"
                folder.mkdir(parents=True)
                for i in range(images):
                    pixels = rng.integers(0, 256, size=(side, side)) / 255.0
                    path = folder / f"{c:04d}_{i:02d}.png"
                    matplotlib.image.imsave(path, pixels, cmap="gray", vmin=0.0, vmax=1.0)
                    written[path] = pixels
    return written


def test_omniglot_folder_loads_splits_inverts_and_resizes(tmp_path):
    written = write_omniglot(tmp_path)
    data = load("omniglot", str(tmp_path), 5)
    # Two background alphabets: the first is meta-train, the last (a sixth, at least one) meta-validation.
    assert data.splits == {"train": (0, 1, 2), "val": (3, 4, 5), "test": (6, 7, 8)}
    paths = sorted(written, key=lambda p: (p.parts[-4] != "images_background", p.parts[-3:]))
    for index, path in enumerate(paths):
        expected = resize(1.0 - written[path], 5)  # strokes (dark) become 1
        np.testing.assert_allclose(data.images[index // 4][index % 4], expected, atol=0.6 / 255)
    cfg = cls_config(dataset="omniglot", data_dir=str(tmp_path), image_size=5, n_way=3, k_support=1, k_query=3)
    batch = draw(cfg, stream=EVAL_STREAM, batch=2)
    assert batch.x_query.shape == (2, 9, 1, 5, 5) and set(batch.classes.ravel()) <= set(range(24, 36))
    with pytest.raises(ConfigError, match=r"^k_query: k_support \+ k_query = 5 images per class, .* only 4"):
        cfg.replace(k_query=4)


def run_cli(tmp_path, capsys, *flags):
    out = tmp_path / "run"
    status = main(["train", "--preset", "omniglot-5w1s", "--iterations", "1", "--out", str(out), *flags])
    err = capsys.readouterr().err.strip()
    assert not out.exists()  # refused before any work
    return status, err


def test_cli_refuses_the_omniglot_preset_without_a_folder(tmp_path, capsys):
    status, err = run_cli(tmp_path, capsys)
    assert status == 2 and err.count("\n") == 0
    assert err.startswith("maml-parity: error: data_dir: omniglot needs its folder: pass --data DIR")


@pytest.mark.parametrize(
    "damage, message",
    [
        ("missing", "is not a folder"),
        ("no_evaluation", "has no images_evaluation/ folder"),
        ("empty_character", "holds no .png images"),
        ("not_png", "is not a readable PNG image"),
    ],
)
def test_cli_refuses_a_missing_or_malformed_folder_in_one_line(tmp_path, capsys, damage, message):
    import shutil

    root = tmp_path / "omniglot"
    if damage != "missing":
        write_omniglot(root, images=2, side=6)
    character = root / "images_background" / "Alpha" / "character01"
    if damage == "no_evaluation":
        shutil.rmtree(root / "images_evaluation")
    elif damage == "empty_character":
        for png in character.iterdir():
            png.unlink()
    elif damage == "not_png":
        (character / "0000_00.png").write_bytes(b"not an image")
    status, err = run_cli(tmp_path, capsys, "--data", str(root))
    assert status == 2 and err.count("\n") == 0, err
    assert err.startswith("maml-parity: error: data_dir: ") and message in err
