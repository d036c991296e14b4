"""ImageFolder datasets and the torchvision-equivalent image transforms.

Transforms are checked against hand-computed cases: crop offsets and resized sizes worked
out by hand (torchvision's formulas), pixels against PIL resizes done here directly.
"""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from ijckd_bounds.data import build_dataset, dataset_names
from ijckd_bounds.data.image_transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CenterCrop,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    ToTensor,
    imagenet_eval_transform,
    imagenet_train_transform,
    shorter_side_size,
)
from ijckd_bounds.data.imagefolder import ImageFolderSplit, load_rgb
from ijckd_bounds.errors import IJCKDError

MEAN = np.array(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
STD = np.array(IMAGENET_STD, dtype=np.float32)[:, None, None]


def gradient_image(height, width, offset=0):
    """An RGB image whose channels are distinct ramps, so every crop offset shows."""
    rows, cols = np.mgrid[0:height, 0:width]
    pixels = np.stack([(20 * cols + 3 * rows + offset) % 256, (25 * rows + offset) % 256,
                       (200 - 10 * cols + offset) % 256], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8), mode="RGB")


def normalised(pixels_hwc):
    """(H, W, 3) uint8 -> (3, H, W) float32 normalised with the ImageNet statistics."""
    return torch.from_numpy((pixels_hwc.transpose(2, 0, 1).astype(np.float32) / 255.0 - MEAN)
                            / STD)


# ------------------------------------------------------------ deterministic transforms


def test_shorter_side_sizes_by_hand():
    # int(256 * 500 / 375) = int(341.33) = 341, the longer side truncated.
    assert shorter_side_size(375, 500, 256) == (256, 341)
    assert shorter_side_size(500, 375, 256) == (341, 256)
    assert shorter_side_size(6, 10, 4) == (4, 6)  # int(4 * 10 / 6) = int(6.67)
    assert shorter_side_size(7, 7, 3) == (3, 3)


def test_resize_then_center_crop_on_6x10_gradient():
    img = gradient_image(6, 10)
    resized = Resize(4)(img)
    assert resized.size == (6, 4)  # PIL sizes are (width, height)
    by_hand = np.array(img.resize((6, 4), Image.Resampling.BILINEAR))
    assert np.array_equal(np.array(resized), by_hand)
    # Center crop 3 of 4x6: top = int(round(0.5)) = 0, left = int(round(1.5)) = 2
    # (Python rounds halves to even, as torchvision does).
    assert CenterCrop(3).box(4, 6) == (0, 2, 3, 3)
    cropped = CenterCrop(3)(resized)
    assert np.array_equal(np.array(cropped), by_hand[0:3, 2:5])
    # The whole evaluation pipeline: the same pixels, scaled to [0, 1] and normalised.
    out = imagenet_eval_transform(image_size=3, resize=4)(img)
    assert out.dtype == torch.float32 and out.shape == (3, 3, 3)
    torch.testing.assert_close(out, normalised(by_hand[0:3, 2:5]))


def test_resize_keeps_an_image_already_at_size_and_handles_portrait():
    img = gradient_image(4, 9)
    assert Resize(4)(img) is img
    portrait = gradient_image(10, 6)
    assert Resize(3)(portrait).size == (3, 5)  # width is the shorter side; int(3 * 10 / 6)


def test_center_crop_pads_like_torchvision():
    # A 2x3 image cropped to 4: torchvision pads (4-3)//2 = 0 left, 1 right, (4-2)//2 = 1
    # top, 1 bottom, with zeros.
    img = gradient_image(2, 3, offset=7)
    out = np.array(CenterCrop(4)(img))
    expected = np.zeros((4, 4, 3), dtype=np.uint8)
    expected[1:3, 0:3] = np.array(img)
    assert np.array_equal(out, expected)


def test_to_tensor_layout_and_range():
    img = gradient_image(3, 5)
    out = ToTensor()(img)
    assert out.shape == (3, 3, 5) and out.dtype == torch.float32
    assert torch.equal(out, torch.from_numpy(np.array(img).transpose(2, 0, 1) / 255.0).float())
    gray = ToTensor()(img.convert("L"))
    assert gray.shape == (1, 3, 5)
    with pytest.raises(IJCKDError, match="mode 'RGBA'"):
        ToTensor()(img.convert("RGBA"))
    with pytest.raises(IJCKDError, match="PIL image"):
        Resize(4)(torch.zeros(3, 4, 4))


