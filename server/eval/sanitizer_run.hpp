// One evaluation under compute-sanitizer (EvaluateRequest.sanitizer_tool):
// the worker runs itself in one-shot mode (`flashcore_worker --one-shot IN
// --one-shot-out OUT --gpu N`) as compute-sanitizer's target, with the
// request minus the tool, and reads back the response and the tool's report.
// The child makes its own context on the same GPU; the calling worker holds
// the GPU's slot in the pool meanwhile, so nothing else is measured there.
#pragma once

#include <chrono>

#include "common/result.hpp"
#include "flashcore/v1/worker.pb.h"

namespace flashcore::eval {

// compute-sanitizer: $FLASHCORE_COMPUTE_SANITIZER, else on PATH, else
// $CUDA_HOME/bin or /usr/local/cuda/bin; failed_precondition when none.
Result<std::string> find_compute_sanitizer();

Result<v1::EvaluateResponse> evaluate_under_sanitizer(const v1::EvaluateRequest& request, int gpu,
                                                      std::chrono::milliseconds timeout);

// worker_main's one-shot mode: reads a serialized EvaluateRequest from `in`,
// evaluates it on `gpu`, writes the EvaluateResponse to `out`. The exit code.
int run_one_shot(const std::string& in, const std::string& out, int gpu);

}  // namespace flashcore::eval
