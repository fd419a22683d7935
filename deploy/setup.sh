#!/usr/bin/env bash
# FlashCore setup: install the Debian packages the build needs (only those
# missing), check for the CUDA toolkit's NVRTC, configure and build.
#
#   deploy/setup.sh               install + build
#   deploy/setup.sh --build-only  same (the name the Dockerfile and bundle.sh use)
#   deploy/setup.sh --demo        install + build, then run the daemon, compile an
#                                 attention kernel with the CLI, fetch it, stop
#   deploy/setup.sh --test        install + build, build the libFuzzer harnesses
#                                 with clang in build-fuzz, then run every test
#                                 with ctest (the fuzzers among them)
#
# Environment: CUDA_HOME (default /usr/local/cuda, else the toolkit of the
# nvcc on PATH), FLASHCORE_BUILD_DIR
# (default <repo>/build), FLASHCORE_FUZZ_BUILD_DIR (default <repo>/build-fuzz),
# FLASHCORE_JOBS (default nproc).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${FLASHCORE_BUILD_DIR:-$ROOT/build}"
FUZZ_BUILD_DIR="${FLASHCORE_FUZZ_BUILD_DIR:-$ROOT/build-fuzz}"
# The toolkit: $CUDA_HOME, else /usr/local/cuda, else the one whose nvcc is on PATH.
find_cuda_home() {
  if [[ -n "${CUDA_HOME:-}" ]]; then echo "$CUDA_HOME"; return; fi
  if [[ -f /usr/local/cuda/include/nvrtc.h ]]; then echo /usr/local/cuda; return; fi
  local nvcc
  if nvcc="$(command -v nvcc 2>/dev/null)"; then
    nvcc="$(readlink -f "$nvcc")"
    echo "$(dirname "$(dirname "$nvcc")")"
    return
  fi
  echo /usr/local/cuda
}
CUDA_HOME="$(find_cuda_home)"
JOBS="${FLASHCORE_JOBS:-$(nproc)}"
readonly ROOT BUILD_DIR CUDA_HOME JOBS

readonly PACKAGES=(
  build-essential cmake ninja-build pkg-config
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libspdlog-dev libgtest-dev libgmock-dev libsqlite3-dev libcli11-dev prometheus-cpp-dev
  nlohmann-json3-dev libtomlplusplus-dev libssl-dev libhiredis-dev redis-server patchelf
  # Tests: certificates made at test time, prlimit for the descriptor test,
  # clang with its libFuzzer and sanitizer runtimes for tests/fuzz.
  openssl util-linux clang libclang-rt-dev
)

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'setup.sh: error: %s\n' "$*" >&2; exit 1; }

usage() {
  # The header comment, up to the first line that is not a comment.
  sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"
}

