"""Training throughput of each method through the trainer vs. a minimal hand-written loop.

    python benchmarks/bench_train.py                      # CPU, float32
    python benchmarks/bench_train.py --device cuda --amp bf16 --channels-last

resnet32x4 teacher -> resnet8x4 student on random 32x32 inputs (100 classes), batch 64.
For every method both sides do the same work per step: teacher forward without grad
(not for ``ce``, which needs no teacher), student (+ connector) forward, the method's
loss, backward, SGD step. The hand-written side is the plain ``zero_grad /
loss.backward() / step`` loop with the loss written out inline; the trainer side is
``ijckd_bounds.train.loop.fit`` with the method's objective (finite check, per-term
logging, callbacks and all). Blocks of steps alternate between the two so machine load
hits both alike; the fastest block of each side gives images/s (the usual best-of-N:
other processes only ever slow a block down). Goal: ratio >= 0.95.
"""

import argparse
import math
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from ijckd_bounds.models import build_model
from ijckd_bounds.models.base import ZooModel
from ijckd_bounds.models.connectors import align_maps
from ijckd_bounds.schema import DISTILLATION_METHODS as METHODS
from ijckd_bounds.train.config import MethodConfig
from ijckd_bounds.train.distributed import Precision
from ijckd_bounds.train.loop import TrainState, fit
from ijckd_bounds.train.objectives import build_objective


def hand_written_loss(method, objective, teacher, x, y):
    """The method's loss written out inline, on the objective's own modules."""
    student, connector = objective.student, objective.connector
    if method == "ce":  # no teacher in the work of a plain cross-entropy student
        return F.cross_entropy(student(x)[0], y)
    # Teacher first: its activations are freed before the student's are built (the
    # faster order on CPU, and the one the objectives use).
    with torch.no_grad():
        t_logits, t_feat, t_map = teacher.forward_with_map(x)
    s_logits, s_feat, s_map = student.forward_with_map(x)
    w, b = teacher.classifier.weight, teacher.classifier.bias

    def kl(z_s, z_t, temp=4.0):
        return F.kl_div(F.log_softmax(z_s / temp, 1), F.softmax(z_t / temp, 1),
                        reduction="batchmean") * temp * temp

    if method == "kd":
        return 0.1 * F.cross_entropy(s_logits, y) + 0.9 * kl(s_logits, t_logits)
    if method == "fitnet":
        hint = connector(s_map)
        return F.cross_entropy(s_logits, y) + 100 * F.mse_loss(hint, align_maps(hint, t_map))
    if method == "srrl":
        proj = connector(s_feat)
        return (F.cross_entropy(s_logits, y) + kl(s_logits, t_logits) + F.mse_loss(proj, t_feat)
                + F.mse_loss(F.linear(proj, w, b), t_logits))
    proj = connector(s_map)
    feat = F.mse_loss(proj, align_maps(proj, t_map))
    if method == "simkd":
        return feat
    logits = F.linear(ZooModel.pool(proj), w, b)
    return F.cross_entropy(logits, y) + F.mse_loss(logits, t_logits) + feat


class SyntheticData:
    """The ``data`` object ``fit`` wants, over batches already on the device."""

    def __init__(self, batches):
        self.batches = batches

    def train_batches(self, epoch):
        return self.batches

    def to_device(self, x, y):
        return x, y

    def reduce(self, tensor):
        return tensor

    def evaluate(self, objective):
        return math.nan

    def batches_bar(self, batches, epoch):
        return batches


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_method(method, args, device):
    torch.manual_seed(0)
    shape = (3, 32, 32)
    teacher = build_model("resnet32x4", 100, shape)
    student = build_model("resnet8x4", 100, shape)
    example = torch.randn(2, *shape)
    objective = build_objective(MethodConfig(name=method), student, teacher, example)
    memory = torch.channels_last if args.channels_last and device.type == "cuda" else None
    if memory is not None:
        objective.to(memory_format=memory)
    objective.to(device)
    teacher = teacher.to(device).eval()  # the objective froze it; here for the hand loop
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(args.steps):
        x = torch.randn(args.batch_size, *shape, generator=generator).to(device)
        if memory is not None:
            x = x.contiguous(memory_format=memory)
        y = torch.randint(0, 100, (args.batch_size,), generator=generator)
        batches.append((x, y.to(device)))
    optimizer = torch.optim.SGD(objective.trainable_parameters(), lr=0.01, momentum=0.9,
                                weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [])
    precision = Precision(args.amp, device)
    scaler = torch.amp.GradScaler("cuda") if precision.scaler is not None else None
    dtype = precision.dtype

    def hand_written_block():
        objective.train()
        for x, y in batches:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
                loss = hand_written_loss(method, objective, teacher, x, y)
            if scaler is None:
                loss.backward()
                optimizer.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()

    def trainer_block():
        fit(objective, objective, optimizer, scheduler, precision, SyntheticData(batches),
            TrainState(), [], epochs=1, save_checkpoint=lambda state, metrics: None)

    timings = {"hand": [], "trainer": []}
    for block in range(args.warmup + args.repeats):
        order = (("hand", hand_written_block), ("trainer", trainer_block))
        if block % 2:
            order = order[::-1]
        for name, run in order:
            sync(device)
            start = time.perf_counter()
            run()
            sync(device)
            if block >= args.warmup:
                timings[name].append(time.perf_counter() - start)
    images = args.steps * args.batch_size
    hand = images / min(timings["hand"])
    trainer = images / min(timings["trainer"])
    return hand, trainer


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"))
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2, help="steps per timed block")
    parser.add_argument("--warmup", type=int, default=1, help="untimed blocks per side")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per side")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    print(f"resnet32x4 -> resnet8x4, batch {args.batch_size}, {device}, amp={args.amp}, "
          f"channels_last={args.channels_last}, torch threads {torch.get_num_threads()}, "
          f"{args.repeats} x {args.steps} steps per side")
    print(f"{'method':<8} {'hand img/s':>11} {'trainer img/s':>14} {'ratio':>6}")
    for method in args.methods:
        hand, trainer = bench_method(method, args, device)
        print(f"{method:<8} {hand:>11.1f} {trainer:>14.1f} {trainer / hand:>6.3f}", flush=True)


if __name__ == "__main__":
    main()
