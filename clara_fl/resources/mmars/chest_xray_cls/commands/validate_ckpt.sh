#!/usr/bin/env bash
# Validate the checkpoint (models/model.pt), rebuilding the network from its stored train_conf.
source "$(dirname "${BASH_SOURCE[0]}")/set_env.sh"
CONFIG_FILE=config/config_validation.json
"${CLARA_FL[@]}" validate -m "$MMAR_ROOT" -c "$CONFIG_FILE" -e "$ENVIRONMENT_FILE" \
  --set multi_gpu=False dont_load_ts_model=True dont_load_ckpt_model=False "$@"