# ------------------------------------------------------------ random transforms


@pytest.mark.parametrize("seed", range(20))
def test_random_resized_crop_box_and_pixels(seed):
    height, width = 30, 50
    img = gradient_image(height, width)
    crop = RandomResizedCrop(8)
    top, left, box_h, box_w = crop.get_params(height, width, torch.Generator().manual_seed(seed))
    assert 0 <= top and top + box_h <= height and 0 < box_h
    assert 0 <= left and left + box_w <= width and 0 < box_w
    # Area and aspect ratio lie in the requested ranges up to the rounding of each side.
    area = height * width
    assert (box_w - 0.5) * (box_h - 0.5) <= 1.0 * area + 1e-9
    assert (box_w + 0.5) * (box_h + 0.5) >= 0.08 * area
    assert (box_w - 0.5) / (box_h + 0.5) <= 4 / 3 and (box_w + 0.5) / (box_h - 0.5) >= 3 / 4
    out = crop(img, torch.Generator().manual_seed(seed))
    by_hand = img.crop((left, top, left + box_w, top + box_h)).resize((8, 8),
                                                                      Image.Resampling.BILINEAR)
    assert out.size == (8, 8)
    assert np.array_equal(np.array(out), np.array(by_hand))


def test_random_resized_crop_uses_the_global_rng_by_default():
    crop = RandomResizedCrop(8)
    with torch.random.fork_rng():
        torch.manual_seed(11)
        from_global = [crop.get_params(40, 60) for _ in range(5)]
    gen = torch.Generator().manual_seed(11)
    assert from_global == [crop.get_params(40, 60, gen) for _ in range(5)]
    assert len(set(from_global)) > 1


@pytest.mark.parametrize(("height", "width", "box"), [
    (10, 40, (0, 13, 10, 13)),   # too wide: h = 10, w = round(10 * 4/3) = 13, left = 27 // 2
    (40, 10, (13, 0, 13, 10)),   # too tall: w = 10, h = round(10 / (3/4)) = 13, top = 27 // 2
    (20, 25, (0, 0, 20, 25)),    # ratio 1.25 within [3/4, 4/3]: the whole image
])
def test_random_resized_crop_falls_back_to_central_crop_after_ten_attempts(height, width, box):
    crop = RandomResizedCrop(8, scale=(1.5, 2.0))  # every attempt exceeds the image
    gen = torch.Generator().manual_seed(3)
    assert crop.get_params(height, width, gen) == box
    # Exactly ten attempts, two uniform draws each, were consumed from the generator.
    replay = torch.Generator().manual_seed(3)
    for _ in range(20):
        torch.empty(1).uniform_(generator=replay)
    assert torch.equal(torch.rand(4, generator=gen), torch.rand(4, generator=replay))


def test_random_resized_crop_rejects_bad_ranges():
    with pytest.raises(IJCKDError, match="`scale` must satisfy"):
        RandomResizedCrop(8, scale=(0.5, 0.1))
    with pytest.raises(IJCKDError, match="`ratio` must satisfy"):
        RandomResizedCrop(8, ratio=(0.0, 1.0))
    with pytest.raises(IJCKDError, match="`size` must be a positive integer"):
        RandomResizedCrop(0)


def test_train_pipeline_is_crop_then_flip_from_one_rng_stream():
    img = gradient_image(30, 50)
    crop = RandomResizedCrop(8)
    flips = set()
    for seed in range(8):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            out = imagenet_train_transform(image_size=8)(img)
        gen = torch.Generator().manual_seed(seed)
        top, left, h, w = crop.get_params(30, 50, gen)
        flip = torch.rand(1, generator=gen).item() < 0.5
        flips.add(flip)
        pixels = np.array(img.crop((left, top, left + w, top + h)).resize(
            (8, 8), Image.Resampling.BILINEAR))
        if flip:
            pixels = pixels[:, ::-1]
        assert out.shape == (3, 8, 8)
        torch.testing.assert_close(out, normalised(np.ascontiguousarray(pixels)))
    assert flips == {True, False}