install_packages() {
  step "Checking Debian packages"
  command -v dpkg >/dev/null || die "dpkg not found: this script installs Debian/Ubuntu packages; install these by hand: ${PACKAGES[*]}"
  local missing=() pkg
  for pkg in "${PACKAGES[@]}"; do
    # dpkg -s also answers for removed packages that left config behind, so
    # read the status line rather than the exit code alone.
    if ! dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed'; then
      missing+=("$pkg")
    fi
  done
  if ((${#missing[@]} == 0)); then
    echo "all ${#PACKAGES[@]} packages are installed"
    return
  fi
  echo "missing: ${missing[*]}"
  local sudo=()
  if ((EUID != 0)); then
    command -v sudo >/dev/null || die "not root and no sudo; run as root: apt-get install ${missing[*]}"
    sudo=(sudo)
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
}

# NVRTC is linked at build time and compiles every kernel at run time; cuda.h
# gives the Driver API types (libcuda itself is dlopen'ed, not needed here).
check_nvrtc() {
  step "Checking the CUDA toolkit (NVRTC) in $CUDA_HOME"
  local file
  for file in include/nvrtc.h include/cuda.h; do
    if [[ ! -f "$CUDA_HOME/$file" ]]; then
      die "missing $CUDA_HOME/$file
The CUDA 13 toolkit (NVRTC and cuda.h) must be installed, at /usr/local/cuda or at \$CUDA_HOME."
    fi
  done
  if ! compgen -G "$CUDA_HOME/lib64/libnvrtc.so*" >/dev/null; then
    die "missing $CUDA_HOME/lib64/libnvrtc.so*
The CUDA 13 toolkit (NVRTC and cuda.h) must be installed, at /usr/local/cuda or at \$CUDA_HOME."
  fi
  local version
  version="$(sed -n 's/^#define CUDA_VERSION \([0-9]*\).*/\1/p' "$CUDA_HOME/include/cuda.h")"
  if [[ -n "$version" ]]; then
    echo "found CUDA $((version / 1000)).$((version % 1000 / 10)) in $CUDA_HOME (nvrtc.h, cuda.h, lib64/libnvrtc.so)"
    if ((version / 1000 < 13)); then
      echo "warning: FlashCore is developed against CUDA 13; CUDA $((version / 1000)) may fail to build or compile kernels" >&2
    fi
  fi
}

build() {
  step "Configuring $BUILD_DIR (Ninja)"
  cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCUDA_ROOT="$CUDA_HOME"
  local targets=()
  if (($# > 0)); then targets=(--target "$@"); fi
  step "Building ${*:-all targets} with $JOBS jobs"
  cmake --build "$BUILD_DIR" -j "$JOBS" "${targets[@]}"
}

# The libFuzzer harnesses (tests/fuzz): clang, ASan and UBSan, only the
# sources each harness exercises; the main build's ctest runs them (fuzz.*).
build_fuzzers() {
  step "Configuring $FUZZ_BUILD_DIR (clang, -DFLASHCORE_FUZZ=ON)"
  CC=clang CXX=clang++ cmake -S "$ROOT" -B "$FUZZ_BUILD_DIR" -G Ninja -DCUDA_ROOT="$CUDA_HOME" \
    -DFLASHCORE_FUZZ=ON
  step "Building the fuzzers with $JOBS jobs"
  cmake --build "$FUZZ_BUILD_DIR" -j "$JOBS" --target flashcore_fuzzers
}

# --- Python test packages ---------------------------------------------------

# The Python client's tests (tests/python, run by ctest through
# tests/python/run_pytest.sh) need grpcio, grpcio-tools, protobuf, pytest and
# setuptools from PyPI; the Kubernetes manifests' check (deploy/k8s/validate.py)
# needs kubernetes-validate (with PyYAML); the package's optional extras that the tests
# exercise (tune-plan: tqdm, PyYAML; flashcore-report: matplotlib) come with them. They go
# into a virtual environment in the build folder,
# never into the system's Python, and only when one is missing.
install_python_test_packages() {
  step "Checking the Python test packages (grpcio, grpcio-tools, protobuf, pytest)"
  local venv="$BUILD_DIR/python-venv"
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    local sudo=()
    if ((EUID != 0)); then sudo=(sudo); fi
    echo "python3 or its venv module is missing: installing python3 python3-venv"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv
  fi
  if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv" || die "python3 -m venv $venv failed"
  fi
  if "$venv/bin/python" -c 'import grpc, grpc_tools, google.protobuf, pytest, setuptools, kubernetes_validate, yaml, tqdm, matplotlib' 2>/dev/null; then
    echo "installed in $venv"
    return
  fi
  "$venv/bin/python" -m pip install --disable-pip-version-check --quiet \
    grpcio grpcio-tools protobuf pytest setuptools kubernetes-validate pyyaml tqdm matplotlib \
    || die "pip install into $venv failed (the Python tests need PyPI)"
  echo "installed grpcio, grpcio-tools, protobuf, pytest, setuptools, kubernetes-validate, pyyaml, tqdm, matplotlib into $venv"
}

run_tests() {
  step "Running the tests (ctest; GPU tests skip where there is no device)"
  # The fuzz.* tests fail rather than skip when a fuzzer was not built. The
  # daemons the tests start keep their state (tuning database) in a scratch
  # folder, not in the user's ~/.local/state.
  local state rc=0
  state=$(mktemp -d)
  FLASHCORE_FUZZ_REQUIRED=1 FLASHCORE_FUZZ_BUILD_DIR="$FUZZ_BUILD_DIR" XDG_STATE_HOME="$state" \
    ctest --test-dir "$BUILD_DIR" --output-on-failure -j2 || rc=$?
  rm -rf "$state"
  return $rc
}

# --- demo ------------------------------------------------------------------

DAEMON_PID=""
DEMO_DIR=""

demo_cleanup() {
  if [[ -n "$DAEMON_PID" ]] && kill -0 "$DAEMON_PID" 2>/dev/null; then
    kill -TERM "$DAEMON_PID" 2>/dev/null || true
    wait "$DAEMON_PID" 2>/dev/null || true
  fi
  if [[ -n "$DEMO_DIR" ]]; then rm -rf "$DEMO_DIR"; fi
}

show_daemon_log() {
  echo "--- flashcored log ($DEMO_DIR/flashcored.log) ---"
  cat "$DEMO_DIR/flashcored.log" || true
  echo "--- end of log ---"
}

# Starts flashcored with its defaults plus --port-file and any extra flags;
# returns 0 once the port file holds a port, 1 if the daemon exited first.
start_daemon() {
  rm -f "$DEMO_DIR/port"
  "$BUILD_DIR/server/flashcored" --port-file "$DEMO_DIR/port" "$@" \
    >>"$DEMO_DIR/flashcored.log" 2>&1 &
  DAEMON_PID=$!
  local i
  for ((i = 0; i < 100; i++)); do
    if [[ -s "$DEMO_DIR/port" ]] && grep -qE '^[0-9]+$' "$DEMO_DIR/port"; then
      return 0
    fi
    if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
      wait "$DAEMON_PID" || true
      DAEMON_PID=""
      return 1
    fi
    sleep 0.1
  done
  show_daemon_log
  die "flashcored wrote no port file within 10 s"
}

run_demo() {
  local cli="$BUILD_DIR/client/flashcore"
  DEMO_DIR="$(mktemp -d -t flashcore-demo.XXXXXX)"
  trap demo_cleanup EXIT

  step "Starting flashcored (default flags, plus --port-file $DEMO_DIR/port)"
  if ! start_daemon; then
    echo "flashcored could not listen on its default address 127.0.0.1:50051 (in use?); retrying on a free port"
    start_daemon --listen 127.0.0.1:0 || { show_daemon_log; die "flashcored failed to start"; }
  fi
  local address
  address="127.0.0.1:$(cat "$DEMO_DIR/port")"
  export FLASHCORE_ADDRESS="$address"
  echo "flashcored pid $DAEMON_PID listening on $address; log: $DEMO_DIR/flashcored.log"

  step "Waiting for health SERVING: flashcore health"
  local i
  for ((i = 0; i < 50; i++)); do
    if "$cli" health >"$DEMO_DIR/health.txt" 2>&1; then break; fi
    sleep 0.2
  done
  cat "$DEMO_DIR/health.txt"
  ((i < 50)) || { show_daemon_log; die "flashcored never reported SERVING"; }

  step "Server info: flashcore info"
  "$cli" info

  # The compile-time inputs (dtype, head_dim, causal, tile config, arch) select
  # the cubin; batch/heads/seq are the run-time shape the launch geometry is
  # reported for.
  local compile_args=(compile --dtype fp16 --head-dim 64 --batch 1 --heads 8 --seq-q 512 --seq-k 512
                      --block-m 128 --block-n 64 --warps 4 --stages 2)
  step "Compiling attention_fwd fp16, head_dim 64, seq_q 512, 8 heads, tile 128x64, 4 warps, 2 stages: flashcore ${compile_args[*]}"
  local start_ns end_ns
  start_ns="$(date +%s%N)"
  "$cli" --timeout-ms 300000 "${compile_args[@]}" >"$DEMO_DIR/handle.txt" \
    || { show_daemon_log; die "compile failed"; }
  end_ns="$(date +%s%N)"
  cat "$DEMO_DIR/handle.txt"
  local key
  key="$(awk '$1 == "key" { print $2; exit }' "$DEMO_DIR/handle.txt")"
  [[ "$key" =~ ^[0-9a-f]{64}$ ]] || die "no kernel key in the compile answer"
  echo "answered in $(((end_ns - start_ns) / 1000000)) ms wall (\"source\" says whether NVRTC compiled it or a cache tier had it)"

  step "Fetching the kernel by key: flashcore get $key -o $DEMO_DIR/kernel.cubin"
  "$cli" get "$key" -o "$DEMO_DIR/kernel.cubin" >"$DEMO_DIR/get.txt"
  grep -E '^(key|source|cubin|wrote) ' "$DEMO_DIR/get.txt"
  local size
  size="$(stat -c %s "$DEMO_DIR/kernel.cubin")"
  ((size > 0)) || die "the fetched cubin is empty"
  local magic
  magic="$(od -An -tx1 -N4 "$DEMO_DIR/kernel.cubin" | tr -d ' ')"
  [[ "$magic" == 7f454c46 ]] || die "the fetched cubin is not an ELF file (starts with $magic)"
  echo "cubin: $DEMO_DIR/kernel.cubin, $size bytes, an ELF image for the GPU"

  step "Cached kernels: flashcore list"
  "$cli" list

  step "Stopping flashcored with SIGTERM (drains in-flight calls)"
  kill -TERM "$DAEMON_PID"
  local rc=0
  wait "$DAEMON_PID" || rc=$?
  DAEMON_PID=""
  ((rc == 0)) || { show_daemon_log; die "flashcored exited with status $rc after SIGTERM"; }
  echo "flashcored exited with status 0"
  show_daemon_log
  step "Demo done"
  echo "flashcored served attention_fwd (key ${key:0:16}...; $(awk '$1 == "source" { $1 = ""; print substr($0, 2); exit }' "$DEMO_DIR/handle.txt")),"
  echo "then served the same cubin by key from its cache, and drained and exited on SIGTERM."
}

main() {
  local mode="build"
  case "${1:-}" in
    "" | --build-only) mode="build" ;;
    --demo) mode="demo" ;;
    --test) mode="test" ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  (($# <= 1)) || die "expected at most one argument"

  install_packages
  check_nvrtc
  case "$mode" in
    build) build ;;
    demo) build flashcored flashcore; run_demo ;;
    test) build; build_fuzzers; install_python_test_packages; run_tests ;;
  esac
}

main "$@"
