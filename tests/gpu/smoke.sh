#!/usr/bin/env bash
# GPU smoke checks: run on a machine with one CUDA GPU, from the repository root, after
# ./dev setup has built .venv with a CUDA build of torch (pip install torch==2.13.0 from the
# CUDA index on that machine). At most ~8 minutes; one line per check:
#   gpu dqn-pong: ... env steps/s, ... updates/s, peak GPU memory ... MiB, precision ...
#   gpu resnet-bf16: one epoch of 50k 32x32 images ... s, ... images/s, val/accuracy ...
#   gpu selfplay: connect four learner on the GPU, ... moves/s
#   gpu pytest: the tests marked `gpu`
# Nothing here has run on a GPU yet (README "GPU"): figures come from its first run.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
TY=.venv/bin/trainyard
WORK=$(mktemp -d /tmp/trainyard-gpu-smoke.XXXXXX)
export MLFLOW_TRACKING_URI="sqlite:///$WORK/mlflow.db"
export TRAINYARD_STATE_KEY="$WORK/state.key"
$PY -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' || {
  echo "gpu: no CUDA device visible to torch ($($PY -c 'import torch; print(torch.__version__)')): nothing to check"; exit 1; }

peak_memory() {  # samples the GPU's used memory every second into $1 until killed
  while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1 >> "$1"; sleep 1; done
}

last_run() {  # print "KEY=VALUE" lines of the newest run of experiment $1's metrics and tags
  $PY - "$1" <<'PYEOF'
import sys
from mlflow.tracking import MlflowClient
client = MlflowClient()
exp = client.get_experiment_by_name(sys.argv[1])
run = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])[0]
for k, v in {**run.data.metrics, **run.data.tags, **run.data.params}.items():
    print(f"{k}={v}")
PYEOF
}

value() { grep -m1 "^$2=" "$1" | cut -d= -f2-; }

# 1. DQN Pong on the GPU learner for 4 minutes (precision auto: bf16 on Ampere or newer)
peak_memory "$WORK/mem1" & SAMPLER=$!
timeout 330 $TY run agents/configs/dqn_pong_fast.yaml -o stop.minutes=4 -o stop.env_steps=10M \
  -o agent.precision=auto -o tracking.experiment=gpu-smoke-pong -o evaluation.every_iterations=1000000 \
  > "$WORK/pong.log" 2>&1; rc=$?
kill $SAMPLER 2>/dev/null
last_run gpu-smoke-pong > "$WORK/pong.kv" 2>/dev/null
steps=$(value "$WORK/pong.kv" perf/env_steps_per_s)
intensity=$(value "$WORK/pong.kv" agent.training_intensity)
batch=$(value "$WORK/pong.kv" agent.batch_size)
updates=$($PY -c "print(f'{float(\"${steps:-0}\") * float(\"${intensity:-0}\") / float(\"${batch:-1}\"):.0f}')" 2>/dev/null)
echo "gpu dqn-pong: exit $rc, ${steps:-?} env steps/s, ${updates:-?} updates/s (granted per env step: intensity/batch), peak GPU memory $(sort -n "$WORK/mem1" | tail -1) MiB, precision $(value "$WORK/pong.kv" trainyard.precision), step $(value "$WORK/pong.kv" trainyard.dqn_step) (log $WORK/pong.log)"

# 2. one bf16 epoch of a ResNet-18-sized network on CIFAR-shaped data (random pixels in the
# CIFAR python-batch format: this checks the kernels and Ray Train's GPU path, not accuracy)
$PY - "$WORK/cifar-10-batches-py" <<'PYEOF'
import os, pickle, sys
import numpy as np
root = sys.argv[1]; os.makedirs(root)
rng = np.random.default_rng(0)
for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    with open(os.path.join(root, name), "wb") as f:
        pickle.dump({b"data": rng.integers(0, 256, (10000, 3072), dtype=np.uint8),
                     b"labels": rng.integers(0, 10, 10000).tolist()}, f, protocol=2)
PYEOF
peak_memory "$WORK/mem2" & SAMPLER=$!
start=$(date +%s)
timeout 150 $TY run supervised/configs/cifar10_resnet_4gpu.yaml -o resources.workers=1 \
  -o resources.cpus_per_worker=8 -o data.path="$WORK/cifar-10-batches-py" -o stop.epochs=1 \
  -o train.batch_size=256 -o train.lr=0.1 -o train.warmup_epochs=0 -o train.precision=bf16 \
  -o checkpoint.path="$WORK/ckpt" -o tracking.experiment=gpu-smoke-resnet > "$WORK/resnet.log" 2>&1; rc=$?
kill $SAMPLER 2>/dev/null
took=$(( $(date +%s) - start ))
last_run gpu-smoke-resnet > "$WORK/resnet.kv" 2>/dev/null
echo "gpu resnet-bf16: exit $rc, one epoch of 45k images in ${took}s wall (Ray start included), epoch $(value "$WORK/resnet.kv" perf/epoch_s)s, $(value "$WORK/resnet.kv" perf/samples_per_s) images/s, peak GPU memory $(sort -n "$WORK/mem2" | tail -1) MiB (log $WORK/resnet.log)"

# 3. self-play: Connect Four's league with its learner on the GPU
timeout 120 $TY run agents/configs/selfplay_connect4.yaml -o stop.minutes=1.5 \
  -o resources.gpus_per_learner=1 -o tracking.experiment=gpu-smoke-selfplay > "$WORK/selfplay.log" 2>&1; rc=$?
last_run gpu-smoke-selfplay > "$WORK/selfplay.kv" 2>/dev/null
echo "gpu selfplay: exit $rc, connect four, $(value "$WORK/selfplay.kv" perf/env_steps_per_s) moves/s (log $WORK/selfplay.log)"

# 4. the tests that need CUDA
timeout 90 $PY -m pytest -q -m gpu tests/gpu > "$WORK/pytest.log" 2>&1; rc=$?
echo "gpu pytest: exit $rc, $(tail -1 "$WORK/pytest.log")"
