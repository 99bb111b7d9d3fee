#!/usr/bin/env bash
# Everything worth checking on a lent GPU, in one call (device time is scarce): the tests on real
# CuPy, the break-even table, the step benchmarks with synchronised timings (and PyTorch beside
# them when it is installed), and one-epoch timings of the demo's settings on 50k CIFAR-shaped
# images; full-width VGG-16 on CIFAR-10 when DATA is carried (below). Logs go to $OUT (default ./gpu-out).
# usage: bash benchmarks/gpu_session.sh   (device tool: carry [".data"], command "OUT=$OUT bash benchmarks/gpu_session.sh")
# ONLY="bench_sparse demo_epochs" runs just those steps (a rerun within what device time is left).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export TINYITOP_BACKEND=cupy PYTHONUNBUFFERED=1
ONLY=${ONLY:-}
BENCH_FLAGS=${BENCH_FLAGS:---quick}
SECTIONS=${SECTIONS:-ABD}
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.txt, say how it went
  local name=$1 limit=$2
  shift 2
  if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
  local start=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
  echo "$name: exit $? in $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
}
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import cupy, numpy, scipy; print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'scipy', scipy.__version__)"
  python3 -c "import torch; print('torch', torch.__version__)" 2>&1 | tail -1; } >"$OUT/versions.txt" 2>&1

step pytest_gpu 100 env TINYITOP_TEST_REAL_CUPY=1 python3 -m pytest -q -p no:cacheprovider \
  tests/test_gpu.py tests/test_sparse_layers.py tests/test_data.py tests/test_cupy_path.py tests/test_topology.py \
  tests/test_one_update.py tests/test_optim.py
step breakeven 90 python3 benchmarks/bench_breakeven.py --repeats 5 --plot "$OUT/breakeven_gpu.png"
step bench_sparse 200 python3 benchmarks/bench_sparse.py $BENCH_FLAGS --sections $SECTIONS
# The weight-gradient product both ways round: which one cuBLAS prefers was never measured.
step weight_gradient 30 python3 benchmarks/bench_weight_gradient.py --repeats 10

# One epoch of the demo's settings (paper MLP, SET 0.95 ERK, crop + flip) on 50k random CIFAR-shaped
# images: the time per epoch does not depend on the pixels. The first epoch compiles CuPy's kernels.
python3 - <<'EOF'
import numpy as np
rng = np.random.default_rng(0)
np.savez("/tmp/cifar_shaped.npz", train_x=rng.integers(0, 256, (50000, 3, 32, 32), dtype=np.uint8),
         train_y=rng.integers(0, 10, 50000), test_x=rng.integers(0, 256, (10000, 3, 32, 32), dtype=np.uint8),
         test_y=rng.integers(0, 10, 10000))
EOF
step demo_epochs 60 python3 -m tinyitop train --dataset /tmp/cifar_shaped.npz --augment --val-fraction 0 \
  --epochs 4 --no-progress --no-plots --out /tmp/demo_run
step resnet18_epoch 45 python3 -m tinyitop train --model resnet18 --dataset /tmp/cifar_shaped.npz --augment \
  --val-fraction 0 --limit-train 12800 --epochs 2 --no-progress --no-plots --out /tmp/resnet_run
# Full-width VGG-16 on real CIFAR-10: dense, static and SET-ITOP at 0.95 (ERK), the conv claims at the
# paper's width. DATA is a CIFAR-10 npz carried in the git-ignored .data/ (the device tool carries at
# most 64 MiB: python experiments/subset_npz.py cifar10.npz .data/cifar10-15k.npz --train 15000 --test 2000
# is 55 MB). Delta T 50 is the paper's 2000 of ~78k iterations scaled to this run's ~2,100.
DATA=${DATA:-.data/cifar10-15k.npz}
if [ -f "$DATA" ]; then
  VGG_EPOCHS=${VGG_EPOCHS:-20}
  step vgg16_dense 150 python3 -m tinyitop train --model vgg16 --dataset "$DATA" --augment --method dense \
    --epochs "$VGG_EPOCHS" --lr 0.05 --no-progress --no-plots --out "$OUT/vgg16_dense"
  for method in static set; do
    step "vgg16_$method" 150 python3 -m tinyitop train --model vgg16 --dataset "$DATA" --augment --method $method \
      --sparsity 0.95 --update-interval 50 --epochs "$VGG_EPOCHS" --lr 0.05 --no-progress --no-plots \
      --out "$OUT/vgg16_$method"
  done
fi
# The code as it was before (a checkout in .baseline/old, carried when present) against the current code,
# same GPU, bench_step.py in one process each: the before/after of the step times.
if [ -d .baseline/old ]; then
  step before_after 90 bash -c 'for tree in .baseline/old .; do python3 benchmarks/bench_step.py $tree mlp:0.95:50 mlp:0:50 resnet18:0.95:10 resnet18:0:10 vgg16:0.95:10; done'
fi
cat "$OUT/summary.txt"