def test_horizontal_flip_probability_extremes():
    img = gradient_image(3, 4)
    assert np.array_equal(np.array(RandomHorizontalFlip(1.0)(img)), np.array(img)[:, ::-1])
    assert RandomHorizontalFlip(0.0)(img) is img


# ------------------------------------------------------------ folders on disk


def write_folder(root, counts, *, size=(12, 16), ext=".png", offset=0):
    """``root/<class>/img<i><ext>`` for each class in ``counts`` ({class: n}); returns
    {path: pixels (H, W, 3)}."""
    written = {}
    for c, (name, count) in enumerate(sorted(counts.items())):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            height, width = size[0] + i, size[1] + 2 * c
            img = gradient_image(height, width, offset=offset + 17 * c + 5 * i)
            path = root / name / f"img{i}{ext}"
            img.save(path)
            written[str(path)] = np.array(img)
    return written


@pytest.fixture
def tiny_tree(tmp_path):
    counts = {"cat": 4, "dog": 4, "eel": 4}
    write_folder(tmp_path / "train", counts)
    val = write_folder(tmp_path / "val", counts, offset=3)
    return tmp_path, val


def test_imagefolder_splits_sizes_stratified_and_disjoint(tiny_tree):
    root, _ = tiny_tree
    splits = build_dataset("imagefolder", data_dir=root, seed=0, image_size=8, resize=10)
    assert {"imagefolder", "imagenet"} <= set(dataset_names())
    assert splits.num_classes == 3 and splits.class_names == ("cat", "dog", "eel")
    assert splits.input_shape == (3, 8, 8)
    assert splits.sizes == {"train": 12, "fit": 6, "eval": 6}
    assert splits.fit.class_counts(3).tolist() == [2, 2, 2]
    assert splits.eval.class_counts(3).tolist() == [2, 2, 2]
    assert set(splits.fit.indices).isdisjoint(splits.eval.indices)
    assert sorted(np.concatenate([splits.fit.indices, splits.eval.indices])) == list(range(12))
    # Labels follow the sorted class folders.
    assert splits.train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    x, y = splits.train[5]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.item() == 1


def test_eval_items_equal_the_pipeline_applied_to_the_file(tiny_tree):
    root, val_pixels = tiny_tree
    splits = build_dataset("imagefolder", data_dir=root, seed=1, image_size=8, resize=10)
    for item in range(len(splits.eval)):
        path = splits.eval.path(item)
        pixels = val_pixels[path]
        height, width = pixels.shape[:2]
        new_h, new_w = shorter_side_size(height, width, 10)
        resized = np.array(Image.fromarray(pixels).resize((new_w, new_h),
                                                          Image.Resampling.BILINEAR))
        top, left = int(round((new_h - 8) / 2.0)), int(round((new_w - 8) / 2.0))
        x, y = splits.eval[item]
        torch.testing.assert_close(x, normalised(resized[top:top + 8, left:left + 8]))
        assert splits.class_names[y.item()] in path


def test_splits_depend_only_on_the_seed(tiny_tree):
    root, _ = tiny_tree
    first = build_dataset("imagefolder", data_dir=root, seed=4, image_size=8, resize=10)
    again = build_dataset("imagefolder", data_dir=root, seed=4, image_size=8, resize=10)
    other = [build_dataset("imagefolder", data_dir=root, seed=s, image_size=8, resize=10)
             for s in (5, 6, 7)]
    assert np.array_equal(first.fit.indices, again.fit.indices)
    assert any(not np.array_equal(first.fit.indices, o.fit.indices) for o in other)


def test_fit_fraction_and_no_augmentation(tiny_tree):
    root, _ = tiny_tree
    splits = build_dataset("imagefolder", data_dir=root, fit_fraction=0.25, augment=False,
                           image_size=8, resize=8)
    assert splits.sizes == {"train": 12, "fit": 3, "eval": 9}
    assert splits.fit.class_counts(3).tolist() == [1, 1, 1]
    # Without augmentation the train split is deterministic.
    assert torch.equal(splits.train[0][0], splits.train[0][0])


