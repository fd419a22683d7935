// The worker-pool backend's side of measure_many that needs no GPU: the one
// EvaluateRequest it sends for several finalists (checked by the worker's own
// request_error too) and what it reads back from the worker's answer.
#include "service/tuning_backends.hpp"

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "../unit/cache_test_util.hpp"
#include "eval/evaluator.hpp"

namespace flashcore::service {
namespace {

using cache_testing::sample_cubin;
using cache_testing::sample_entry;
using cache_testing::test_key;

// Compiled candidates of one problem class (sample_entry's: bf16, D 128, causal).
std::vector<CompiledCandidate> finalists(int n) {
  std::vector<CompiledCandidate> out;
  for (int i = 0; i < n; ++i) {
    auto kernel = std::make_shared<CachedKernel>(
        sample_entry(test_key("finalist " + std::to_string(i)), sample_cubin(256, i)));
    out.push_back(to_candidate(*kernel, kernel));
  }
  return out;
}

MeasureManyRequest many_request(const std::vector<CompiledCandidate>& candidates) {
  MeasureManyRequest request;
  for (const auto& c : candidates) request.candidates.push_back(&c);
  request.common.problem = candidates.front().kernel->spec.problem;
  request.common.shape = RuntimeShape{2, 8, 4, 1000, 777};
  request.common.layout = QkvLayout::bhsd;
  request.common.seed = 7;
  request.common.warmup = 2;
  request.common.repetitions = 20;
  request.common.target_loop_ms = 1.5;
  request.rounds = 3;
  return request;
}

void expect_refused(const Result<v1::EvaluateRequest>& call, ErrorCode code,
                    const std::string& field) {
  ASSERT_FALSE(call.ok()) << "accepted; expected a complaint about " << field;
  EXPECT_EQ(call.error().code, code) << call.error().message;
  EXPECT_EQ(call.error().message.rfind(field + ":", 0), 0u) << call.error().message;
}

TEST(TimingRequest, EveryFinalistInOneCallOnOneProblem) {
  const auto candidates = finalists(3);
  auto call = timing_request(many_request(candidates));
  ASSERT_TRUE(call.ok()) << call.error().message;
  EXPECT_FALSE(call->has_kernel());
  ASSERT_EQ(call->kernels_size(), 3);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(call->kernels(i).key(), candidates[i].key);
    EXPECT_EQ(call->kernels(i).cubin(), candidates[i].kernel->compiled.cubin);
    EXPECT_EQ(call->kernels(i).lowered_name(), candidates[i].kernel->compiled.lowered_name);
  }
  EXPECT_TRUE(call->time());
  EXPECT_FALSE(call->validate());
  EXPECT_FALSE(call->has_reference());
  EXPECT_EQ(call->rounds(), 3);
  EXPECT_EQ(call->seed(), 7u);  // never 0: the inputs are random, and one set for all
  EXPECT_EQ(call->timing().warmup(), 2);
  EXPECT_EQ(call->timing().repetitions(), 20);
  EXPECT_DOUBLE_EQ(call->timing().target_loop_ms(), 1.5);
  const v1::Problem& p = call->problem();
  EXPECT_EQ(p.dtype(), v1::DTYPE_BF16);
  EXPECT_EQ(p.head_dim(), 128);
  EXPECT_TRUE(p.causal());
  EXPECT_EQ(p.batch(), 2);
  EXPECT_EQ(p.kv_heads(), 4);
  EXPECT_EQ(p.seq_q(), 1000);
  EXPECT_EQ(p.seq_k(), 777);
  EXPECT_EQ(p.layout(), v1::LAYOUT_BHSD);
  // What the worker will accept.
  EXPECT_EQ(eval::request_error(*call), std::nullopt);
}

TEST(TimingRequest, RefusesWhatOneCallCannotTimeNamingTheField) {
  auto candidates = finalists(eval::kMaxTimedKernels + 1);
  auto request = many_request(candidates);
  expect_refused(timing_request(request), ErrorCode::invalid_argument, "candidates");
  request.candidates.clear();
  expect_refused(timing_request(request), ErrorCode::invalid_argument, "candidates");

  request = many_request(candidates);
  request.candidates.resize(3);
  request.rounds = 0;
  expect_refused(timing_request(request), ErrorCode::invalid_argument, "rounds");
  request.rounds = eval::kMaxTimingRounds + 1;
  expect_refused(timing_request(request), ErrorCode::invalid_argument, "rounds");

  // Compiled for another problem class: it would not read the same inputs.
  auto mixed = finalists(3);
  auto other = std::make_shared<CachedKernel>(*mixed[1].kernel);
  other->spec.problem.head_dim = 64;
  mixed[1] = to_candidate(*other, other);
  expect_refused(timing_request(many_request(mixed)), ErrorCode::invalid_argument,
                 "candidates[1].problem");
  auto families = finalists(3);
  auto hopper = std::make_shared<CachedKernel>(*families[2].kernel);
  hopper->spec.template_id = "attention_fwd_sm90";
  families[2] = to_candidate(*hopper, hopper);
  expect_refused(timing_request(many_request(families)), ErrorCode::invalid_argument,
                 "candidates[2].template_id");

  auto uncompiled = finalists(2);
  uncompiled[0].kernel.reset();
  request = many_request(finalists(2));
  request.candidates[0] = &uncompiled[0];
  expect_refused(timing_request(request), ErrorCode::internal, "candidates[0]");
}

v1::TimingResult timing(double median, double p10, double p90) {
  v1::TimingResult t;
  t.set_median_us(median);
  t.set_p10_us(p10);
  t.set_p90_us(p90);
  t.set_samples(15);
  return t;
}

TEST(RoundMeasurements, OnePerRoundInRoundOrder) {
  v1::EvaluateResponse response;
  response.set_gpu_index(1);
  response.set_device("NVIDIA H100 80GB HBM3");
  v1::KernelTiming* k = response.add_timings();
  *k->mutable_timing() = timing(10.0, 9.0, 12.0);
  *k->add_rounds() = timing(10.5, 10.0, 11.0);
  *k->add_rounds() = timing(9.5, 9.0, 10.0);
  *k->add_rounds() = timing(10.0, 9.5, 12.0);
  const auto rounds = round_measurements(*k, response);
  ASSERT_EQ(rounds.size(), 3u);
  EXPECT_DOUBLE_EQ(rounds[0].median_us, 10.5);
  EXPECT_DOUBLE_EQ(rounds[1].p10_us, 9.0);
  EXPECT_DOUBLE_EQ(rounds[2].p90_us, 12.0);
  for (const auto& m : rounds) {
    EXPECT_TRUE(m.correct);
    EXPECT_EQ(m.samples, 15);
    EXPECT_EQ(m.gpu_index, 1);
    EXPECT_EQ(m.device, "NVIDIA H100 80GB HBM3");
  }

  // No rounds: the pooled timing as one; no time at all: not usable.
  v1::KernelTiming pooled;
  *pooled.mutable_timing() = timing(10.0, 9.0, 12.0);
  ASSERT_EQ(round_measurements(pooled, response).size(), 1u);
  EXPECT_DOUBLE_EQ(round_measurements(pooled, response)[0].median_us, 10.0);
  v1::KernelTiming empty;
  *empty.add_rounds() = timing(0.0, 0.0, 0.0);
  ASSERT_EQ(round_measurements(empty, response).size(), 1u);
  EXPECT_FALSE(round_measurements(empty, response)[0].correct);
}

}  // namespace
}  // namespace flashcore::service
