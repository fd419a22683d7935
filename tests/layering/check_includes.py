#!/usr/bin/env python3
"""The include graph of server/ and runtime/, checked against the layering rules.

Every quoted #include is resolved the way the compiler resolves it (the
including file's folder, then server/, runtime/, kernel_templates/, then the
generated protos), so "common/result.hpp" (server/common) and
"common/attention_params.cuh" (kernel_templates/common) are told apart. An
edge is (folder of the includer) -> (folder of the included file).

Rules (ARCHITECTURE.md, DESIGN.md section 3):
  1. rpc talks only to the service: server/rpc/ includes nothing of the
     server but rpc/, service/, family/ and common/ (and the protos).
  2. tuning, jit, eval and cache never include rpc/ or service/ (nor app/).
  3. the family definitions import nothing of the server: server/family/
     includes only family/ and the kernel templates' ABI headers.
  4. the service knows no gRPC: server/service/ includes no <grpcpp/...>,
     no generated *.grpc.pb.h of its own accord, and nothing of rpc/ or app/.
  5. runtime/ (shared by the client library and the worker) includes nothing
     of the server but common/.

  check_includes.py [--graph] [ROOT]   exit 1 naming every broken rule;
                                       --graph prints the folder graph.
"""
import re
import sys
from collections import defaultdict
from pathlib import Path

INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^">]+)[">]', re.M)


def folder_of(root: Path, path: Path) -> str:
    rel = path.relative_to(root).parts
    if rel[0] in ("server", "runtime") and len(rel) > 2:
        return f"{rel[0]}/{rel[1]}"
    if rel[0] == "server":
        return "server"  # main.cpp, worker_main.cpp
    return rel[0]  # kernel_templates, ...


def resolve(root: Path, includer: Path, name: str):
    for base in (includer.parent, root / "server", root / "runtime", root / "kernel_templates"):
        candidate = base / name
        if candidate.is_file():
            return candidate.resolve()
    if name.startswith(("flashcore/v1/", "grpc/health/")) and name.endswith(".pb.h"):
        return "proto"
    return None


def edges(root: Path):
    out = []  # (from folder, to folder, file, include text, angle)
    for top in ("server", "runtime"):
        for path in sorted((root / top).rglob("*")):
            if path.suffix not in (".cpp", ".hpp", ".h", ".inc") or not path.is_file():
                continue
            src = folder_of(root, path)
            for bracket, name in INCLUDE.findall(path.read_text(errors="replace")):
                rel = str(path.relative_to(root))
                if bracket == "<":
                    out.append((src, "<" + name.split("/")[0] + ">", rel, name))
                    continue
                target = resolve(root, path, name)
                if target is None:
                    out.append((src, "?", rel, name))
                elif target == "proto":
                    out.append((src, "proto:" + name, rel, name))
                else:
                    out.append((src, folder_of(root, Path(target)), rel, name))
    return out


def broken(edge):
    src, dst, rel, name = edge
    server_dst = dst.startswith("server/") or dst == "runtime/cuda"
    if src == "server/rpc" and server_dst and dst not in (
            "server/rpc", "server/service", "server/family", "server/common"):
        return f"rule 1 (rpc talks only to the service): {rel} includes {name} ({dst})"
    if src in ("server/tuning", "server/jit", "server/eval", "server/cache") and dst in (
            "server/rpc", "server/service", "server/app"):
        return f"rule 2 ({src} never imports rpc or service): {rel} includes {name}"
    if src == "server/family" and dst not in ("server/family", "kernel_templates") and (
            server_dst or dst.startswith("proto") or dst == "?"):
        return f"rule 3 (family imports nothing of the server): {rel} includes {name} ({dst})"
    if src == "server/service" and (dst in ("<grpcpp>", "server/rpc", "server/app") or
                                    (dst.startswith("proto:") and name.endswith(".grpc.pb.h"))):
        return f"rule 4 (the service knows no gRPC): {rel} includes {name}"
    if src.startswith("runtime/") and dst.startswith("server/") and dst != "server/common":
        return f"rule 5 (runtime is not the server's): {rel} includes {name} ({dst})"
    if dst == "?":
        return f"unresolved include: {rel} includes \"{name}\""
    return None


def main(argv):
    graph = "--graph" in argv
    args = [a for a in argv if not a.startswith("--")]
    root = Path(args[0] if args else Path(__file__).resolve().parents[2]).resolve()
    all_edges = edges(root)
    if graph:
        folders = defaultdict(set)
        for src, dst, _, _ in all_edges:
            if src != dst and not dst.startswith(("<", "proto")):
                folders[src].add(dst)
        for src in sorted(folders):
            print(f"{src} -> {', '.join(sorted(folders[src]))}")
    problems = sorted({p for p in map(broken, all_edges) if p})
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{len(all_edges)} includes checked, {len(problems)} broken", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
