#!/usr/bin/env bash
# The package installs anywhere: build the wheel, install it into a fresh virtual environment outside the
# checkout (torch pinned first, as the Makefile does), then, from a folder outside the checkout, create a job
# from the MMAR the wheel ships and simulate one round of it.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
BUILD_PY=${BUILD_PY:-$REPO/.venv/bin/python}  # any Python with pip builds the wheel; make test made this one
WORK=$(mktemp -d "${TMPDIR:-/tmp}/clara_fl_wheel_check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
start=$SECONDS
step() { echo "wheel check [$((SECONDS - start)) s]: $*"; }

step "building the wheel"
"$BUILD_PY" -m pip wheel -q --no-deps -w "$WORK/dist" "$REPO" > "$WORK/build.log" 2>&1 || { tail -n 40 "$WORK/build.log"; exit 1; }
WHEEL=$(ls "$WORK"/dist/clara_fl-*.whl)

step "installing $(basename "$WHEEL") into a fresh venv"
"$PYTHON" -m venv "$WORK/venv"
VPY=$WORK/venv/bin/python
quietly() { "$@" > "$WORK/pip.log" 2>&1 || { tail -n 40 "$WORK/pip.log"; exit 1; }; }
quietly "$VPY" -m pip install -q torch=="$TORCH_VERSION"
quietly "$VPY" -m pip install -q "$WHEEL"

cd "$WORK"  # nothing from the checkout on the path from here on
MMAR=$("$VPY" -c "from clara_fl.resources import mmar_path; print(mmar_path('spleen_ct_seg'))")
case "$MMAR" in "$WORK"/venv/*) ;; *) echo "wheel check: the MMAR comes from $MMAR, not the installed package"; exit 1 ;; esac

step "clara-fl job create -m $MMAR"
"$WORK/venv/bin/clara-fl" synth "$WORK/data" --cases 8 --sites 2 --shape 32 32 32 >/dev/null
echo "{\"environment\": {\"DATA_ROOT\": \"$WORK/data\", \"DATASET_JSON\": \"$WORK/data/dataset_{SITE_NAME}.json\"}}" > site.json
"$WORK/venv/bin/clara-fl" job create -m "$MMAR" -o job --num-rounds 1 --local-epochs 1 --min-clients 2 \
    --set 'roi_size=[16,16,16]' num_workers=0 num_interval_per_valid=1
test -f job/app/config/config_train.json -a -f job/app/config/config_fed_server.json

step "python job.py --export (the shipped recipe example)"
EXAMPLES=$("$VPY" -c "from clara_fl.resources import examples_dir; print(examples_dir())")
"$VPY" "$EXAMPLES/spleen_ct_seg/job.py" --export --export-dir exported > export.log 2>&1 || { cat export.log; exit 1; }
test -f exported/spleen_ct_seg/app/config/config_fed_client.json

step "clara-fl simulate: 1 round, 2 sites"
if ! "$WORK/venv/bin/clara-fl" simulate job -w ws -n 2 -t 2 --site-config site.json > simulate.log 2>&1; then
    tail -n 40 simulate.log; tail -n 40 ws/simulator_output.txt 2>/dev/null || true; exit 1
fi
grep -q "site-1" simulate.log || { tail -n 40 simulate.log; echo "wheel check: no cross-site table"; exit 1; }
if grep -qi "deprecated" simulate.log ws/simulator_output.txt; then
    echo "wheel check: FLARE printed a deprecation warning"; grep -i deprecated simulate.log ws/simulator_output.txt; exit 1
fi
step "passed"