def test_fit_dir_gives_a_separate_fit_split(tiny_tree):
    root, _ = tiny_tree
    write_folder(root / "holdout", {"cat": 2, "dog": 1, "eel": 3}, offset=9)
    splits = build_dataset("imagefolder", data_dir=root, fit_dir="holdout", image_size=8,
                           resize=10)
    assert splits.sizes == {"train": 12, "fit": 6, "eval": 12}
    assert splits.fit.class_counts(3).tolist() == [2, 1, 3]
    assert all("holdout" in splits.fit.path(i) for i in range(6))
    with pytest.raises(IJCKDError, match="is val/ itself"):
        build_dataset("imagefolder", data_dir=root, fit_dir=root / "val")
    with pytest.raises(IJCKDError, match="not both"):
        build_dataset("imagefolder", data_dir=root, fit_dir="holdout", fit_fraction=0.3)
    with pytest.raises(IJCKDError, match="is not a folder"):
        build_dataset("imagefolder", data_dir=root, fit_dir="nowhere")


def test_train_items_are_augmented_views(tiny_tree):
    root, _ = tiny_tree
    splits = build_dataset("imagefolder", data_dir=root, image_size=8, resize=10)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        views = [splits.train[0][0] for _ in range(4)]
    assert all(v.shape == (3, 8, 8) for v in views)
    assert any(not torch.equal(views[0], v) for v in views[1:])
    plain = splits.train.with_transform(imagenet_eval_transform(8, 10))
    assert torch.equal(plain[0][0], plain[0][0]) and len(plain) == len(splits.train)


def test_files_are_filtered_sorted_and_decoded_to_rgb(tmp_path):
    for split in ("train", "val"):
        for name in ("a", "b"):
            folder = tmp_path / split / name
            (folder / "deeper").mkdir(parents=True)
            gradient_image(9, 9).convert("L").save(folder / "z.png")  # grayscale
            gradient_image(9, 9).save(folder / "deeper" / "m.JPEG")  # upper-case extension
            gradient_image(9, 9).save(folder / "k.jpg", quality=90)
            (folder / "notes.txt").write_text("not an image")
            (folder / ".hidden.jpg").write_bytes(b"macOS fork, not an image")
            (folder / ".cache").mkdir()
            gradient_image(9, 9).save(folder / ".cache" / "x.png")
    splits = build_dataset("imagefolder", data_dir=tmp_path, image_size=8, resize=9)
    names = [splits.train.path(i).split("/train/")[1] for i in range(len(splits.train))]
    # torchvision's order: folders sorted by path (a < a/deeper), files sorted within each.
    assert names == ["a/k.jpg", "a/z.png", "a/deeper/m.JPEG",
                     "b/k.jpg", "b/z.png", "b/deeper/m.JPEG"]
    gray = load_rgb(tmp_path / "train" / "a" / "z.png")
    assert gray.mode == "RGB" and gray.size == (9, 9)
    assert splits.eval[0][0].shape == (3, 8, 8)


def test_layout_errors_are_one_clear_line(tmp_path):
    write_folder(tmp_path / "train", {"cat": 2, "dog": 2})
    with pytest.raises(IJCKDError, match="needs data_dir"):
        build_dataset("imagefolder")
    with pytest.raises(IJCKDError, match=r"val' not found"):
        build_dataset("imagefolder", data_dir=tmp_path)
    write_folder(tmp_path / "val", {"cat": 2, "emu": 2})
    with pytest.raises(IJCKDError, match="same class folders as train/ \\(2\\), but has "
                                         "missing 'dog'; unexpected 'emu'") as info:
        build_dataset("imagefolder", data_dir=tmp_path)
    assert "\n" not in str(info.value)


