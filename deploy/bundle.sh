#!/usr/bin/env bash
# Packs the daemon, the CLI, the GPU tests and the benchmarks with every
# non-system shared library they load into a relocatable folder and tarball:
#
#   dist/flashcore-<version>-linux-x86_64/{bin,lib,share/flashcore,install.sh}
#   dist/flashcore-<version>-linux-x86_64.tar.gz
#
# The binaries find lib/ through RUNPATH $ORIGIN/../lib, so the bundle runs on
# a GPU box that has the CUDA 13 driver and NVRTC but no gRPC or protobuf.
# Left out on purpose: glibc, libgcc_s and libstdc++ (ABI-bound to the host's
# loader and compiler runtime), and libcuda/libnvrtc (they must match the
# host's driver and toolkit).
#
#   deploy/bundle.sh [--no-build] [--keep-debug]
#
# Environment: FLASHCORE_BUILD_DIR (default <repo>/build), FLASHCORE_DIST_DIR
# (default <repo>/dist).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
BUILD_DIR="${FLASHCORE_BUILD_DIR:-$ROOT/build}"
DIST_DIR="${FLASHCORE_DIST_DIR:-$ROOT/dist}"
mkdir -p "$DIST_DIR"
# Physical path: the loader reports $ORIGIN-resolved libraries by it.
DIST_DIR="$(cd "$DIST_DIR" && pwd -P)"
readonly ROOT BUILD_DIR DIST_DIR

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'bundle.sh: error: %s\n' "$*" >&2; exit 1; }

build=1
strip_debug=1
for arg in "$@"; do
  case "$arg" in
    --no-build) build=0 ;;
    --keep-debug) strip_debug=0 ;;
    -h | --help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown argument: $arg" ;;
  esac
done

command -v patchelf >/dev/null || die "patchelf is missing (apt-get install patchelf, or run deploy/setup.sh)"

version="$(sed -n 's/^project(flashcore VERSION \([0-9.]*\).*/\1/p' "$ROOT/CMakeLists.txt")"
[[ -n "$version" ]] || die "no project version in CMakeLists.txt"
name="flashcore-$version-linux-$(uname -m)"
out="$DIST_DIR/$name"

if ((build)); then
  if [[ -f "$BUILD_DIR/build.ninja" ]]; then
    step "Building (incremental) in $BUILD_DIR"
    cmake --build "$BUILD_DIR" -j "${FLASHCORE_JOBS:-$(nproc)}"
  else
    step "No build in $BUILD_DIR yet: deploy/setup.sh --build-only"
    FLASHCORE_BUILD_DIR="$BUILD_DIR" "$ROOT/deploy/setup.sh" --build-only
  fi
fi

binaries=(
  "$BUILD_DIR/server/flashcored"
  "$BUILD_DIR/server/flashcore_worker"
  "$BUILD_DIR/server/flashcore_compile_worker"  # compiles submitted sources (EvaluateSource)
  "$BUILD_DIR/client/flashcore"
  "$BUILD_DIR/tests/flashcore_gpu_tests"
  "$BUILD_DIR/tests/flashcore_rpc_tests"  # its *GpuTest.* cases run Validate and Tune on the GPU
)
for bin in "${binaries[@]}"; do
  [[ -x "$bin" ]] || die "missing $bin (build first, or drop --no-build)"
done
# Every benchmark program that was built (build/bench/<name>).
if [[ -d "$BUILD_DIR/bench" ]]; then
  while IFS= read -r bin; do binaries+=("$bin"); done \
    < <(find "$BUILD_DIR/bench" -maxdepth 1 -type f -perm -u+x | sort)
fi

# Libraries the host must provide: glibc's own libraries (they must match its
# loader), the compiler runtime, and the NVIDIA driver and NVRTC.
is_system_library() {
  case "$1" in
    linux-vdso.so* | ld-linux*.so* | libc.so* | libm.so* | libdl.so* | librt.so* | libpthread.so* | \
    libresolv.so* | libutil.so* | libanl.so* | libnsl.so* | libmvec.so* | libnss_*.so* | \
    libgcc_s.so* | libstdc++.so* | libcuda.so* | libcudart.so* | libnvrtc*.so*) return 0 ;;
  esac
  return 1
}

