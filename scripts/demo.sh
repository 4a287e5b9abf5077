#!/usr/bin/env bash
# Run the main job end to end on the embedded default: 1,500 synthetic galaxies
# through the whole workflow on the local engine. Extra arguments go to run_workflow.py.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/bootstrap.sh"
cd "$root"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
exec python run_workflow.py --demo "$@"
