"""Resolves test_torch_gpu.py's kernels through a daemon into a client handle cache,
for a GPU machine that cannot run the daemon itself.

    python prepare_gpu_handles.py --address 127.0.0.1:PORT --cache-dir DIR [--arch sm_90a]

On that machine, FLASHCORE_TEST_OFFLINE_CACHE=DIR makes test_torch_gpu.py use
DIR with no daemon: flashcore.torch then serves each call's kernel from the
disk cache (the path a process takes when its daemon is unreachable).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import flashcore  # noqa: E402
from flashcore import _decode, _resolve, _store  # noqa: E402

import gpu_cases  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--arch", default="sm_90a")
    args = parser.parse_args()
    client = flashcore.Client(args.address, timeout=600)
    resolver = _resolve.Resolver(lambda: client, _store.HandleStore(args.cache_dir))
    # Every way flashcore.torch asks: the daemon's choice (the default), the
    # Hopper family by name on sm_90a (FLASHCORE_TORCH_HOPPER=1) and the sm80
    # family by name (=0, and decode shapes with FLASHCORE_TORCH_DECODE=0).
    hopper = args.arch == "sm_90a"
    for case in gpu_cases.ALL:
        templates = [_resolve.AUTO, _resolve.TEMPLATE]
        if hopper and case.head_dim in _resolve.HOPPER_HEAD_DIMS:
            templates.append(_resolve.HOPPER_TEMPLATE)
        for template in templates:
            query = _resolve.Query(case.dtype, case.head_dim, case.causal, args.arch,
                                   case.batch, case.heads, case.kv_heads, case.seq_q,
                                   case.seq_k, case.layout, "", template)
            resolved = resolver.resolve(query)
            print("%-40s %-20s %-20s %s %s %s" % (
                case.name, template or "auto", resolved.handle.template_id,
                resolved.handle.key[:16], resolved.config_source, resolved.handle.config.block_m))
    # The decode family's two-kernel variant, by its case's name.
    case = gpu_cases.DECODE_TWO_KERNEL_CASE
    query = _resolve.Query(case.dtype, case.head_dim, case.causal, args.arch, case.batch,
                           case.heads, case.kv_heads, case.seq_q, case.seq_k, case.layout, "",
                           _decode.TEMPLATE)
    meta = client.compile(query.request(flashcore.pb.TileConfig(**gpu_cases.DECODE_TWO_KERNEL_CONFIG)))
    store = _store.HandleStore(args.cache_dir)
    store.put(client.get_kernel(meta.key))
    store.remember(case.name, meta.key)
    print("%-40s %s %s" % (case.name, meta.key[:16], [s.role for s in meta.steps]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
