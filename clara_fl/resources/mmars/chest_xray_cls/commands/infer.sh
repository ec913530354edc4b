#!/usr/bin/env bash
# Segment the datalist's "test" images; masks are written to eval/.
source "$(dirname "${BASH_SOURCE[0]}")/set_env.sh"
CONFIG_FILE=config/config_inference.json
"${CLARA_FL[@]}" infer -m "$MMAR_ROOT" -c "$CONFIG_FILE" -e "$ENVIRONMENT_FILE" "$@"
