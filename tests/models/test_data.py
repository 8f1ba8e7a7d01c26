"""Store reading: attributes, limits, in-memory vs streamed splits, per-epoch shuffling."""

import numpy as np
import pytest
import zarr

from stores import tiny_store
from visatt_models.data import Batches, Split, StoreError, open_store, shift_images


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """2,100 train (3 chunks of 1,000), 300 val, 2,000 test samples of 28x28 translated MNIST."""
    return tiny_store(tmp_path_factory.mktemp("data") / "mid.zarr", name="mnist-translated", limit=2100, canvas=28)


def test_store_facts_come_from_the_attributes(store):
    info = open_store(store)
    attrs = zarr.open_group(str(store), mode="r").attrs["visatt"]
    assert info.dataset == "mnist-translated" == attrs["dataset"]
    assert info.recipe_digest == attrs["recipe_digest"] and info.recipe_digest.startswith("sha256:")
    assert info.num_classes == attrs["num_classes"] == 10 and info.task == "digit"
    assert info.image_shape == (28, 28, 1)
    assert info.splits == {"train": 2100, "val": 300, "test": 2000}
    assert info.identity == {"dataset": info.dataset, "version": info.version, "recipe_digest": info.recipe_digest}


def test_not_a_store_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="no such store"):
        open_store(tmp_path / "missing.zarr")
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w", zarr_format=3)
    with pytest.raises(StoreError, match="not a visatt store"):
        open_store(tmp_path / "plain.zarr")


def test_limit_caps_each_split_to_its_first_samples(store):
    info = open_store(store)
    split = Split(info, "train", limit=1500)
    assert len(split) == 1500 and split.num_chunks == 2
    full = zarr.open_group(str(store), mode="r")["train"]
    np.testing.assert_array_equal(split.arrays[1], full["labels"][:1500])
    assert len(Split(info, "val", limit=5000)) == 300


def epoch_samples(batches):
    images, labels = zip(*(batches[i] for i in range(len(batches))))
    return np.concatenate(images), np.concatenate(labels)


@pytest.mark.parametrize("memory_limit", [2**30, 1500 * (28 * 28 + 1)], ids=["in-memory", "streamed"])
def test_epoch_is_a_permutation_and_depends_on_seed_and_epoch_only(store, memory_limit):
    info = open_store(store)
    split = Split(info, "train", memory_limit=memory_limit)
    assert split.in_memory == (memory_limit == 2**30)
    if not split.in_memory:
        assert split.window_chunks == 1  # two 1,000-sample windows fit the limit, three do not
    images, labels = split.arrays  # (N, 28, 28, 1), (N,)
    key = {images[i].tobytes(): labels[i] for i in range(len(labels))}
    assert len(key) == len(labels)  # every canvas is distinct, so it identifies its sample

    batches = Batches(split, 256, shuffle=True, seed=7, epoch=3)
    assert len(batches) == 9 and batches[8][0].shape == (52, 28, 28, 1)
    got_images, got_labels = epoch_samples(batches)
    assert sorted(img.tobytes() for img in got_images) == sorted(key)  # each sample exactly once
    assert all(key[img.tobytes()] == lab for img, lab in zip(got_images, got_labels))  # pairs intact
    assert not np.array_equal(got_labels, labels)  # shuffled

    again = Batches(split, 256, shuffle=True, seed=7, epoch=0)
    again.set_epoch(3)
    np.testing.assert_array_equal(epoch_samples(again)[1], got_labels)  # a resumed run sees the same epoch
    batches.set_epoch(4)
    assert not np.array_equal(epoch_samples(batches)[1], got_labels)
    assert not np.array_equal(epoch_samples(Batches(split, 256, shuffle=True, seed=8, epoch=3))[1], got_labels)


def test_streamed_and_in_memory_read_the_same_samples(store):
    info = open_store(store)
    memory, streamed = Split(info, "test"), Split(info, "test", memory_limit=1)
    assert memory.in_memory and not streamed.in_memory
    indices = np.array([1999, 0, 1000, 999, 5])
    for a, b in zip(memory.read(indices), streamed.read(indices)):
        np.testing.assert_array_equal(a, b)
    ordered = [Batches(s, 300, shuffle=False) for s in (memory, streamed)]
    for a, b in zip(epoch_samples(ordered[0]), epoch_samples(ordered[1])):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(epoch_samples(ordered[0])[1], memory.arrays[1])  # unshuffled: store order


def test_training_drops_only_a_partial_last_batch(store):
    split = Split(open_store(store), "val")  # 300 samples
    assert len(Batches(split, 128, shuffle=True, drop_remainder=True)) == 2
    assert Batches(split, 128, shuffle=True, drop_remainder=True).samples_per_epoch == 256
    assert len(Batches(split, 128, shuffle=False)) == 3
    assert len(Batches(split, 512, shuffle=True, drop_remainder=True)) == 1  # fewer samples than a batch


