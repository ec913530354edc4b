#!/usr/bin/env bash
# Export models/model.pt to TorchScript models/model.ts.
source "$(dirname "${BASH_SOURCE[0]}")/set_env.sh"
"${CLARA_FL[@]}" export -m "$MMAR_ROOT" --model_path models/model.pt --output_path models/model.ts \
  --input_shape "${INPUT_SHAPE:-[1, 1, 64, 64]}"
