#!/usr/bin/env bash
# ctest's entry to validate.py: the build's venv (`deploy/setup.sh --test`
# installs kubernetes-validate there) when it has the package, else python3.
set -euo pipefail
python=python3
venv="${FLASHCORE_PYTHON_VENV:-}"
if [[ -n "$venv" && -x "$venv/bin/python" ]] && "$venv/bin/python" -c 'import kubernetes_validate' 2>/dev/null; then
  python="$venv/bin/python"
fi
exec "$python" "$(dirname "${BASH_SOURCE[0]}")/validate.py" --daemon "$1"
