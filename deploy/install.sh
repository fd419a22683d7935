#!/usr/bin/env bash
# Installs a FlashCore bundle (made by deploy/bundle.sh) on a GPU box:
#   /opt/flashcore/{bin,lib,share}       the bundle (replaced as a whole)
#   /etc/flashcore/flashcored.toml       from the example, only if absent
#   /etc/systemd/system/flashcored.service
#   /usr/local/bin/flashcore             link to the CLI
# and creates the `flashcore` system user the service runs as.
#
#   install.sh [BUNDLE] [--prefix DIR] [--enable] [--no-systemd]
#
# BUNDLE is a bundle folder or its .tar.gz; default: the folder this script is
# in (the copy inside a bundle). --enable also runs `systemctl enable --now`.
# DESTDIR=/some/root stages every path under that root and skips the user and
# systemctl steps (for packaging and for testing this script).
set -euo pipefail

die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }
step() { printf '==> %s\n' "$*"; }

prefix=/opt/flashcore
enable=0
systemd=1
bundle=""
while (($# > 0)); do
  case "$1" in
    --prefix) prefix="${2:?--prefix needs a folder}"; shift ;;
    --enable) enable=1 ;;
    --no-systemd) systemd=0 ;;
    -h | --help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"; exit 0 ;;
    -*) die "unknown option: $1" ;;
    *) [[ -z "$bundle" ]] || die "more than one bundle given"; bundle="$1" ;;
  esac
  shift
done
[[ "$prefix" == /* ]] || die "--prefix must be an absolute path"

destdir="${DESTDIR:-}"
if [[ -z "$destdir" && $EUID -ne 0 ]]; then
  die "run as root (sudo $0 ...), or set DESTDIR to stage the files"
fi

tmp=""
cleanup() { if [[ -n "$tmp" ]]; then rm -rf "$tmp"; fi; }
trap cleanup EXIT

if [[ -z "$bundle" ]]; then
  bundle="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
fi
if [[ -f "$bundle" ]]; then
  tmp="$(mktemp -d)"
  tar -C "$tmp" -xzf "$bundle"
  bundle="$(find "$tmp" -mindepth 1 -maxdepth 1 -type d | head -1)"
fi
for required in bin/flashcored bin/flashcore lib share/flashcore/flashcored.service \
                share/flashcore/flashcored.example.toml; do
  [[ -e "$bundle/$required" ]] || die "$bundle is not a FlashCore bundle (no $required); make one with deploy/bundle.sh"
done

root="$destdir"
target="$root$prefix"

if [[ -z "$destdir" ]]; then
  if getent passwd flashcore >/dev/null; then
    step "user flashcore exists"
  else
    step "Creating system user flashcore"
    nologin="$(command -v nologin || echo /usr/sbin/nologin)"
    useradd --system --user-group --no-create-home --home-dir /var/lib/flashcore \
      --shell "$nologin" --comment "FlashCore kernel daemon" flashcore
  fi
fi

step "Installing the bundle into $target"
mkdir -p "$(dirname "$target")"
# Stage beside the target, then swap, so a failed copy leaves the old install.
rm -rf "$target.new" "$target.old"
mkdir -p "$target.new"
cp -a "$bundle/bin" "$bundle/lib" "$bundle/share" "$target.new/"
if [[ -e "$target" ]]; then mv "$target" "$target.old"; fi
mv "$target.new" "$target"
rm -rf "$target.old"

config="$root/etc/flashcore/flashcored.toml"
if [[ -f "$config" ]]; then
  step "Keeping the existing $config"
else
  step "Writing $config from the example"
  install -D -m 0644 "$target/share/flashcore/flashcored.example.toml" "$config"
fi

step "Linking $root/usr/local/bin/flashcore -> $prefix/bin/flashcore"
mkdir -p "$root/usr/local/bin"
ln -sfn "$prefix/bin/flashcore" "$root/usr/local/bin/flashcore"

if ((systemd)); then
  unit="$root/etc/systemd/system/flashcored.service"
  step "Installing $unit"
  mkdir -p "$(dirname "$unit")"
  # The unit names /opt/flashcore; follow --prefix.
  sed "s|/opt/flashcore/|$prefix/|g" "$target/share/flashcore/flashcored.service" >"$unit"
  chmod 0644 "$unit"
  if [[ -z "$destdir" && -d /run/systemd/system ]]; then
    systemctl daemon-reload
    if ((enable)); then
      step "Enabling and starting flashcored"
      systemctl enable --now flashcored.service
      systemctl --no-pager status flashcored.service || true
    fi
  elif ((enable)); then
    echo "systemd is not running here (or DESTDIR is set): not enabling the service"
  fi
fi

step "Installed FlashCore $(cat "$target/share/flashcore/VERSION" 2>/dev/null || echo '?')"
cat <<EOF
  config:  /etc/flashcore/flashcored.toml (listen_address is 127.0.0.1:50051; set 0.0.0.0:50051 to serve other hosts)
  cache:   /var/cache/flashcore (systemd CacheDirectory)
  start:   systemctl enable --now flashcored
  check:   flashcore --address 127.0.0.1:50051 health
  GPU tests: $prefix/bin/flashcore_gpu_tests
EOF
