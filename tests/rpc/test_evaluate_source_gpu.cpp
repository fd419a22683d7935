// EvaluateSource on a GPU (issue 18): submitted candidates that are correct,
// wrong, fault or hang each get their verdict from the daemon's evaluation
// workers, while the daemon serves other calls. Skips without a GPU (the
// daemon then has no evaluation workers).
#include <gtest/gtest.h>

#include <future>
#include <thread>

#include "evolve_sources.hpp"
#include "flashcore/v1/evolve.grpc.pb.h"
#include "rpc_test_support.hpp"

namespace flashcore {
namespace {

using namespace std::chrono_literals;

void use_real_workers(DaemonConfig& config) {
  rpc_testing::use_real_worker(config);
  const char* compile = std::getenv("FLASHCORE_COMPILE_WORKER_BINARY");
  config.compile_worker =
      compile != nullptr && *compile != '\0' ? compile : FLASHCORE_COMPILE_WORKER_PATH;
}

v1::SourceCandidate candidate(const std::string& name, const std::string& source,
                              const std::string& kernel) {
  v1::SourceCandidate c;
  c.set_name(name);
  c.set_source(source);
  c.set_name_expression(kernel);
  c.mutable_launch()->set_block_m(32);
  c.mutable_launch()->set_threads(32);
  return c;
}

struct Stream {
  grpc::Status status;
  v1::GenerationStarted started;
  std::map<std::string, v1::CandidateVerdict> final;
  v1::GenerationSummary summary;
};

Stream evaluate(v1::KernelEvolution::Stub& stub, const v1::EvaluateSourceRequest& request) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + 10min);
  auto reader = stub.EvaluateSource(&context, request);
  Stream out;
  v1::EvaluateSourceEvent event;
  while (reader->Read(&event)) {
    if (event.has_started()) out.started = event.started();
    if (event.has_verdict() && event.verdict().final()) out.final[event.verdict().name()] = event.verdict();
    if (event.has_summary()) out.summary = event.summary();
  }
  out.status = reader->Finish();
  return out;
}

