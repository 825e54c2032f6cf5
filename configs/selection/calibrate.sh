#!/usr/bin/env bash
# The calibration of the selection experiment, in the pre-registered order (train and val splits only). Each step
# records its trials in configs/selection/calibration.json and skips what is recorded there, so this resumes anywhere:
#   nohup configs/selection/calibrate.sh > runs/selection/calibrate.log 2>&1 &
# It runs on the code of commit c093c74, the last whose adapter ids cover the base model's path as the calibration's
# recorded ids do (later code would name re-registered adapters anew and miss the evaluation cache):
#   git worktree add ../selection-code c093c74, make setup there, link its runs/ to this checkout's runs/, run this
#   script there, and copy its configs/selection/{calibration.json,results} back here to commit them.
set -euo pipefail
cd "$(dirname "$0")/../.."
export LITELLM_LOCAL_MODEL_COST_MAP=True HF_HUB_OFFLINE=1
record=configs/selection/calibration.json
calibrate() { .venv/bin/restpg calibrate --record "$record" "$@"; }
# REST-PG's SFT stage: the largest budget with room (val option accuracy < 0.9, round-1 option spread >= 0.25).
calibrate --config configs/selection/noisy.yaml --method rest-pg --rule room --epochs 4,2,1
calibrate --config configs/selection/budget.yaml --method rest-pg --rule room --epochs 8,4,2
calibrate --config configs/selection/noisy.yaml --method rest-em --rule room --epochs 4,2,1
# The baselines' own best budgets on validation, over the whole grid (amendment 1 of the pre-registration; the
# trials that best_on_val recorded first are reused).
calibrate --config configs/selection/noisy.yaml --method sft --rule best_of_grid --epochs 1,2,4,8
calibrate --config configs/selection/noisy.yaml --method sft-reasoning --rule best_of_grid --epochs 1,2,4,8
calibrate --config configs/selection/budget.yaml --method sft-reasoning --rule best_of_grid --epochs 2,4,8,16
