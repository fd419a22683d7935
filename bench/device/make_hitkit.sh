#!/usr/bin/env bash
# build/hitkit: Debian's redis-server and redis-cli with the libraries a GPU
# box may lack, for bench/device/hit_round.sh (the bundle carries the bench
# programs and flashcored; the GPU box has no Redis).
#   bash bench/device/make_hitkit.sh   (repo root)
set -euo pipefail
kit=build/hitkit
rm -rf "$kit" && mkdir -p "$kit/bin" "$kit/lib"
cp -L "$(command -v redis-server)" "$kit/bin/redis-server"
cp -L "$(command -v redis-cli)" "$kit/bin/redis-cli"
for lib in libjemalloc.so.2 liblzf.so.1 libatomic.so.1; do
  path=$(ldd "$kit/bin/redis-server" "$kit/bin/redis-cli" | awk -v l="$lib" '$1 == l {print $3; exit}')
  [[ -n $path ]] && cp -L "$path" "$kit/lib/"
done
ls "$kit/bin" "$kit/lib"
