#!/usr/bin/env python3
"""check_includes.py itself: a tree that keeps the rules passes, and each
rule broken once in a scratch tree fails naming that rule."""
import subprocess
import sys
import tempfile
from pathlib import Path

CHECK = Path(__file__).resolve().parent / "check_includes.py"

GOOD = {
    "server/common/result.hpp": "#pragma once\n",
    "server/family/tile_config.hpp": '#include "common/attention_params.cuh"\n',
    "kernel_templates/common/attention_params.cuh": "#pragma once\n",
    "server/cache/kernel_cache.hpp": '#include "common/result.hpp"\n',
    "server/tuning/tuning_job.hpp": '#include "family/tile_config.hpp"\n',
    "server/service/service.hpp": '#include "cache/kernel_cache.hpp"\n#include "tuning/tuning_job.hpp"\n',
    "server/rpc/flashcore_service.hpp": ('#include <grpcpp/grpcpp.h>\n#include "service/service.hpp"\n'
                                         '#include "flashcore/v1/flashcore.grpc.pb.h"\n'),
    "runtime/cuda/driver_api.hpp": '#include "common/result.hpp"\n',
}

BROKEN = {
    "rule 1": ("server/rpc/flashcore_service.cpp", '#include "cache/kernel_cache.hpp"\n'),
    "rule 2": ("server/tuning/tuning_job.cpp", '#include "service/service.hpp"\n'),
    "rule 3": ("server/family/tile_config.cpp", '#include "common/result.hpp"\n'),
    "rule 4": ("server/service/service.cpp", "#include <grpcpp/grpcpp.h>\n"),
    "rule 5": ("runtime/cuda/driver_api.cpp", '#include "tuning/tuning_job.hpp"\n'),
}


def run(files):
    with tempfile.TemporaryDirectory() as tmp:
        for rel, text in files.items():
            path = Path(tmp) / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        done = subprocess.run([sys.executable, str(CHECK), tmp], capture_output=True, text=True)
        return done.returncode, done.stderr


def main():
    failures = []
    rc, err = run(GOOD)
    if rc != 0:
        failures.append(f"the good tree failed:\n{err}")
    for rule, (rel, text) in BROKEN.items():
        rc, err = run({**GOOD, rel: text})
        if rc != 1 or rule not in err:
            failures.append(f"{rule} broken in {rel}: rc {rc}, stderr:\n{err}")
    for failure in failures:
        print(failure, file=sys.stderr)
    print(f"{1 + len(BROKEN)} trees checked, {len(failures)} wrong")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
