// NVRTC on a submitted source, inside the compile worker process only
// (compile_worker_main.cpp): the daemon never hands untrusted source to
// NVRTC in its own process (DESIGN.md §4).
#pragma once

#include "flashcore/v1/evolve.pb.h"

namespace flashcore::evolve {

// Compiles request.source with the given named headers (no include paths)
// and options, reads back the lowered name of every name expression, the
// cubin and the log. A failed compile is ok = false with the log; the
// function itself never fails.
v1::SourceCompileResponse compile_source(const v1::SourceCompileRequest& request);

}  // namespace flashcore::evolve
