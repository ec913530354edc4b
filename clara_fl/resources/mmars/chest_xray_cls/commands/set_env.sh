#!/usr/bin/env bash
# Sourced by the other commands: the MMAR root and the config files they use.
my_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export MMAR_ROOT="$(dirname "$my_dir")"
export ENVIRONMENT_FILE=config/environment.json
# The clara-fl command, or the module if the console script is not on PATH.
if command -v clara-fl >/dev/null 2>&1; then CLARA_FL=(clara-fl); else CLARA_FL=(python3 -m clara_fl); fi