TEST(EvaluateSourceGpuTest, SM80_CorrectWrongFaultingAndHangingCandidatesGetTheirVerdicts) {
  test_support::ScratchDir cache;
  DaemonConfig config = rpc_testing::loopback_config(cache.path());
  config.evaluation_timeout = 15000ms;  // the hanging kernel is killed after this
  use_real_workers(config);
  auto daemon = rpc_testing::start_daemon(config);
  ASSERT_NE(daemon, nullptr);
  auto channel = rpc_testing::channel_to(*daemon);
  auto flashcore = v1::FlashCore::NewStub(channel);
  auto evolve = v1::KernelEvolution::NewStub(channel);
  v1::ServerInfo info;
  ASSERT_TRUE(rpc_testing::server_info(*flashcore, &info).ok());
  if (!info.gpu_available()) GTEST_SKIP() << "no evaluation workers: " << info.gpu_unavailable_reason();

  v1::EvaluateSourceRequest request;
  auto* problem = request.mutable_problem();
  problem->set_dtype(v1::DTYPE_FP16);
  problem->set_head_dim(64);
  problem->set_batch(2);
  problem->set_heads(4);
  problem->set_seq_q(256);
  v1::Problem ragged;
  ragged.set_batch(1);
  ragged.set_heads(4);
  ragged.set_kv_heads(2);
  ragged.set_seq_q(77);
  ragged.set_seq_k(300);
  *request.add_shapes() = *problem;
  *request.add_shapes() = ragged;
  request.set_arch(info.default_arch() == "sm_90a" ? "sm_90a" : "sm_80");
  request.set_generation(1);
  request.mutable_options()->set_baseline("correct");
  // A fault (worker restart) and a 15 s hang fit with room to spare.
  request.mutable_options()->set_gpu_time_budget_ms(300000);
  *request.add_candidates() = candidate("correct", test_support::naive_attention_source(),
                                        test_support::naive_name_expression());
  *request.add_candidates() =
      candidate("wrong", test_support::naive_attention_source("scaled_attention", "1.5f"),
                test_support::naive_name_expression("scaled_attention"));
  *request.add_candidates() = candidate("faulting", test_support::kFaultingSource, "faulting");
  *request.add_candidates() = candidate("hanging", test_support::kHangingSource, "hanging");
  // A variant of the registered template: the template itself at a tile config.
  v1::SourceCandidate variant;
  variant.set_name("template");
  variant.set_source("#include \"attention/attention_fwd.cuh\"\n");
  variant.mutable_config()->set_block_m(64);
  variant.mutable_config()->set_block_n(64);
  variant.mutable_config()->set_warps(4);
  variant.mutable_config()->set_stages(2);
  *request.add_candidates() = variant;

  // Other clients are served throughout.
  std::atomic<bool> done{false};
  std::atomic<int> served{0}, refused{0};
  std::thread other([&] {
    while (!done) {
      v1::ServerInfo i;
      (rpc_testing::server_info(*flashcore, &i).ok() ? served : refused)++;
      std::this_thread::sleep_for(200ms);
    }
  });
  const Stream out = evaluate(*evolve, request);
  done = true;
  other.join();
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  EXPECT_GT(served.load(), 0);
  EXPECT_EQ(refused.load(), 0);
  ASSERT_EQ(out.final.size(), 5u);

  const auto& correct = out.final.at("correct");
  EXPECT_EQ(correct.status(), v1::CANDIDATE_STATUS_VALID) << correct.detail();
  ASSERT_EQ(correct.correctness_size(), 2);
  for (const auto& shape : correct.correctness()) {
    EXPECT_TRUE(shape.passed()) << shape.detail();
    EXPECT_LT(shape.rel_error(), 2e-3);
    EXPECT_EQ(shape.first_wrong_row(), -1);
  }
  EXPECT_TRUE(correct.determinism().evaluated());
  EXPECT_TRUE(correct.determinism().deterministic());
  EXPECT_GT(correct.timing().median_us(), 0);
  EXPECT_GT(correct.timing().served_median_us(), 0);
  EXPECT_GT(correct.timing().speedup_vs_served(), 0);
  EXPECT_NEAR(correct.timing().speedup_vs_baseline(), 1.0, 1e-9);  // its own baseline
  std::printf("[ evolve   ] correct naive kernel: %.1f us, served %.1f us (%s), %.3fx\n",
              correct.timing().median_us(), correct.timing().served_median_us(),
              correct.timing().served().c_str(), correct.timing().speedup_vs_served());

  const auto& wrong = out.final.at("wrong");
  EXPECT_EQ(wrong.status(), v1::CANDIDATE_STATUS_WRONG) << wrong.detail();
  ASSERT_GE(wrong.correctness_size(), 1);
  EXPECT_FALSE(wrong.correctness(0).passed());
  EXPECT_GT(wrong.correctness(0).rel_error(), 2e-3);
  EXPECT_GE(wrong.correctness(0).first_wrong_row(), 0);
  EXPECT_GE(wrong.correctness(0).first_wrong_col(), 0);
  EXPECT_EQ(wrong.timing().median_us(), 0);  // a wrong kernel is not timed

  const auto& faulting = out.final.at("faulting");
  EXPECT_EQ(faulting.status(), v1::CANDIDATE_STATUS_FAILED) << faulting.detail();
  std::printf("[ evolve   ] faulting: %s\n", faulting.detail().c_str());
  const auto& hanging = out.final.at("hanging");
  EXPECT_EQ(hanging.status(), v1::CANDIDATE_STATUS_FAILED) << hanging.detail();
  std::printf("[ evolve   ] hanging: %s\n", hanging.detail().c_str());

  const auto& variant_verdict = out.final.at("template");
  EXPECT_EQ(variant_verdict.status(), v1::CANDIDATE_STATUS_VALID) << variant_verdict.detail();
  EXPECT_GT(variant_verdict.timing().speedup_vs_baseline(), 1.0);  // beats the naive kernel

  EXPECT_EQ(out.summary.candidates(), 5);
  EXPECT_EQ(out.summary.valid(), 2);
  EXPECT_EQ(out.summary.wrong(), 1);
  EXPECT_EQ(out.summary.failed(), 2);
  EXPECT_GT(out.summary.gpu_seconds(), 0);
  EXPECT_EQ(out.summary.best_candidate_id(), variant_verdict.candidate_id());

  // Promotion: refused for a candidate slower than the served best.
  grpc::ClientContext context;
  v1::PromoteCandidateRequest promote;
  promote.set_id(correct.candidate_id());
  v1::PromoteCandidateResponse promoted;
  auto status = evolve->PromoteCandidate(&context, promote, &promoted);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(status.error_message().find("does not beat the served best"), std::string::npos)
      << status.error_message();

  // After the faults the workers serve again: a second generation is valid.
  v1::EvaluateSourceRequest again = request;
  again.clear_candidates();
  again.set_generation(2);
  again.mutable_options()->clear_baseline();
  *again.add_candidates() = candidate("again", test_support::naive_attention_source(),
                                      test_support::naive_name_expression());
  const Stream second = evaluate(*evolve, again);
  ASSERT_TRUE(second.status.ok()) << second.status.error_message();
  EXPECT_EQ(second.final.at("again").status(), v1::CANDIDATE_STATUS_VALID)
      << second.final.at("again").detail();
}

