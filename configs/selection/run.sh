#!/usr/bin/env bash
# The selection experiment, after its calibration (calibrate.sh), one method at a time in the pre-registered order.
# Each step writes its small result files to configs/selection/results/<condition> (commit them); compile runs,
# adapters and the evaluation cache live in runs/selection/shared and resume after a kill:
#   nohup configs/selection/run.sh > runs/selection/run.log 2>&1 &
# On another machine, unpack the compile runs' state, the evaluation cache and the carried adapters first
# (configs/selection/carry.sh restore; before giving a machine up, carry.sh save and commit): nothing recorded is
# sampled or scored again, and a finished stage whose adapter was not carried is trained again from its recorded rows
# only if something still needs its weights.
# It runs on the code of commit c093c74, the last whose adapter ids cover the base model's path as the calibration's
# recorded ids do (later code would name re-registered adapters anew and miss the evaluation cache):
#   git worktree add ../selection-code c093c74, make setup there, link its runs/ to this checkout's runs/, run this
#   script there, and copy its configs/selection/{calibration.json,results} back here to commit them.
# That code predates restpg_dspy/allocator.py: start it with jemalloc by hand (apt-get install libjemalloc2), as
#   LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 MALLOC_CONF=background_thread:true,dirty_decay_ms:30000,\
#   muzzy_decay_ms:30000,oversize_threshold:0 configs/selection/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export LITELLM_LOCAL_MODEL_COST_MAP=True HF_HUB_OFFLINE=1
table() { .venv/bin/restpg table --config "configs/selection/$1.yaml" --only "$2"; }
table noisy rest-pg
table budget rest-pg
# Plain SFT and ReST-EM read no notes: one run each, which the second condition's table reads back.
table noisy rest-em
table budget rest-em
table noisy sft
table budget sft
table noisy sft-reasoning
table budget sft-reasoning
