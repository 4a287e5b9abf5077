#!/usr/bin/env bash
# Run the test suite in the project's virtual environment (created on first use).
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow".
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/bootstrap.sh"
cd "$root"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
exec python -m pytest "$@"