step "Assembling $out"
rm -rf "$out" "$DIST_DIR/$name.tar.gz"
mkdir -p "$out/bin" "$out/lib" "$out/share/flashcore"

declare -A bundled=()
for bin in "${binaries[@]}"; do
  cp "$bin" "$out/bin/"
  # ldd lists the whole closure, so one pass per binary is enough.
  while read -r soname arrow path _; do
    [[ "$arrow" == "=>" ]] || continue
    is_system_library "$soname" && continue
    [[ "$path" == "not" ]] && die "$(basename "$bin") needs $soname, which ldd cannot find"
    [[ -n "${bundled[$soname]:-}" ]] && continue
    # Saved under the soname, which is what the DT_NEEDED entries name.
    cp -L "$path" "$out/lib/$soname"
    chmod 0755 "$out/lib/$soname"
    bundled[$soname]="$path"
  done < <(ldd "$bin")
done
echo "binaries: $(cd "$out/bin" && echo *)"
echo "libraries (${#bundled[@]}):"
printf "%s\n" "${!bundled[@]}" | sort | tr "\n" " " | fold -s -w 100 | sed "s/^/  /"; echo

step "Setting RUNPATH (binaries: \$ORIGIN/../lib then CUDA's, libraries: \$ORIGIN)"
for file in "$out"/bin/* "$out"/lib/*; do
  if ((strip_debug)); then
    # Debug info (RelWithDebInfo) is most of the size; the bundle is copied
    # around, the build tree keeps the symbols.
    strip --strip-debug "$file"
  fi
done
# libnvrtc is not bundled: the toolkit's usual folders follow the bundle's
# own, for hosts whose loader cache does not list CUDA.
# shellcheck disable=SC2016  # $ORIGIN is for the loader, not the shell
binary_rpath='$ORIGIN/../lib:/usr/local/cuda/lib64:/usr/local/cuda/lib'
for file in "$out"/bin/*; do patchelf --set-rpath "$binary_rpath" "$file"; done
# shellcheck disable=SC2016
for file in "$out"/lib/*; do patchelf --set-rpath '$ORIGIN' "$file"; done

cp "$ROOT/deploy/flashcored.example.toml" "$ROOT/deploy/flashcored.service" "$out/share/flashcore/"
cp "$ROOT/deploy/install.sh" "$out/install.sh"
chmod 0755 "$out/install.sh"
echo "$version" >"$out/share/flashcore/VERSION"

step "Verifying the bundle"
# Every library a binary loads must come from the bundle or be a system one.
for file in "$out"/bin/* "$out"/lib/*; do
  while read -r soname arrow path _; do
    [[ "$arrow" == "=>" ]] || continue
    is_system_library "$soname" && continue
    path="$(realpath -m "$path")"  # $ORIGIN/../lib shows up as bin/../lib
    [[ "$path" == "$out/lib/"* ]] || die "$(basename "$file") resolves $soname to $path, not to the bundle"
  done < <(env -i LD_LIBRARY_PATH= ldd "$file")
done
echo "every non-system library resolves inside the bundle"
env -i LD_LIBRARY_PATH= "$out/bin/flashcored" --help >/dev/null \
  || die "bin/flashcored --help failed in a clean environment"
env -i LD_LIBRARY_PATH= "$out/bin/flashcore" --help >/dev/null \
  || die "bin/flashcore --help failed in a clean environment"
echo "bin/flashcored --help and bin/flashcore --help run with an empty environment"

step "Packing $DIST_DIR/$name.tar.gz"
tar -C "$DIST_DIR" -czf "$DIST_DIR/$name.tar.gz" "$name"
du -sh "$out" "$DIST_DIR/$name.tar.gz"
echo "install on a GPU box: tar xzf $name.tar.gz && sudo $name/install.sh"
