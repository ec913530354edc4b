#!/usr/bin/env bash
# Train from scratch. Extra arguments are passed on, e.g.: ./train.sh epochs=2 batch_size=8
source "$(dirname "${BASH_SOURCE[0]}")/set_env.sh"
CONFIG_FILE=config/config_train.json
"${CLARA_FL[@]}" train -m "$MMAR_ROOT" -c "$CONFIG_FILE" -e "$ENVIRONMENT_FILE" --write_train_stats \
  --set print_conf=False multi_gpu=False cudnn_benchmark=False dont_load_ckpt_model=True "$@"
