#!/usr/bin/env bash
# The installed C++ SDK, used the way README says (ctest: sdk.install_and_consume).
#
#   run_sdk_test.sh BUILD_DIR
#
# Installs BUILD_DIR into a temporary prefix (cmake --install), builds
# tests/sdk/consumer against that prefix twice, with find_package(flashcore
# CONFIG) and with pkg-config, starts the installed flashcored on a loopback
# port and runs both programs against it (compile a kernel, fetch it by key).
set -euo pipefail
build="$(cd "$1" && pwd)"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/flashcore-sdk.XXXXXX")"
daemon_pid=""
cleanup() {
  if [[ -n "$daemon_pid" ]] && kill -0 "$daemon_pid" 2>/dev/null; then kill -KILL "$daemon_pid"; fi
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "run_sdk_test.sh: $*" >&2; exit 1; }
prefix="$work/prefix"

cmake --install "$build" --prefix "$prefix" >"$work/install.log" || { cat "$work/install.log"; fail "cmake --install failed"; }
for f in include/flashcore-sdk/flashcore/client.hpp include/flashcore-sdk/flashcore/v1/flashcore.pb.h \
         include/flashcore-sdk/common/result.hpp bin/flashcore bin/flashcored; do
  [[ -e "$prefix/$f" ]] || fail "the install lacks $f"
done
config="$(find "$prefix" -name flashcoreConfig.cmake)"
pc="$(find "$prefix" -name flashcore.pc)"
[[ -n "$config" && -n "$pc" ]] || fail "the install lacks flashcoreConfig.cmake or flashcore.pc"

# The daemon the programs talk to: the installed one, started while they build.
"$prefix/bin/flashcored" --listen 127.0.0.1:0 --port-file "$work/port" --cache-dir "$work/cache" \
  --tuning-db "$work/tuning.db" >"$work/daemon.log" 2>&1 &
daemon_pid=$!

# 1. CMake: find_package(flashcore CONFIG) from the prefix only.
cmake -S "$here/consumer" -B "$work/with-cmake" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$prefix" >"$work/cmake.log" 2>&1 &
cmake_pid=$!
# 2. pkg-config, in parallel with the CMake project's configure and build.
export PKG_CONFIG_PATH="$(dirname "$pc")"
pkg-config --exists flashcore || fail "pkg-config does not find flashcore in $PKG_CONFIG_PATH"
libdir="$(pkg-config --variable=libdir flashcore)"
# shellcheck disable=SC2046  # pkg-config's flags are words
c++ -std=c++20 -O1 -o "$work/sdk_consumer_pc" "$here/consumer/main.cpp" \
  $(pkg-config --cflags --libs flashcore) -Wl,-rpath,"$libdir" >"$work/pc.log" 2>&1 &
pc_pid=$!
wait "$cmake_pid" || { cat "$work/cmake.log"; fail "configuring the consumer with find_package failed"; }
cmake --build "$work/with-cmake" >>"$work/cmake.log" 2>&1 || { cat "$work/cmake.log"; fail "building the consumer with find_package failed"; }
wait "$pc_pid" || { cat "$work/pc.log"; fail "building the consumer with pkg-config failed"; }
echo "built with find_package and with pkg-config ($(pkg-config --modversion flashcore))"

for _ in $(seq 300); do
  [[ -s "$work/port" ]] && break
  kill -0 "$daemon_pid" 2>/dev/null || { cat "$work/daemon.log"; fail "flashcored exited"; }
  sleep 0.1
done
[[ -s "$work/port" ]] || { cat "$work/daemon.log"; fail "flashcored wrote no port file"; }
address="127.0.0.1:$(cat "$work/port")"

for program in "$work/with-cmake/sdk_consumer" "$work/sdk_consumer_pc"; do
  # Nothing of the build tree may be needed: the library comes from the prefix.
  libraries="$(ldd "$program")"  # not piped into grep -q: pipefail would see ldd's SIGPIPE
  [[ "$libraries" == *"$prefix/lib"*"/libflashcore.so"* ]] || { echo "$libraries"; fail "$program does not load the installed libflashcore.so"; }
  "$program" "$address" || { cat "$work/daemon.log"; fail "$program failed against $address"; }
done

kill -TERM "$daemon_pid"
rc=0; wait "$daemon_pid" || rc=$?
daemon_pid=""
[[ $rc -eq 0 ]] || { cat "$work/daemon.log"; fail "flashcored exited $rc after SIGTERM"; }
echo "run_sdk_test.sh: passed"
