#!/usr/bin/env bash
# Validate models/model.pt with N processes; metrics are gathered across ranks and printed once.
source "$(dirname "${BASH_SOURCE[0]}")/set_env.sh"
CONFIG_FILE=config/config_validation.json
NUM_GPUS=${NUM_GPUS:-2}
python3 -m torch.distributed.run --standalone --nproc_per_node="$NUM_GPUS" -m clara_fl validate \
  -m "$MMAR_ROOT" -c "$CONFIG_FILE" -e "$ENVIRONMENT_FILE" \
  --set multi_gpu=True dont_load_ts_model=True dont_load_ckpt_model=False "$@"
