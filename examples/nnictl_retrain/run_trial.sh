#!/usr/bin/env bash
# Trial command of the nnictl experiments here: `nni-darts retrain --nni ARGS...`.
#
# nnictl runs a trial in this folder with the environment nnictl itself was started with, so a bare `python` or
# `nni-darts` may not be the virtual environment's (e.g. after `.venv/bin/nnictl create ...` without activating).
# Use the first Python that imports nni_darts_ext: $NNI_DARTS_PYTHON, the active venv, this repository's .venv,
# then python3 on PATH.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
for python in "${NNI_DARTS_PYTHON:-}" "${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/python}" "$here/../../.venv/bin/python" python3; do
  if [ -n "$python" ] && command -v "$python" >/dev/null 2>&1 && "$python" -c "import nni_darts_ext" 2>/dev/null; then
    exec "$python" -m nni_darts_ext retrain --nni "$@"
  fi
done
echo "run_trial.sh: no Python with nni_darts_ext found; activate its virtual environment or set NNI_DARTS_PYTHON" >&2
exit 2
