"""Cost of layer tracking (``layers.csv``) at one checkpoint against one training epoch.

    OMP_NUM_THREADS=2 python benchmarks/bench_layers.py                  # CPU
    python benchmarks/bench_layers.py --device cuda

A CIFAR-100-sized pair: resnet32x4 teacher -> resnet8x4 student (stages layer1, layer2,
pool: widths 64, 128, 256), K = 100, the CIFAR-100 protocol's splits (n_eval = n_fit =
5,000 of the test images, 50,000 training images). Random 32x32 inputs; the probe and CKA
inputs are class-structured Gaussian features of the stages' widths (random features with
random labels would make the probes' L-BFGS run to its iteration cap, which real features
do not).

- One training epoch: 50,000 / 64 steps of the FitNet-style step (teacher forward without
  grad, student forward and backward, SGD step) on the same device. ``--train-steps``
  steps are timed after a warm-up and scaled to the epoch.
- Layer tracking at one checkpoint: the student's stages on n_eval + n_fit images
  (``--extract-images`` of them timed, scaled), the same-recipe probe on each of its 3
  stages (fit on n_fit, error on n_eval), and the 3 x 3 stage CKA matrix with its
  jackknife intervals, both at full size.
- Once per run (the teacher is frozen): the teacher's stages (scaled like the student's)
  and its 3 probes; reported separately and spread over ``--epochs`` checkpoints.
- The batched CKA matrix (best of 3) against one CKA of the widest pair and against the 9
  pairs one by one (``feat_cka``, best of 3).

Goal: layer tracking at one checkpoint <= 10% of one training epoch.
"""

import argparse
import math
import time

import torch
import torch.nn.functional as F

from ijckd_bounds.estimators.cka import feat_cka
from ijckd_bounds.estimators.layers import stage_cka_matrix, stage_probe_errors
from ijckd_bounds.models import build_model
from ijckd_bounds.models.connectors import FitNetRegressor, align_maps

K = 100
SHAPE = (3, 32, 32)
TRAIN_IMAGES = 50_000
BATCH = 64
N_EVAL = N_FIT = 5_000


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def train_epoch_seconds(teacher, student, device, steps):
    """Seconds per FitNet-style step (best of 3 blocks), times steps per epoch."""
    x = torch.randn(BATCH, *SHAPE, device=device)
    y = torch.randint(0, K, (BATCH,), device=device)
    with torch.no_grad():
        _, _, t_map = teacher.forward_with_map(x[:2])
        _, _, s_map = student.forward_with_map(x[:2])
    regressor = FitNetRegressor(s_map.shape[1:], t_map.shape[1:]).to(device)
    params = list(student.parameters()) + list(regressor.parameters())
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    student.train()

    def step():
        with torch.no_grad():
            _, _, t_map = teacher.forward_with_map(x)
        logits, _, s_map = student.forward_with_map(x)
        hint = regressor(s_map)
        loss = F.cross_entropy(logits, y) + 100 * F.mse_loss(hint, align_maps(hint, t_map))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    blocks = []
    for _ in range(3):
        seconds, _ = timed(lambda: [step() for _ in range(steps)], device)
        blocks.append(seconds / steps)
    per_step = min(blocks)
    return per_step * math.ceil(TRAIN_IMAGES / BATCH), per_step


