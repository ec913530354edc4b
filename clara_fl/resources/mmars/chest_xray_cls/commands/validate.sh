#!/usr/bin/env bash
# Validate the exported TorchScript model (models/model.ts); metrics go to eval/.
source "$(dirname "${BASH_SOURCE[0]}")/set_env.sh"
CONFIG_FILE=config/config_validation.json
"${CLARA_FL[@]}" validate -m "$MMAR_ROOT" -c "$CONFIG_FILE" -e "$ENVIRONMENT_FILE" \
  --set multi_gpu=False dont_load_ts_model=False dont_load_ckpt_model=True "$@"
