#!/usr/bin/env bash
# The personal-adapter experiment (PREREGISTRATION.md), after the runs it builds on: the selection experiment's
# noisy-teacher SFT and REST-PG (configs/selection; on a fresh machine configs/selection/carry.sh restore) and the
# real-data table's (configs/longlamp_abstract.yaml; configs/carry.sh restore runs/longlamp/shared
# configs/longlamp_results). Results go to configs/personal/results/<table> (commit them); users' adapters live beside
# the compile runs and a re-run trains only the users not yet recorded:
#   nohup configs/personal/run.sh > runs/personal.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/../.."
export LITELLM_LOCAL_MODEL_COST_MAP=True HF_HUB_OFFLINE=1
for table in synthetic synthetic_no_profile longlamp; do
  .venv/bin/restpg table --config "configs/personal/$table.yaml"
done
