#!/usr/bin/env bash
# ctest's entry to the Python tests: `python -m pytest FILES` in tests/python.
#
# The interpreter is $FLASHCORE_PYTHON, else the virtual environment that
# `deploy/setup.sh --test` fills ($FLASHCORE_PYTHON_VENV, set by ctest to
# <build>/python-venv), else python3. A missing test dependency fails the test
# with its name and the command that installs it (a skip would hide tests
# that never ran).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

python="${FLASHCORE_PYTHON:-}"
if [[ -z "$python" && -n "${FLASHCORE_PYTHON_VENV:-}" && -x "$FLASHCORE_PYTHON_VENV/bin/python" ]]; then
  python="$FLASHCORE_PYTHON_VENV/bin/python"
fi
python="${python:-python3}"
if ! command -v "$python" >/dev/null; then
  echo "run_pytest.sh: no Python interpreter ($python); run ./deploy/setup.sh --test" >&2
  exit 1
fi

missing="$("$python" - <<'PY'
import importlib
names = {"grpc": "grpcio", "grpc_tools": "grpcio-tools", "google.protobuf": "protobuf",
         "pytest": "pytest", "setuptools": "setuptools",
         # the package's extras the tests exercise: tune-plan (tqdm, PyYAML), flashcore-report
         "tqdm": "tqdm", "yaml": "pyyaml", "matplotlib": "matplotlib"}
missing = []
for module, package in names.items():
    try:
        importlib.import_module(module)
    except ImportError:
        missing.append(package)
print(" ".join(missing))
PY
)"
if [[ -n "$missing" ]]; then
  echo "run_pytest.sh: $python lacks the Python test packages: $missing" >&2
  echo "  install them with ./deploy/setup.sh --test (a venv in the build folder)," >&2
  echo "  or: $python -m pip install grpcio grpcio-tools protobuf pytest setuptools tqdm pyyaml matplotlib" >&2
  exit 1
fi
echo "run_pytest.sh: $("$python" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
exec "$python" -m pytest "$@"