def test_streamed_batches_feed_keras_fit(store):
    """The PyDataset runs under `fit` on the active backend, including a partial last batch."""
    import keras

    split = Split(open_store(store), "train", memory_limit=1)  # streamed, one chunk per window
    batches = Batches(split, 700, shuffle=True, seed=1)  # 3 batches, one window (chunk) each
    val = Batches(Split(open_store(store), "val"), 128, shuffle=False)  # 128, 128, 44
    model = keras.Sequential([keras.layers.Input((28, 28, 1)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(), keras.layers.Dense(10)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    history = model.fit(batches, validation_data=val, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0]) and 0 <= history["val_accuracy"][0] <= 1


@pytest.mark.parametrize("memory_limit", [2**30, 1500 * (28 * 28 + 1)], ids=["in-memory", "streamed"])
def test_endless_batches_are_the_epochs_in_a_row(store, memory_limit):
    """Batch i of an endless stream is batch i mod n of epoch `epoch + i // n`, whatever was read before."""
    split = Split(open_store(store), "train", memory_limit=memory_limit)
    endless = Batches(split, 256, shuffle=True, seed=3, epoch=2, drop_remainder=True, endless=True)
    assert endless.num_batches is None and len(endless) == 8
    for step in (9, 0, 17, 8, 23):  # out of order, across epochs 2..4
        expected = Batches(split, 256, shuffle=True, seed=3, epoch=2 + step // 8, drop_remainder=True)[step % 8]
        for a, b in zip(endless[step], expected):
            np.testing.assert_array_equal(a, b)


def test_random_crops_depend_on_seed_epoch_and_sample_only(store):
    split = Split(open_store(store), "val")  # 300 samples of 28x28
    images, labels = split.arrays

    def crops(seed, epoch, batch_size=64):
        batches = Batches(split, batch_size, shuffle=True, seed=seed, epoch=epoch, crop=(20, 24), random_crop=True)
        got = epoch_samples(batches)
        assert got[0].shape == (300, 20, 24, 1)
        return got

    first = crops(seed=1, epoch=5)
    # Every crop is a 20x24 window of its own image (labels travel with their images).
    for crop, label in zip(first[0][:20], first[1][:20]):
        candidates = images[labels == label]
        assert any(
            np.array_equal(crop, image[t : t + 20, l : l + 24]) for image in candidates for t in range(9) for l in range(5)
        )
    # Per sample: the same (seed, epoch) gives the same crop whatever the batch size (the order is
    # the same permutation), another epoch or seed other crops.
    np.testing.assert_array_equal(crops(seed=1, epoch=5, batch_size=7)[0], first[0])
    assert not np.array_equal(crops(seed=1, epoch=6)[0], first[0])
    assert not np.array_equal(crops(seed=2, epoch=5)[0], first[0])


def test_shift_images_moves_content_and_fills_zeros():
    image = np.arange(1, 13, dtype=np.uint8).reshape(1, 3, 4, 1)  # rows 1-4, 5-8, 9-12
    down_left = shift_images(np.repeat(image, 2, 0), np.array([[1, -2], [0, 0]]))
    np.testing.assert_array_equal(down_left[0, :, :, 0], [[0, 0, 0, 0], [3, 4, 0, 0], [7, 8, 0, 0]])
    np.testing.assert_array_equal(down_left[1], image[0])
    np.testing.assert_array_equal(shift_images(image, np.array([[-2, 3]]))[0, :, :, 0],
                                  [[0, 0, 0, 9], [0, 0, 0, 0], [0, 0, 0, 0]])


def test_random_shifts_depend_on_seed_epoch_and_sample_only(store):
    split = Split(open_store(store), "val")  # 300 samples of 28x28
    images, labels = split.arrays

    def shifted(seed, epoch, batch_size=64, shift=3):
        return epoch_samples(Batches(split, batch_size, shuffle=True, seed=seed, epoch=epoch, shift=shift))

    first = shifted(seed=1, epoch=5)
    assert first[0].shape == (300, 28, 28, 1)
    # The order and labels are those of the unshifted epoch; each image is its own, translated by
    # at most 3 pixels, and the shifts vary over the samples.
    plain = epoch_samples(Batches(split, 64, shuffle=True, seed=1, epoch=5))
    np.testing.assert_array_equal(first[1], plain[1])
    found = set()
    for got, original in zip(first[0][:30], plain[0][:30]):
        matches = [(dy, dx) for dy in range(-3, 4) for dx in range(-3, 4)
                   if np.array_equal(got, shift_images(original[None], np.array([[dy, dx]]))[0])]
        assert matches
        found.add(matches[0])
    assert len(found) > 5
    np.testing.assert_array_equal(shifted(seed=1, epoch=5, batch_size=7)[0], first[0])
    # A sample's shift follows its index in the split, not its place in the epoch's order.
    unshuffled = epoch_samples(Batches(split, 64, shuffle=False, seed=1, epoch=5, shift=3))[0]
    order = [next(i for i in range(len(images)) if np.array_equal(images[i], p)) for p in plain[0][:10]]
    np.testing.assert_array_equal(unshuffled[order], first[0][:10])
    assert not np.array_equal(shifted(seed=1, epoch=6)[0], first[0])
    assert not np.array_equal(shifted(seed=2, epoch=5)[0], first[0])
    np.testing.assert_array_equal(shifted(seed=1, epoch=5, shift=0)[0], plain[0])
    with pytest.raises(ValueError, match="shift 28 must be in 0..27 for 28x28 images"):
        Batches(split, 64, shuffle=True, shift=28)
    with pytest.raises(ValueError, match="whole number"):
        Batches(split, 64, shuffle=True, shift=2.5)


def test_affine_images_turn_and_slant_about_the_centre():
    from pipelines.affine import affine_images

    rng = np.random.default_rng(0)
    gray, rgb = rng.integers(0, 256, (2, 6, 6, 1), dtype=np.uint8), rng.integers(0, 256, (1, 6, 6, 3), dtype=np.uint8)
    for images in (gray, rgb):
        none = np.zeros(len(images))
        np.testing.assert_array_equal(affine_images(images, none, none), images)
        # A quarter turn counter-clockwise as seen and a half turn land on whole pixels (bilinear
        # weights off by rounding: within one grey level).
        for degrees, expected in ((90.0, np.rot90(images, 1, axes=(1, 2))), (180.0, images[:, ::-1, ::-1])):
            turned = affine_images(images, none + degrees, none).astype(int)
            assert np.abs(turned - expected).max() <= 1
    # A shear of 1 on 5 rows moves row y by y - 2 pixels to the right (the centre row stays),
    # zero-filled: x += k * y about the centre.
    strip = rng.integers(1, 256, (1, 5, 7, 1), dtype=np.uint8)
    slanted = affine_images(strip, np.zeros(1), np.ones(1))[0, :, :, 0]
    for y in range(5):
        expected = np.zeros(7, np.uint8)
        dx = y - 2
        expected[max(dx, 0) : 7 + min(dx, 0)] = strip[0, y, max(-dx, 0) : 7 - max(dx, 0), 0]
        np.testing.assert_array_equal(slanted[y], expected)
    # A horizontal bar turned by +20 degrees rises to the right.
    bar = np.zeros((1, 64, 64, 1), np.uint8)
    bar[0, 31:33, 8:56] = 255
    rows, cols = np.nonzero(affine_images(bar, np.array([20.0]), np.zeros(1))[0, :, :, 0] > 128)
    assert rows[cols == cols.max()].mean() < 28 and rows[cols == cols.min()].mean() > 36


def test_rotations_and_shears_follow_seed_epoch_and_sample(sequences_store):
    from pipelines.affine import affine_images

    split = Split(open_store(sequences_store), "train")
    images, labels = split.arrays

    def turned(seed=1, epoch=3, batch_size=32, shuffle=False, permute=False, rotate=10.0, shear=0.2):
        batches = Batches(split, batch_size, shuffle=shuffle, seed=seed, epoch=epoch, permute=permute, rotate=rotate,
                          shear=shear)
        return (*epoch_samples(batches), batches._affine)

    got, got_labels, draws = turned()
    np.testing.assert_array_equal(got_labels, labels)  # the labels stay
    assert np.abs(draws[:, 0]).max() <= 10 and np.abs(draws[:, 1]).max() <= 0.2
    assert np.abs(draws[:, 0]).max() > 8 and np.abs(draws[:, 1]).max() > 0.16  # drawn over the whole range
    np.testing.assert_array_equal(got, affine_images(images, draws[:, 0], draws[:, 1]))
    _follows_seed_epoch_and_index(turned, split, got, got_labels)
    # After permuting, with the same draws; only one of the two: the other stays 0.
    permuted, permuted_labels = epoch_samples(Batches(split, 32, shuffle=False, seed=1, epoch=3, permute=True))
    both, both_labels, _ = turned(permute=True)
    np.testing.assert_array_equal(both, affine_images(permuted, draws[:, 0], draws[:, 1]))
    np.testing.assert_array_equal(both_labels, permuted_labels)
    assert (turned(shear=0.0)[2][:, 1] == 0).all() and (turned(rotate=0.0)[2][:, 0] == 0).all()
    np.testing.assert_array_equal(turned(rotate=0.0, shear=0.0)[0], images)
    for bad in ({"rotate": 31}, {"rotate": -1.0}, {"shear": 0.6}, {"shear": True}, {"rotate": float("nan")}):
        with pytest.raises(ValueError, match="must be a number in 0.."):
            Batches(split, 32, shuffle=True, **bad)
    from visatt_models.config import TrainConfig

    train = TrainConfig(rotate=np.int64(5), shear=np.float32(0.25))  # numpy numbers are numbers, kept as floats
    assert (train.rotate, train.shear) == (5.0, 0.25) and type(train.rotate) is float and type(train.shear) is float
    with pytest.raises(ValueError, match=r"^shear must be a number in 0..0.5, got 0.6 \(--shear\)$"):
        TrainConfig(shear=0.6)


def test_ink_keeping_shifts_cover_exactly_the_shifts_that_cut_nothing():
    from pipelines.batches import ink_keeping_shifts

    images = np.zeros((2, 10, 10, 1), np.uint8)
    images[0, 2:5, 7:9] = 9  # ink in rows 2-4 and columns 7-8; image 1 is empty
    u = np.linspace(0, 1, 1000, endpoint=False)
    dy = [ink_keeping_shifts(images, 5, np.array([[v, 0.5], [v, 0.5]]))[:, 0] for v in u]
    dx = [ink_keeping_shifts(images, 5, np.array([[0.5, v], [0.5, v]]))[:, 1] for v in u]
    dy, dx = np.array(dy), np.array(dx)  # (1000, 2)
    # Up by at most 2 (row 2 reaches the top), down by 5 (the shift; row 4 could go 5 further);
    # left by 5 (the shift), right by at most 1 (column 8 reaches the edge); each equally often.
    for values, low, high in ((dy[:, 0], -2, 5), (dx[:, 0], -5, 1), (dy[:, 1], -5, 5), (dx[:, 1], -5, 5)):
        found, counts = np.unique(values, return_counts=True)
        np.testing.assert_array_equal(found, np.arange(low, high + 1))
        assert counts.max() - counts.min() <= 1
    assert (dy[:, 0] == np.sort(dy[:, 0])).all()  # monotone in the uniform number


def test_an_ink_floor_widens_each_range_to_at_least_the_floor():
    from pipelines.batches import ink_keeping_shifts

    images = np.zeros((2, 10, 10, 1), np.uint8)
    images[0, 2:5, 0:10] = 9  # ink in rows 2-4 across the whole width (a strip that fills it); image 1 is empty
    u = np.linspace(0, 1, 1000, endpoint=False)
    for floor, (dy_low, dy_high), (dx_low, dx_high) in ((0, (-2, 5), (0, 0)), (2, (-2, 5), (-2, 2)), (3, (-3, 5), (-3, 3))):
        dy = np.array([ink_keeping_shifts(images, 5, np.array([[v, 0.5], [v, 0.5]]), floor=floor)[:, 0] for v in u])
        dx = np.array([ink_keeping_shifts(images, 5, np.array([[0.5, v], [0.5, v]]), floor=floor)[:, 1] for v in u])
        for values, low, high in ((dy[:, 0], dy_low, dy_high), (dx[:, 0], dx_low, dx_high), (dy[:, 1], -5, 5), (dx[:, 1], -5, 5)):
            found, counts = np.unique(values, return_counts=True)
            np.testing.assert_array_equal(found, np.arange(low, high + 1))
            assert counts.max() - counts.min() <= 1


def test_an_ink_floor_reaches_the_batches_and_is_checked(store):
    from visatt_models.config import TrainConfig

    split = Split(open_store(store), "val")
    batches = lambda **kw: epoch_samples(Batches(split, 64, shuffle=True, seed=1, epoch=5, shift=10, keep_ink=True, **kw))[0]
    kept, floored = batches(), batches(ink_floor=10)
    np.testing.assert_array_equal(batches(ink_floor=0), kept)
    ink = kept.reshape(300, -1).sum(1, dtype=np.int64)
    assert (floored.reshape(300, -1).sum(1, dtype=np.int64) < ink).any()  # a floor of the whole shift cuts ink
    np.testing.assert_array_equal(batches(ink_floor=10), floored)
    with pytest.raises(ValueError, match="ink floor must be a whole number of pixels in 0..10"):
        Batches(split, 64, shuffle=True, shift=10, keep_ink=True, ink_floor=11)
    with pytest.raises(ValueError, match="belongs to keep_ink"):
        Batches(split, 64, shuffle=True, shift=10, ink_floor=2)
    with pytest.raises(ValueError, match="in 0..2"):
        TrainConfig(shift=2, shift_keep_ink=True, shift_floor=3)
    with pytest.raises(ValueError, match="belongs to --keep-ink"):
        TrainConfig(shift=2, shift_floor=1)
    assert TrainConfig(shift=8, shift_keep_ink=True, shift_floor=2).shift_floor == 2

def test_keep_ink_shifts_move_far_but_cut_nothing(store):
    split = Split(open_store(store), "val")  # 300 MNIST digits on 28x28: about 4 pixels of margin

    def shifted(seed, epoch, keep_ink, shift=10):
        return epoch_samples(Batches(split, 64, shuffle=True, seed=seed, epoch=epoch, shift=shift, keep_ink=keep_ink))[0]

    plain = epoch_samples(Batches(split, 64, shuffle=True, seed=1, epoch=5))[0]
    kept = shifted(1, 5, True)
    ink = plain.reshape(300, -1).sum(1, dtype=np.int64)
    np.testing.assert_array_equal(kept.reshape(300, -1).sum(1, dtype=np.int64), ink)  # nothing cut
    assert (shifted(1, 5, False).reshape(300, -1).sum(1, dtype=np.int64) < ink).any()  # a plain shift of 10 cuts
    assert (kept != plain).reshape(300, -1).any(1).mean() > 0.9  # and most images moved
    np.testing.assert_array_equal(shifted(1, 5, True), kept)
    assert not np.array_equal(shifted(1, 6, True), kept)
    assert not np.array_equal(shifted(2, 5, True), kept)
    # A sample's shift follows its index in the split, not its batch or place in the epoch's order.
    np.testing.assert_array_equal(
        epoch_samples(Batches(split, 7, shuffle=True, seed=1, epoch=5, shift=10, keep_ink=True))[0], kept)
    images = split.arrays[0]
    unshuffled = epoch_samples(Batches(split, 64, shuffle=False, seed=1, epoch=5, shift=10, keep_ink=True))[0]
    order = [next(i for i in range(len(images)) if np.array_equal(images[i], p)) for p in plain[:10]]
    np.testing.assert_array_equal(unshuffled[order], kept[:10])
    with pytest.raises(ValueError, match="keep_ink needs a shift"):
        Batches(split, 64, shuffle=True, keep_ink=True)
    from visatt_models.config import TrainConfig

    with pytest.raises(ValueError, match="needs a shift"):
        TrainConfig(shift_keep_ink=True)
    # A run recorded before the option existed loads with it off.
    import dataclasses

    from visatt_models.config import config_from_dict

    older = {k: v for k, v in dataclasses.asdict(TrainConfig(shift=2)).items()
             if k not in ("shift_keep_ink", "shift_floor", "rotate", "shear")}
    assert config_from_dict(TrainConfig, older) == TrainConfig(shift=2)


def test_evaluation_crops_the_centre(store):
    split = Split(open_store(store), "test")
    images, _ = split.arrays
    batch, _ = Batches(split, 50, shuffle=False, crop=(20, 25))[1]
    np.testing.assert_array_equal(batch, images[50:100, 4:24, 1:26])
    with pytest.raises(ValueError, match="crop 30x20 does not fit the 28x28 images"):
        Batches(split, 50, shuffle=False, crop=(30, 20))


def _first_chunk(path, array):
    return sorted(f for f in (path / array / "c").rglob("*") if f.is_file())[0]


def _delete_a_chunk(path):
    _first_chunk(path, "train/images").unlink()  # zarr would read it as zeros


def _flip_a_byte(path):
    chunk = _first_chunk(path, "train/images")
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))


def _edit_a_label(path):
    labels = zarr.open_array(store=str(path / "train" / "labels"), mode="r+")
    labels[0] = (int(labels[0]) + 1) % 10


@pytest.mark.parametrize("damage", [_delete_a_chunk, _flip_a_byte, _edit_a_label])
@pytest.mark.parametrize("read", ["in memory", "limited", "streamed"])
def test_a_damaged_store_is_refused_whichever_way_it_is_read(store, tmp_path, damage, read):
    import shutil

    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(store, damaged)
    damage(damaged)
    options = {"in memory": {}, "limited": {"limit": 10}, "streamed": {"memory_limit": 100_000}}[read]
    with pytest.raises(StoreError, match=r"damaged\.zarr: train/(images|labels) (does not match its recorded digest|is unreadable)"):
        split = Split(open_store(damaged), "train", **options)  # in memory or limited: checked here
        split.read_chunks(range(split.num_chunks))  # streamed whole: checked by its first full pass
    Split(open_store(damaged), "val")  # the other splits are intact


@pytest.fixture(scope="module")
def pairs_store(tmp_path_factory):
    """mnist-pairs on 84x84 (the smallest canvas that always holds two separate digits): 200 train samples."""
    return tiny_store(tmp_path_factory.mktemp("pairs") / "pairs.zarr", name="mnist-pairs", limit=200, canvas=84)


def _follows_seed_epoch_and_index(augmented, split, got, got_labels):
    """`augmented(seed=1, epoch=3, batch_size=32, shuffle=False)` -> (images, labels, draws) of an
    augmentation whose draws follow (seed, epoch, sample index), not the batch size or the order;
    `got`, `got_labels`: its result with the defaults."""
    np.testing.assert_array_equal(augmented(batch_size=7)[0], got)
    shuffled, shuffled_labels, _ = augmented(shuffle=True)
    index = Batches(split, 32, shuffle=True, seed=1, epoch=3)._order_index
    np.testing.assert_array_equal(shuffled, got[index])
    np.testing.assert_array_equal(shuffled_labels, got_labels[index])
    draws = augmented()[2]
    assert not np.array_equal(augmented(epoch=4)[2], draws) and not np.array_equal(augmented(seed=2)[2], draws)


def test_reposition_moves_both_digits_and_relabels_in_reading_order(pairs_store):
    split = Split(open_store(pairs_store), "train")
    images, labels = split.arrays
    boxes = zarr.open_group(str(pairs_store), mode="r")["train"]["boxes"][:]  # (N, 5, 4) top, left, height, width

    def moved(seed=1, epoch=3, batch_size=32, shuffle=False):
        batches = Batches(split, batch_size, shuffle=shuffle, seed=seed, epoch=epoch, reposition=True)
        return (*epoch_samples(batches), batches._placed)

    got, got_labels, placed = moved()
    assert got.shape == images.shape and (got_labels[:, 2:] == 10).all()
    for i in range(len(images)):
        cells = [images[i, t : t + 28, l : l + 28] for t, l in boxes[i, :2, :2]]  # the store's two digits
        (t0, l0), (t1, l1) = placed[i]
        assert 0 <= min(t0, l0, t1, l1) and max(t0, l0, t1, l1) <= 84 - 28
        assert max(abs(t0 - t1), abs(l0 - l1)) >= 28  # not overlapping
        want = np.zeros_like(images[i])
        want[t0 : t0 + 28, l0 : l0 + 28], want[t1 : t1 + 28, l1 : l1 + 28] = cells
        np.testing.assert_array_equal(got[i], want)
        first = 1 if (l1, t1) < (l0, t0) else 0  # reading order: left edge, then top edge
        assert list(got_labels[i, :2]) == [labels[i, first], labels[i, 1 - first]]
    assert (placed != boxes[:, :2, :2]).any(axis=(1, 2)).mean() > 0.95  # nearly every pair moved
    swapped = (got_labels[:, :2] != labels[:, :2]).any(axis=1)
    assert 0.2 < swapped.mean() < 0.8  # the reading order changed for many
    _follows_seed_epoch_and_index(moved, split, got, got_labels)
    # Evaluation batches are the store's images.
    np.testing.assert_array_equal(epoch_samples(Batches(split, 32, shuffle=False))[0], images)
    # A streamed split gives the same epoch; a limited one reads as many boxes as samples.
    streamed = Split(open_store(pairs_store), "train", memory_limit=60 * 84 * 84)
    assert not streamed.in_memory
    np.testing.assert_array_equal(epoch_samples(Batches(streamed, 32, shuffle=False, seed=1, epoch=3, reposition=True))[0], got)
    limited = Split(open_store(pairs_store), "train", limit=50)
    np.testing.assert_array_equal(limited.read_array("boxes"), boxes[:50])
    assert epoch_samples(Batches(limited, 16, shuffle=True, seed=1, epoch=3, reposition=True))[0].shape == (50, 84, 84, 1)


def test_reposition_needs_a_pairs_store_and_reads_checked_boxes(store, pairs_store):
    from pipelines.batches import reposition_pairs
    from visatt_models.config import TrainConfig

    with pytest.raises(ValueError, match="repositioning takes apart two digits .* this is a mnist-translated store"):
        Batches(Split(open_store(store), "val"), 16, shuffle=True, reposition=True)
    with pytest.raises(ValueError, match="reposition must be true or false"):
        TrainConfig(reposition="yes")
    # A cell pasted on a crafted canvas: digits 3 (left) and 7, moved so that 7 comes first.
    image = np.zeros((1, 84, 84, 1), np.uint8)
    image[0, 0:28, 0:28], image[0, 50:78, 40:68] = 3, 7
    labels = np.array([[3, 7, 10, 10, 10]], np.uint8)
    out, relabelled = reposition_pairs(image, labels, np.array([[[0, 0], [50, 40]]]), np.array([[[0, 56], [30, 2]]]))
    assert relabelled.tolist() == [[7, 3, 10, 10, 10]] and labels.tolist() == [[3, 7, 10, 10, 10]]
    assert (out[0, 0:28, 56:84] == 3).all() and (out[0, 30:58, 2:30] == 7).all() and out.sum() == 28 * 28 * 10
    # The boxes are checked against their recorded digest, as images and labels are.
    import shutil

    edited = pairs_store.parent / "edited.zarr"
    shutil.copytree(pairs_store, edited)
    boxes = zarr.open_group(str(edited), mode="r+")["train"]["boxes"]
    boxes[0, 0, 1] = boxes[0, 0, 1] + 1
    with pytest.raises(StoreError, match="train/boxes does not match its recorded digest"):
        Batches(Split(open_store(edited), "train"), 16, shuffle=True, reposition=True)


@pytest.fixture(scope="module")
def sequences_store(tmp_path_factory):
    """mnist-sequences on 64x64 (the recipe's canvas; strips of 3 or more digits are shrunk): 200 train samples."""
    return tiny_store(tmp_path_factory.mktemp("sequences") / "sequences.zarr", name="mnist-sequences", limit=200, canvas=64)


def _cells_overlap(boxes, length):
    spans = sorted((left, left + width) for _, left, _, width in boxes[:length])
    return any(a[1] > b[0] for a, b in zip(spans, spans[1:]))


def test_permute_trades_the_digits_between_their_cells_with_their_labels(sequences_store):
    split = Split(open_store(sequences_store), "train")
    images, labels = split.arrays
    group = zarr.open_group(str(sequences_store), mode="r")["train"]
    boxes, lengths = group["boxes"][:], group["lengths"][:]  # (N, 5, 4) top, left, height, width; (N,)

    def permuted(seed=1, epoch=3, batch_size=32, shuffle=False):
        batches = Batches(split, batch_size, shuffle=shuffle, seed=seed, epoch=epoch, permute=True)
        return (*epoch_samples(batches), batches._order)

    got, got_labels, order = permuted()
    assert got.shape == images.shape
    apart = 0
    for i, length in enumerate(lengths):
        assert sorted(order[i, :length]) == list(range(length)) and list(order[i, length:]) == list(range(length, 5))
        assert list(got_labels[i]) == [labels[i, k] for k in order[i]]  # blanks stay past the length
        if _cells_overlap(boxes[i], length):
            continue
        apart += 1
        for (top, left, _, _), (t, l, h, w) in zip(boxes[i, :length], boxes[i, order[i, :length]]):
            h, w = min(h, 64 - top), min(w, 64 - left)  # cell j holds what cell order[j] held, at cell j's corner
            np.testing.assert_array_equal(got[i, top : top + h, left : left + w], images[i, t : t + h, l : l + w])
    assert apart > 50
    ink, stored_ink = (got > 0).sum(axis=(1, 2, 3)), (images > 0).sum(axis=(1, 2, 3))
    assert (ink <= stored_ink).all() and (ink == stored_ink).mean() > 0.9  # no stroke doubled, few cut at the border
    several = lengths >= 2
    assert (order[several] != np.arange(5)).any(axis=1).mean() > 0.6  # most numbers of 2+ digits change
    np.testing.assert_array_equal(got[lengths == 1], images[lengths == 1])  # one digit stays as it is
    _follows_seed_epoch_and_index(permuted, split, got, got_labels)
    streamed = Split(open_store(sequences_store), "train", memory_limit=60 * 64 * 64)
    assert not streamed.in_memory
    np.testing.assert_array_equal(epoch_samples(Batches(streamed, 32, shuffle=False, seed=1, epoch=3, permute=True))[0], got)
    np.testing.assert_array_equal(epoch_samples(Batches(split, 32, shuffle=False))[0], images)  # evaluation: as stored


def test_permuting_nothing_gives_each_image_back_even_where_cells_overlap(sequences_store):
    from pipelines.batches import permute_digits

    images, labels = Split(open_store(sequences_store), "train").arrays
    group = zarr.open_group(str(sequences_store), mode="r")["train"]
    boxes, lengths = group["boxes"][:], group["lengths"][:]
    assert sum(_cells_overlap(b, n) for b, n in zip(boxes, lengths)) > 20
    identity = np.tile(np.arange(5), (len(images), 1))
    out, same = permute_digits(images, labels, boxes, identity)
    np.testing.assert_array_equal(out, images)
    np.testing.assert_array_equal(same, labels)


def _permute_cell_by_cell(images, labels, cells, order):
    """permute_digits as first written: per image, per cell, paste the cell's own pixels (box and
    margin) at its new corner with a maximum (the vectorised one must give the same bytes)."""
    from pipelines.batches import CELL_MARGIN as m
    from pipelines.batches import cell_owners

    out = np.zeros_like(images)
    owners = cell_owners(cells, *images.shape[1:3])
    for image, target, owner, boxes, to in zip(images, out, owners, cells, order):
        for (new_top, new_left, _, _), k in zip(boxes, to):
            top, left, h, w = (int(v) for v in boxes[k])
            if h == 0:
                continue
            for y in range(top - m, top + h + m):
                for x in range(left - m, left + w + m):
                    ty, tx = y - top + int(new_top), x - left + int(new_left)
                    inside = 0 <= y < image.shape[0] and 0 <= x < image.shape[1]
                    if inside and owner[y, x] == k and 0 <= ty < target.shape[0] and 0 <= tx < target.shape[1]:
                        target[ty, tx] = np.maximum(target[ty, tx], image[y, x])
    return out, np.take_along_axis(labels, order, axis=1)


def test_permuting_pastes_what_a_cell_by_cell_paste_does_on_real_strips(sequences_store):
    from pipelines.batches import digit_orders, permute_digits

    images, labels = Split(open_store(sequences_store), "train").arrays
    group = zarr.open_group(str(sequences_store), mode="r")["train"]
    boxes, lengths = group["boxes"][:], group["lengths"][:]
    overlapping = [i for i, (b, n) in enumerate(zip(boxes, lengths)) if _cells_overlap(b, n)]
    chosen = np.array(overlapping[:12] + [i for i in range(len(images)) if i not in overlapping][:12])
    for seed in range(3):
        order = digit_orders(np.random.default_rng(seed), lengths[chosen])
        got = permute_digits(images[chosen], labels[chosen], boxes[chosen], order)
        want = _permute_cell_by_cell(images[chosen], labels[chosen], boxes[chosen], order)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    # Cells at the border, content cut where it lands outside, and three channels.
    cells = np.array([[[0, 0, 6, 5], [3, 9, 8, 6], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]])
    image = np.random.default_rng(0).integers(0, 3, (1, 10, 16, 3)).astype(np.uint8) * 100
    swap = np.array([[1, 0, 2, 3, 4]])
    got = permute_digits(image, np.array([[1, 2, 10, 10, 10]]), cells, swap)
    np.testing.assert_array_equal(got[0], _permute_cell_by_cell(image, np.array([[1, 2, 10, 10, 10]]), cells, swap)[0])


def test_overlapping_cells_split_their_shared_columns_and_carry_their_spill():
    from pipelines.batches import cell_owners, permute_digits

    # Two cells of 10x8 on a 12x20 canvas, columns 6-9 shared; a third absent.
    cells = np.array([[[1, 0, 10, 10], [1, 6, 10, 10], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]])
    owners = cell_owners(cells, 12, 20)[0]
    assert (owners[:, :8] == 0).all() and (owners[:, 8:] == 1).all()  # the shared columns split at the middle
    image = np.zeros((1, 12, 20, 1), np.uint8)
    image[0, 3, 2:8] = 40  # cell 0's stroke, reaching into the shared columns 6-7
    image[0, 5, 8:15] = 90  # cell 1's stroke, from the shared columns 8-9
    image[0, 11, 16] = 7  # spill one row below cell 1 (inside its margin)
    out, swapped = permute_digits(image, np.array([[4, 2, 10, 10, 10]]), cells, np.array([[1, 0, 2, 3, 4]]))
    assert swapped.tolist() == [[2, 4, 10, 10, 10]]
    want = np.zeros_like(image)  # cell 1's content (corner 1, 6) to corner (1, 0) and cell 0's (1, 0) to (1, 6)
    want[0, 5, 2:9], want[0, 11, 10] = 90, 7
    want[0, 3, 8:14] = 40
    np.testing.assert_array_equal(out, want)
    assert (out > 0).sum() == (image > 0).sum()  # nothing doubled, nothing lost


def test_cell_owners_follow_the_nearest_box_then_the_nearer_centre_column():
    from pipelines.batches import cell_owners

    rng = np.random.default_rng(3)
    height, width = 16, 24
    cells = np.zeros((40, 5, 4), np.int32)
    for cell in cells:
        for k in range(rng.integers(1, 6)):  # present cells first, the rest absent (height 0)
            h, w = rng.integers(1, 10), rng.integers(1, 12)
            cell[k] = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1), h, w
    owners = cell_owners(cells, height, width)
    for b, cell in enumerate(cells):  # the rule, pixel by pixel: first of the smallest (distance, centre offset)
        for y in range(height):
            for x in range(width):
                keys = [(max(0, top - y, y - (top + h - 1)) + max(0, left - x, x - (left + w - 1)),
                         abs(2 * x - (2 * left + w - 1)), k) for k, (top, left, h, w) in enumerate(cell) if h > 0]
                assert owners[b, y, x] == min(keys)[2], (b, y, x)


