#!/usr/bin/env bash
# Carry the selection experiment from one machine to the next through the repository (configs/carry.sh, with the
# adapters of finished stages: the next E-step samples from them, the next evaluation serves them, and the
# personal-adapter experiment, configs/personal, trains over them).
#   configs/selection/carry.sh save     # before a machine is given up, then commit configs/selection
#   configs/selection/carry.sh restore  # on a fresh machine, before run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
case "${1:-}" in
save) exec configs/carry.sh save runs/selection/shared configs/selection --adapters ;;
restore) exec configs/carry.sh restore runs/selection/shared configs/selection ;;
*) echo "usage: $0 save|restore" >&2; exit 2 ;;
esac
