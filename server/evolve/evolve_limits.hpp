// The limits of the evaluator for evolution loops (EvaluateSource): plain
// values, so the daemon's config can hold them without the service.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>

namespace flashcore::evolve {

// One compile-worker process.
struct SandboxLimits {
  std::chrono::milliseconds wall{60000};  // killed past this
  int cpu_seconds = 60;                   // RLIMIT_CPU
  size_t memory_mb = 4096;                // RLIMIT_AS (NVRTC maps ~1.5 GiB for an attention kernel)
  size_t output_bytes = size_t{64} << 20;  // answer read back at most
};

// Limits of EvaluateSource; the names are those the refusals cite.
struct EvolveLimits {
  size_t max_candidates = 64;                 // per call
  size_t max_source_bytes = size_t{256} << 10;  // per candidate
  size_t max_shapes = 8;                      // per call
  int64_t max_shape_elements = int64_t{1} << 27;  // batch x heads x seq x head_dim per tensor
  int default_gpu_time_budget_ms = 60000;     // per generation
  int max_gpu_time_budget_ms = 600000;        // per generation
  size_t max_pending_candidates = 256;        // accepted and not yet compiled, whole daemon
  size_t compile_workers = 2;                 // compile-worker processes at once
  SandboxLimits compile;                      // per compile-worker process
};

}  // namespace flashcore::evolve
