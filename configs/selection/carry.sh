#!/usr/bin/env bash
# Carry the selection experiment from one machine to the next through the repository.
#   configs/selection/carry.sh save     # before a machine is given up: pack what a fresh one needs, then commit
#   configs/selection/carry.sh restore  # on a fresh machine, before run.sh: unpack it
# save writes state.tgz (every compile run's records and the evaluation cache, without adapters or mid-training
# checkpoints) and, in carry/, the adapter of the last finished stage of each compile run: the next E-step samples
# from it, the next evaluation serves it, and the personal-adapter experiment (configs/personal) trains over the
# finished ones. Each adapter is an uncompressed, reproducible tar (fixed order, owner and times), so one committed
# twice is stored once. A stage interrupted mid-training is not carried: it trains again from its recorded rows, so a
# machine is best given up just after a stage finishes.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=configs/selection
shared=runs/selection/shared
case "${1:-}" in
save)
  # A running table is paused while its files are packed, so the evaluation cache (SQLite) is packed as one state.
  pids=$(pgrep -f "restpg (table|calibrate)" || true)
  if [ -n "$pids" ]; then
    kill -STOP $pids
    trap 'kill -CONT $pids' EXIT
  fi
  tar czf "$here/state.tgz" --exclude=adapters --exclude='.checkpoints-*' "$shared"
  if [ -n "$pids" ]; then kill -CONT $pids; trap - EXIT; fi
  rm -rf "$here/carry" && mkdir -p "$here/carry"
  .venv/bin/python - "$here" "$shared" <<'EOF'
import json, subprocess, sys
from pathlib import Path

here, shared = Path(sys.argv[1]), Path(sys.argv[2])
for run in sorted(p for p in (shared / "synthetic").iterdir() if p.name not in ("adapters", "calibration")):
    stages = sorted((p for p in run.glob("*/model.json")), key=lambda p: (p.parent.name != "sft", p.parent.name))
    if not stages:
        continue
    adapter = Path(json.loads(stages[-1].read_text())["adapter"])
    if not (adapter / "adapter_config.json").exists():
        sys.exit(f"{run}: the adapter of its last stage ({adapter}) is not on this machine; nothing to carry")
    subprocess.run(
        ["tar", "cf", str(here / "carry" / f"{adapter.name}.tar"), "--sort=name", "--owner=0", "--group=0",
         "--numeric-owner", "--mtime=2026-01-01", "-C", str(adapter.parent), adapter.name],
        check=True,
    )
    print(f"carried {run.name}/{stages[-1].parent.name}: {adapter.name}")
EOF
  ;;
restore)
  tar xzf "$here/state.tgz"
  mkdir -p "$shared/synthetic/adapters"
  for adapter in "$here"/carry/*.tar; do
    [ -e "$adapter" ] && tar xf "$adapter" -C "$shared/synthetic/adapters"
  done
  ls "$shared/synthetic/adapters"
  ;;
*)
  echo "usage: $0 save|restore" >&2
  exit 2
  ;;
esac
