// The live one-line progress of `flashcore tune` on stderr.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>

#include "flashcore/v1/flashcore.pb.h"

namespace flashcore::cli {

struct TuneProgressLine {
  int budget = 0;
  int evaluations = 0;
  int generation = 0;
  int failures = 0;
  int queued = 0;
  double best_us = 0.0;
  double best_tflops = 0.0;
  int64_t eta_ms = 0;
  bool printed = false;

  void update(const v1::TuneProgress& p) {
    if (p.has_queued()) queued = p.queued().position();
    if (p.has_started()) {
      queued = 0;
      budget = p.started().max_evaluations();
      // A search of several families starts once per family: a bar each.
      if (printed) std::fprintf(stderr, "\n");
      evaluations = generation = failures = 0;
      best_us = best_tflops = 0.0;
      std::fprintf(stderr, "tuning job %lld: %s%s%d configs in bucket %s, budget %d evaluations\n",
                   static_cast<long long>(p.started().job_id()),
                   p.started().template_id().c_str(), p.started().template_id().empty() ? "" : ", ",
                   p.started().space_size(), p.started().bucket().c_str(), budget);
    }
    if (p.has_trial()) {
      evaluations = p.trial().evaluations();
      generation = p.trial().generation();
      if (p.trial().status() != "ok") ++failures;
      eta_ms = p.eta_ms();
    }
    if (p.has_best()) {
      best_us = p.best().median_us();
      best_tflops = p.best().tflops();
    }
    if (p.has_done()) {
      if (printed) std::fprintf(stderr, "\n");
      printed = false;
      return;
    }
    draw();
  }

  void draw() {
    if (queued > 0) {
      std::fprintf(stderr, "\rqueued: position %d%-40s", queued, "");
    } else {
      const int width = 24;
      const int filled = budget > 0 ? std::min(width, evaluations * width / budget) : 0;
      std::string bar(static_cast<size_t>(filled), '#');
      bar.resize(width, '.');
      char best[64] = "-";
      if (best_us > 0)
        std::snprintf(best, sizeof best, "%.2f us %.1f TF/s", best_us, best_tflops);
      std::fprintf(stderr, "\r[%s] %d/%d  gen %d  best %s  failures %d  eta %llds   ", bar.c_str(),
                   evaluations, budget, generation, best, failures,
                   static_cast<long long>((eta_ms + 999) / 1000));
    }
    std::fflush(stderr);
    printed = true;
  }
};

}  // namespace flashcore::cli