@torch.no_grad()
def stage_seconds(model, device, images, batch):
    """Seconds for ``forward_stages`` on ``images`` inputs (moved to the CPU as the
    tracker does), best of 2, per image."""
    model.eval()
    x = torch.randn(batch, *SHAPE, device=device)

    def run():
        for _ in range(max(1, images // batch)):
            _, stages = model.forward_stages(x)
            [s.float().cpu() for s in stages]

    run()  # warm-up
    seconds = min(timed(run, device)[0] for _ in range(2))
    return seconds / (max(1, images // batch) * batch)


def stage_features(widths, n, seed, device):
    """Class-structured Gaussian features (n, w) per width, and their labels."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, K, (n,), generator=g)
    feats = []
    for width in widths:
        means = torch.randn(K, width, generator=g) * (2.0 / math.sqrt(width))
        feats.append((means[y] + torch.randn(n, width, generator=g) / math.sqrt(width))
                     .to(device))
    return feats, y.to(device)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--train-steps", type=int, default=4)
    parser.add_argument("--extract-images", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=240,
                        help="checkpoints per run the teacher's one-off cost is spread over")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    teacher = build_model("resnet32x4", K, SHAPE).to(device).eval()
    student = build_model("resnet8x4", K, SHAPE).to(device)

    epoch_s, step_s = train_epoch_seconds(teacher, student, device, args.train_steps)
    batch = min(256, args.extract_images)
    student_img_s = stage_seconds(student, device, args.extract_images, batch)
    teacher_img_s = stage_seconds(teacher, device, args.extract_images, batch)
    student_extract_s = student_img_s * (N_EVAL + N_FIT)
    teacher_extract_s = teacher_img_s * (N_EVAL + N_FIT)

    widths_s = [s.shape[1] for s in student.eval().forward_stages(
        torch.randn(2, *SHAPE, device=device))[1]]
    widths_t = [s.shape[1] for s in teacher.forward_stages(
        torch.randn(2, *SHAPE, device=device))[1]]
    (s_eval, y), (s_fit, y_fit) = (stage_features(widths_s, N_EVAL, 1, device),
                                   stage_features(widths_s, N_FIT, 2, device))
    t_eval, _ = stage_features(widths_t, N_EVAL, 3, device)
    t_fit, _ = stage_features(widths_t, N_FIT, 4, device)
    y_fit = y_fit[:N_FIT]
    probe_s, _ = timed(lambda: stage_probe_errors(s_eval, y, s_fit, y_fit, num_classes=K),
                       device)
    probe_t, _ = timed(lambda: stage_probe_errors(t_eval, y, t_fit, y_fit, num_classes=K),
                       device)
    stage_cka_matrix(t_eval[:1], s_eval[:1])  # warm-up
    matrix_s = min(timed(lambda: stage_cka_matrix(t_eval, s_eval), device)[0]
                   for _ in range(3))
    one_s = min(timed(lambda: feat_cka(t_eval[-1], s_eval[-1]), device)[0] for _ in range(3))
    pairs_s = min(timed(lambda: [feat_cka(t, s) for t in t_eval for s in s_eval], device)[0]
                  for _ in range(3))

    per_ckpt = student_extract_s + probe_s + matrix_s
    once = teacher_extract_s + probe_t
    print(f"device {device}, torch threads {torch.get_num_threads()}")
    print(f"training: {step_s * 1e3:.0f} ms per step of {BATCH} (best of 3 blocks of "
          f"{args.train_steps}) -> one epoch of {TRAIN_IMAGES:,} images {epoch_s:.1f} s")
    print(f"layer tracking per checkpoint: {per_ckpt:.1f} s = student stages "
          f"{student_extract_s:.1f} s ({N_EVAL + N_FIT:,} images, {args.extract_images} timed) "
          f"+ 3 probes {probe_s:.1f} s + CKA matrix {matrix_s:.2f} s")
    print(f"  ratio to one training epoch: {per_ckpt / epoch_s:.3f} (goal <= 0.10)")
    print(f"once per run: teacher stages {teacher_extract_s:.1f} s + 3 probes {probe_t:.1f} s "
          f"= {once:.1f} s; spread over {args.epochs} checkpoints "
          f"{once / args.epochs:.2f} s each, ratio with it "
          f"{(per_ckpt + once / args.epochs) / epoch_s:.3f}")
    print(f"CKA: 3x3 matrix {matrix_s:.2f} s, one CKA of the widest pair {one_s:.2f} s "
          f"(matrix / one = {matrix_s / one_s:.2f}), 9 pairs one by one {pairs_s:.2f} s "
          f"(speed-up {pairs_s / matrix_s:.2f}x)")


if __name__ == "__main__":
    main()