// With the sanitizer option: a kernel that is correct but races on shared
// memory is caught by racecheck; the clean one passes memcheck and racecheck.
TEST(EvaluateSourceGpuTest, SM80_RacecheckCatchesASharedMemoryRace) {
  test_support::ScratchDir cache;
  DaemonConfig config = rpc_testing::loopback_config(cache.path());
  use_real_workers(config);
  auto daemon = rpc_testing::start_daemon(config);
  ASSERT_NE(daemon, nullptr);
  auto channel = rpc_testing::channel_to(*daemon);
  auto flashcore = v1::FlashCore::NewStub(channel);
  auto evolve = v1::KernelEvolution::NewStub(channel);
  v1::ServerInfo info;
  ASSERT_TRUE(rpc_testing::server_info(*flashcore, &info).ok());
  if (!info.gpu_available()) GTEST_SKIP() << "no evaluation workers: " << info.gpu_unavailable_reason();

  v1::EvaluateSourceRequest request;
  auto* problem = request.mutable_problem();
  problem->set_dtype(v1::DTYPE_FP16);
  problem->set_head_dim(64);
  problem->set_batch(1);
  problem->set_heads(2);
  problem->set_seq_q(128);
  request.set_arch(info.default_arch() == "sm_90a" ? "sm_90a" : "sm_80");
  request.mutable_options()->set_sanitizer(true);
  *request.add_candidates() = candidate("clean", test_support::naive_attention_source(),
                                        test_support::naive_name_expression());
  auto racy = candidate("racy",
                        test_support::naive_attention_source("racy_attention", "1.0f", "seq_k", 64,
                                                             test_support::kSharedMemoryRace),
                        test_support::naive_name_expression("racy_attention"));
  racy.mutable_launch()->set_block_m(64);
  racy.mutable_launch()->set_threads(64);
  *request.add_candidates() = racy;
  const Stream out = evaluate(*evolve, request);
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  const auto& clean = out.final.at("clean");
  EXPECT_EQ(clean.status(), v1::CANDIDATE_STATUS_VALID) << clean.detail() << "\n" << clean.sanitizer().report();
  EXPECT_TRUE(clean.sanitizer().evaluated());
  EXPECT_TRUE(clean.sanitizer().clean()) << clean.sanitizer().report();
  const auto& race = out.final.at("racy");
  EXPECT_TRUE(race.correctness_size() > 0 && race.correctness(0).passed());  // correct output
  EXPECT_EQ(race.status(), v1::CANDIDATE_STATUS_FAILED) << race.detail();
  EXPECT_TRUE(race.sanitizer().evaluated());
  EXPECT_FALSE(race.sanitizer().clean());
  EXPECT_NE(race.sanitizer().report().find("racecheck"), std::string::npos) << race.sanitizer().report();
  std::printf("[ evolve   ] racy: %s\n%s", race.detail().c_str(), race.sanitizer().report().c_str());
}

}  // namespace
}  // namespace flashcore
