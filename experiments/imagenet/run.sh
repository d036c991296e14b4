#!/usr/bin/env bash
# Run an ImageNet reference recipe with torchrun on NGPUS GPUs of NNODES nodes: distill
# (checkpoints every run.ckpt_every epochs, resumes from the latest one when re-run) and
# track the bound terms at every checkpoint (distill --track: features extracted on all
# GPUs, estimated by rank 0, rows in RUN_DIR/bounds.csv).
#
#   DATA_DIR=/data/imagenet TEACHER_WEIGHTS=/data/weights/resnet34-b627a593.pth NGPUS=8 \
#     bash experiments/imagenet/run.sh resnet34_resnet18 [key=value ...]
#
# Recipes: resnet34_resnet18, resnet50_mobilenetv1 (the YAML files next to this script).
# Environment:
#   DATA_DIR         ImageNet folder with train/<wnid>/ and val/<wnid>/ (required)
#   TEACHER_WEIGHTS  torchvision-layout teacher weights, e.g. resnet34-b627a593.pth (required)
#   NGPUS            GPUs per node (default 8)
#   NNODES           nodes (default 1); NODE_RANK this node's index (default 0)
#   MASTER_ADDR      address of node 0 (default 127.0.0.1); MASTER_PORT (default 29500)
#   RUN_DIR          run directory (default runs/imagenet/<recipe>); several nodes: on a
#                    filesystem every node sees
#   PYTHON           the interpreter with ijckd_bounds installed (default python)
#   TRACK            1 (default): track the bound terms at every checkpoint, online;
#                    0: only train (then run `ijckd-bounds track RUN_DIR` on any machine)
# Extra key=value arguments override the recipe (e.g. optim.epochs=10 track.mmd_max_n=10000).
# Run the same command on every node (NODE_RANK=0 .. NNODES-1); re-run it to resume.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
recipes="resnet34_resnet18, resnet50_mobilenetv1"
recipe="${1:-}"
if [[ -z "$recipe" || ! -f "$here/$recipe.yaml" ]]; then
    echo "run.sh: unknown recipe '${recipe}'; choose one of: $recipes" >&2
    exit 2
fi
shift
if [[ -z "${DATA_DIR:-}" ]]; then
    echo "run.sh: set DATA_DIR to the ImageNet folder holding train/<wnid>/ and val/<wnid>/" >&2
    exit 2
fi
if [[ -z "${TEACHER_WEIGHTS:-}" ]]; then
    echo "run.sh: set TEACHER_WEIGHTS to the teacher's torchvision weights file (.pth)" >&2
    exit 2
fi
if [[ ! -d "$DATA_DIR/train" || ! -d "$DATA_DIR/val" ]]; then
    echo "run.sh: DATA_DIR=$DATA_DIR must hold train/ and val/ class folders" >&2
    exit 2
fi
if [[ ! -f "$TEACHER_WEIGHTS" ]]; then
    echo "run.sh: TEACHER_WEIGHTS=$TEACHER_WEIGHTS is not a file" >&2
    exit 2
fi

NGPUS="${NGPUS:-8}"
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
RUN_DIR="${RUN_DIR:-runs/imagenet/$recipe}"
PYTHON="${PYTHON:-python}"
track=()
case "${TRACK:-1}" in
    1) track=(--track) ;;
    0) ;;
    *) echo "run.sh: TRACK must be 1 or 0, got '${TRACK}'" >&2; exit 2 ;;
esac
# torchrun would set 1 thread per process; rank 0 estimates the bound terms on the CPU
# between epochs, so give each process its share of this node's cores instead.
if [[ -z "${OMP_NUM_THREADS:-}" ]]; then
    cores="$(nproc)"
    OMP_NUM_THREADS=$(( cores / NGPUS > 0 ? cores / NGPUS : 1 ))
    export OMP_NUM_THREADS
fi

set -x
exec "$PYTHON" -m torch.distributed.run \
    --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NGPUS" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    -m ijckd_bounds distill --config "$here/$recipe.yaml" --resume ${track[@]+"${track[@]}"} \
    --teacher-weights "$TEACHER_WEIGHTS" \
    "data.data_dir=$DATA_DIR" "run.run_dir=$RUN_DIR" "$@"
