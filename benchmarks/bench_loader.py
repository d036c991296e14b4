"""Throughput of the ImageFolder loader alone (decode + transforms + collate), on the CPU.

    python benchmarks/bench_loader.py                       # synthetic 500x375 JPEGs
    python benchmarks/bench_loader.py --data-dir /data/imagenet --max-images 2000

Without ``--data-dir`` it writes an ImageFolder tree (train/ and val/) of JPEGs the size of
a typical ImageNet photo (500x375, quality 90, smooth content plus sensor-like noise, so
files weigh about what real ones do) to a temporary folder. It then times one pass of a
``DataLoader`` over the train images with the training transform (RandomResizedCrop +
flip) and with the evaluation transform (Resize + CenterCrop), for each ``--workers``
count, and prints images per second. The first batch (worker start-up) is not timed.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ijckd_bounds.data import build_dataset
from ijckd_bounds.data.image_transforms import imagenet_eval_transform


def write_synthetic_tree(root, num_classes, per_class, width, height, seed=0):
    """JPEGs at ``root/{train,val}/class<k>/<i>.jpg``; returns their mean size in bytes."""
    rng = np.random.default_rng(seed)
    sizes = []
    for split, count in (("train", per_class), ("val", max(2, per_class // 4))):
        for k in range(num_classes):
            folder = Path(root) / split / f"class{k:03d}"
            folder.mkdir(parents=True)
            for i in range(count):
                # Low-resolution colour blobs upsampled (photo-like smooth regions) plus
                # per-pixel noise (texture the JPEG encoder must keep).
                coarse = rng.integers(0, 256, size=(height // 16, width // 16, 3), dtype=np.uint8)
                smooth = np.asarray(Image.fromarray(coarse).resize((width, height),
                                                                   Image.Resampling.BICUBIC))
                noisy = smooth.astype(np.int16) + rng.normal(0, 10, size=smooth.shape)
                img = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
                path = folder / f"{i:04d}.jpg"
                img.save(path, quality=90)
                sizes.append(path.stat().st_size)
    return float(np.mean(sizes))


def time_loader(dataset, workers, batch_size, max_images):
    """(images timed, seconds) for one pass, not counting the first batch."""
    if max_images and max_images < len(dataset):
        dataset = torch.utils.data.Subset(dataset, range(max_images))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         num_workers=workers)
    batches = iter(loader)
    next(batches)  # start-up: workers spawned, first images decoded
    start, images = time.perf_counter(), 0
    for x, _ in batches:
        images += len(x)
    return images, time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="an existing ImageFolder tree with train/ and val/")
    parser.add_argument("--classes", type=int, default=4, help="synthetic: class folders")
    parser.add_argument("--per-class", type=int, default=80, help="synthetic: train images "
                        "per class")
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--resize", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--max-images", type=int, default=0, help="time at most this many "
                        "train images (0: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads of the "
                        "main process (DataLoader workers always use 1)")
    args = parser.parse_args(argv)
    # The per-image tensor work is tiny; more intra-op threads only add contention, and the
    # workers run single-threaded, so the main process does the same by default.
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir
        if data_dir is None:
            data_dir = tmp
            mean_bytes = write_synthetic_tree(tmp, args.classes, args.per_class, args.width,
                                              args.height)
            print(f"synthetic tree: {args.classes} classes x {args.per_class} train JPEGs of "
                  f"{args.width}x{args.height}, mean {mean_bytes / 1024:.0f} KiB")
        splits = build_dataset("imagefolder", data_dir=data_dir, image_size=args.image_size,
                               resize=args.resize)
        train = splits.train
        pipelines = {"train (RandomResizedCrop+flip)": train,
                     "eval (Resize+CenterCrop)": train.with_transform(
                         imagenet_eval_transform(args.image_size, args.resize))}
        print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, "
              f"batch {args.batch_size}, output {args.image_size}px")
        print(f"{'transform':<32} {'workers':>7} {'images':>7} {'seconds':>8} {'images/s':>9}")
        for label, dataset in pipelines.items():
            for workers in args.workers:
                images, seconds = time_loader(dataset, workers, args.batch_size, args.max_images)
                print(f"{label:<32} {workers:>7} {images:>7} {seconds:>8.2f} "
                      f"{images / seconds:>9.1f}")


if __name__ == "__main__":
    main()