def test_flat_val_folder_is_explained(tmp_path):
    write_folder(tmp_path / "train", {"cat": 2, "dog": 2})
    (tmp_path / "val").mkdir()
    gradient_image(8, 8).save(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(IJCKDError, match="outside class folders.*valprep"):
        build_dataset("imagefolder", data_dir=tmp_path)


def test_empty_class_and_bad_options(tiny_tree):
    root, _ = tiny_tree
    (root / "train" / "fox").mkdir()
    (root / "val" / "fox").mkdir()
    with pytest.raises(IJCKDError, match="fox' holds no images"):
        build_dataset("imagefolder", data_dir=root)
    (root / "train" / "fox").rmdir()
    (root / "val" / "fox").rmdir()
    with pytest.raises(IJCKDError, match="unknown option"):
        build_dataset("imagefolder", data_dir=root, crop=5)
    with pytest.raises(IJCKDError, match="`resize` \\(8\\) must be at least `image_size`"):
        build_dataset("imagefolder", data_dir=root, image_size=10, resize=8)
    with pytest.raises(IJCKDError, match="`fit_fraction` must lie in"):
        build_dataset("imagefolder", data_dir=root, fit_fraction=1.0)
    with pytest.raises(IJCKDError, match="unknown option"):
        build_dataset("imagenet", data_dir=root, mean=(0.5, 0.5, 0.5))


def test_imagenet_requires_1000_classes(tiny_tree):
    root, _ = tiny_tree
    with pytest.raises(IJCKDError, match="needs 1000 class folders.*found 3.*'imagefolder'"):
        build_dataset("imagenet", data_dir=root)


def test_imagenet_with_1000_tiny_classes(tmp_path):
    img = Image.new("RGB", (2, 3), (10, 200, 30))
    names = [f"n{index:08d}" for index in range(1000)]
    for split, per_class in (("train", 1), ("val", 2)):
        for name in names:
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(per_class):
                img.save(tmp_path / split / name / f"{i}.png")
    splits = build_dataset("imagenet", data_dir=tmp_path, image_size=2, resize=2)
    assert splits.num_classes == 1000 and splits.class_names[0] == "n00000000"
    assert splits.sizes == {"train": 1000, "fit": 1000, "eval": 1000}
    assert (splits.fit.class_counts(1000) == 1).all()
    x, y = splits.eval[999]
    assert x.shape == (3, 2, 2) and y.item() == 999


def test_corrupt_image_fails_naming_it(tiny_tree):
    root, _ = tiny_tree
    (root / "val" / "cat" / "img0.png").write_bytes(b"\x89PNG truncated")
    splits = build_dataset("imagefolder", data_dir=root, image_size=8, resize=10)
    # Listing never opens files; the error comes when the image is read.
    (split, item), = [(s, i) for s in (splits.fit, splits.eval) for i in range(len(s))
                      if s.path(i).endswith("cat/img0.png")]
    with pytest.raises(IJCKDError, match="img0.png' cannot be decoded"):
        split[item]


def test_splits_pickle_and_work_in_dataloader_workers(tiny_tree):
    root, _ = tiny_tree
    splits = build_dataset("imagefolder", data_dir=root, image_size=8, resize=10)
    clone = pickle.loads(pickle.dumps(splits.eval))
    assert isinstance(clone, ImageFolderSplit) and len(clone) == len(splits.eval)
    assert torch.equal(clone[2][0], splits.eval[2][0])
    loader = torch.utils.data.DataLoader(splits.eval, batch_size=4, num_workers=2)
    xs, ys = zip(*loader, strict=True)
    assert torch.cat(xs).shape == (6, 3, 8, 8)
    assert torch.equal(torch.cat(ys), splits.eval.labels)
    assert torch.equal(torch.cat(xs)[2], splits.eval[2][0])


def test_split_validates_its_arrays(tmp_path):
    transform = imagenet_eval_transform(8, 10)
    with pytest.raises(IJCKDError, match="numpy bytes array"):
        ImageFolderSplit(tmp_path, ["a.png"], [0], transform=transform, input_shape=(3, 8, 8))
    with pytest.raises(IJCKDError, match="`labels` must be \\(1,\\) integers"):
        ImageFolderSplit(tmp_path, np.array([b"a.png"]), [0.5], transform=transform,
                         input_shape=(3, 8, 8))
