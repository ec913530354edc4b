#!/usr/bin/env bash
# Continue training from models/model.pt (note the double negative: dont_load_ckpt_model=False).
source "$(dirname "${BASH_SOURCE[0]}")/set_env.sh"
CONFIG_FILE=config/config_finetune.json
"${CLARA_FL[@]}" train -m "$MMAR_ROOT" -c "$CONFIG_FILE" -e "$ENVIRONMENT_FILE" --write_train_stats \
  --set multi_gpu=False dont_load_ckpt_model=False "$@"
