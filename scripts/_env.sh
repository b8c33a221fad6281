# Sourced by scripts/test and scripts/demo: make .venv with the package installed, once.
# Reinstalls when pyproject.toml changes. Needs only python3 (>= 3.10) with venv and pip.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version 2>&1)" >&2
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.nni-darts-ext-installed"
want="$(cat pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing nni-darts-ext and its dependencies into .venv (first run: several minutes)" >&2
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[dev,deploy]"
  echo "$want" > "$stamp"
fi