def test_digit_orders_are_uniform_over_each_lengths_orders():
    from itertools import permutations

    from pipelines.batches import digit_orders

    lengths = np.repeat(np.arange(1, 6), 24_000)
    orders = digit_orders(np.random.default_rng(0), lengths)
    for length in (2, 3):
        rows = orders[lengths == length, :length]
        counts = [np.all(rows == p, axis=1).sum() for p in permutations(range(length))]
        expected = len(rows) / len(counts)
        assert all(abs(c - expected) < 0.06 * expected for c in counts), counts
    assert (orders[lengths == 1] == np.arange(5)).all()
    assert (orders[lengths == 5] != np.arange(5)).any(axis=1).mean() > 0.98


def test_batches_made_by_threads_side_by_side_equal_those_made_one_by_one(sequences_store):
    """What the trainer's prefetching does: several threads ask for batches (out of order, across
    epochs); each batch is still its index's, augmentations and all."""
    from concurrent.futures import ThreadPoolExecutor

    split = Split(open_store(sequences_store), "train", memory_limit=40 * 64 * 64)  # streamed: windows too
    assert not split.in_memory
    options = dict(shuffle=True, seed=3, drop_remainder=True, endless=True, shift=4, keep_ink=True, permute=True,
                   rotate=6.0, shear=0.1, crop=(60, 60), random_crop=True)
    steps = 3 * len(Batches(split, 8, **{**options, "endless": False}))  # three epochs
    sequential = Batches(split, 8, **options)
    one_by_one = [sequential[i] for i in range(steps)]
    threaded = Batches(split, 8, **options)
    scrambled = np.random.default_rng(0).permutation(steps)
    with ThreadPoolExecutor(4) as pool:
        got = dict(zip(scrambled, pool.map(threaded.__getitem__, scrambled)))
    for i, (images, labels) in enumerate(one_by_one):
        np.testing.assert_array_equal(got[i][0], images)
        np.testing.assert_array_equal(got[i][1], labels)


