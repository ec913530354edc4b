#!/usr/bin/env bash
# Train with DDP on N GPUs of this machine (gloo on CPU-only machines): NUM_GPUS=2 ./train_multi_gpu.sh epochs=100
source "$(dirname "${BASH_SOURCE[0]}")/set_env.sh"
CONFIG_FILE=config/config_train.json
NUM_GPUS=${NUM_GPUS:-2}
python3 -m torch.distributed.run --standalone --nproc_per_node="$NUM_GPUS" -m clara_fl train \
  -m "$MMAR_ROOT" -c "$CONFIG_FILE" -e "$ENVIRONMENT_FILE" --write_train_stats \
  --set multi_gpu=True cudnn_benchmark=False dont_load_ckpt_model=True "$@"
