#!/usr/bin/env bash
# Every GPU check, in one call on the device machine (15 minutes of device time per task in all):
#   here:    bash bench/gpu/wheels.sh        (once: cp312 wheels of what that machine lacks, in .whl/)
#   there:   device run, carry [".whl"], command "bash bench/gpu/run.sh", timeout_s 480
# What it measures (bench/gpu/ddp.py): the shared training loop in one process vs Ray Train's DDP
# worker (`consortium run configs/cluster_ddp.yaml ray.use_gpu=true`) on the one GPU, fp32 and
# bf16 autocast, on the shipped digits CNN and on a wider one. JSON and logs land in $OUT
# (bench/results/ when run by hand); MLflow stays behind (tracking.enabled=false). Then
# bench/gpu/images.py: an image network's training step vs a plain PyTorch loop, with peak memory.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-bench/results}
SITE=${SITE:-/tmp/consortium-site}
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 FLWR_TELEMETRY_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true
# Unzip, keeping each file's mode (Ray's gcs_server and raylet must stay executable): no pip step.
python3 - "$SITE" .whl/* <<'PY' || exit 1
import os, sys, zipfile
for wheel in sys.argv[2:]:
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            path = z.extract(info, sys.argv[1])
            mode = (info.external_attr >> 16) & 0o777
            if mode and not info.is_dir():
                os.chmod(path, mode)
PY
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; python3 -c \
  "import torch, ray, pydantic; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'ray', ray.__version__, 'pydantic', pydantic.__version__)"; } \
  2>&1 | tee "$OUT/gpu_env.txt"
rc=0
python3 bench/gpu/ddp.py --repeats 2 --epochs 20 --out "$OUT/gpu_ddp.json" 2>&1 | tee "$OUT/gpu_ddp.log" || rc=1
python3 bench/gpu/ddp.py --repeats 2 --epochs 20 --override "model.channels=[64,128]" --override train.batch_size=256 \
  --out "$OUT/gpu_ddp_wide.json" 2>&1 | tee "$OUT/gpu_ddp_wide.log" || rc=1
# images (issue 32): MONAI's ResNet-18 at 224x224, the shared training step vs a plain loop, fp32 and bf16
python3 bench/gpu/images.py --size 224 --batch 64 --steps 30 --out "$OUT/gpu_images.json" 2>&1 \
  | tee "$OUT/gpu_images.log" || rc=1
# segmentation (issue 33): a 3D U-Net on 64^3 volumes, the shared step (Dice + cross-entropy) vs a plain loop, AMP
python3 bench/gpu/images.py --model unet --dims 3 --size 64 --batch 8 --steps 20 --out "$OUT/gpu_unet3d.json" 2>&1 \
  | tee "$OUT/gpu_unet3d.log" || rc=1
exit $rc