def test_permute_needs_a_sequences_store_without_clutter_and_reads_checked_boxes(store, pairs_store, sequences_store, tmp_path):
    from visatt_models.config import TrainConfig

    for other, name in ((store, "mnist-translated store"), (pairs_store, "mnist-pairs store")):
        with pytest.raises(ValueError, match=f"permuting digits trades the cells .* this is a {name}$"):
            Batches(Split(open_store(other), "val"), 16, shuffle=True, permute=True)
    cluttered = tiny_store(tmp_path / "cluttered.zarr", name="mnist-sequences", limit=16, canvas=64, clutter_count=2)
    with pytest.raises(ValueError, match="this is a mnist-sequences store with clutter"):
        Batches(Split(open_store(cluttered), "train"), 8, shuffle=True, permute=True)
    with pytest.raises(ValueError, match="permute must be true or false"):
        TrainConfig(permute=1)
    with pytest.raises(ValueError, match="exclude each other"):
        TrainConfig(permute=True, reposition=True)
    import shutil

    edited = tmp_path / "edited.zarr"
    shutil.copytree(sequences_store, edited)
    boxes = zarr.open_group(str(edited), mode="r+")["train"]["boxes"]
    boxes[0, 0, 1] = boxes[0, 0, 1] + 1
    with pytest.raises(StoreError, match="train/boxes does not match its recorded digest"):
        Batches(Split(open_store(edited), "train"), 16, shuffle=True, permute=True)
