#!/usr/bin/env bash
# Carry an experiment's shared run folder from one machine to the next through the repository.
#   configs/carry.sh save SHARED_DIR STORE_DIR [--adapters]     # before a machine is given up; then commit STORE_DIR
#   configs/carry.sh restore SHARED_DIR STORE_DIR               # on a fresh machine, before the runs resume
# save writes STORE_DIR/state.tgz: every compile run's records (teacher notes, rows, samples, rewards, stage
# summaries) and the evaluation cache, without adapters or mid-training checkpoints. A finished stage whose adapter
# was not carried is trained again from its recorded rows when something still needs its weights, so a machine is
# best given up just after a stage finishes. With --adapters it also writes, in STORE_DIR/carry/, the adapter of the
# last finished stage of each compile run (worth it where retraining costs hours): each one an uncompressed,
# reproducible tar (fixed order, owner and times), so one committed twice is stored once.
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { echo "usage: $0 save|restore SHARED_DIR STORE_DIR [--adapters]" >&2; exit 2; }
[ $# -ge 3 ] || usage
action=$1 shared=$2 store=$3 adapters=${4:-}
case "$action" in
save)
  [ -d "$shared" ] || { echo "$shared: no such folder" >&2; exit 1; }
  mkdir -p "$store"
  # A running table is paused while its files are packed, so the evaluation cache (SQLite) is packed as one state.
  pids=$(pgrep -f "restpg (table|calibrate)" || true)
  if [ -n "$pids" ]; then
    kill -STOP $pids
    trap 'kill -CONT $pids' EXIT
  fi
  tar czf "$store/state.tgz" --exclude=adapters --exclude='.checkpoints-*' "$shared"
  if [ -n "$pids" ]; then kill -CONT $pids; trap - EXIT; fi
  [ "$adapters" = --adapters ] || exit 0
  rm -rf "$store/carry" && mkdir -p "$store/carry"
  .venv/bin/python - "$store" "$shared" <<'PY'
import json, subprocess, sys
from pathlib import Path

store, shared = Path(sys.argv[1]), Path(sys.argv[2])
for task in sorted(p for p in shared.iterdir() if p.is_dir() and p.name != "cache"):
    for run in sorted(p for p in task.iterdir() if p.is_dir() and p.name not in ("adapters", "calibration")):
        stages = sorted(run.glob("*/model.json"), key=lambda p: (p.parent.name != "sft", p.parent.name))
        if not stages:
            continue
        adapter = Path(json.loads(stages[-1].read_text())["adapter"])
        if not (adapter / "adapter_config.json").exists():
            sys.exit(f"{run}: the adapter of its last stage ({adapter}) is not on this machine; nothing to carry")
        subprocess.run(
            ["tar", "cf", str(store / "carry" / f"{adapter.name}.tar"), "--sort=name", "--owner=0", "--group=0",
             "--numeric-owner", "--mtime=2026-01-01", "-C", str(adapter.parent), adapter.name],
            check=True,
        )
        print(f"carried {run.name}/{stages[-1].parent.name}: {adapter.name}")
PY
  ;;
restore)
  tar xzf "$store/state.tgz"
  for adapter in "$store"/carry/*.tar; do
    [ -e "$adapter" ] || continue
    # An adapter goes back where the stage that trained it recorded it.
    name=$(basename "$adapter" .tar)
    path=$(grep -ho "\"[^\"]*/$name\"" "$shared"/*/*/*/model.json | head -1 | tr -d '"')
    [ -n "$path" ] || { echo "$adapter: no compile run in $shared names it" >&2; exit 1; }
    mkdir -p "$(dirname "$path")" && tar xf "$adapter" -C "$(dirname "$path")"
    echo "restored $path"
  done
  ;;
*)
  usage
  ;;
esac
