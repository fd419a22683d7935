// The evaluation worker on a GPU: the Evaluator in this process, then the
// real flashcore_worker binary over its Unix socket. Kernels are compiled by
// the daemon like the other GPU tests; the deliberately wrong and faulting
// ones come from the test-only templates under tests/gpu/templates/,
// compiled by an in-process daemon pointed there.
//
// The worker binary is $FLASHCORE_WORKER, else flashcore_worker beside this
// test binary (a bundle's bin/), else the build tree's. The test templates
// are under $FLASHCORE_GPU_TEST_TEMPLATES, else beside this source file, else
// tests/gpu/templates under the working directory.
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "../common/test_templates.hpp"
#include "app/daemon.hpp"
#include "cuda/attention_launch.hpp"
#include "eval/attention_reference.hpp"
#include "eval/evaluator.hpp"
#include "eval/gpu_reference.hpp"
#include "flashcore/v1/worker.grpc.pb.h"
#include "gpu_environment.hpp"

extern char** environ;

namespace flashcore {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using test_support::ScratchDir;

// Ragged in every way the kernel cares about: 300 query rows fill no tile
// size, GQA (4 heads on 2 KV heads), seq_k != seq_q.
v1::Problem test_problem() {
  v1::Problem p;
  p.set_dtype(v1::DTYPE_FP16);
  p.set_head_dim(64);
  p.set_causal(false);
  p.set_batch(2);
  p.set_heads(4);
  p.set_kv_heads(2);
  p.set_seq_q(300);
  p.set_seq_k(333);
  p.set_layout(v1::LAYOUT_BSHD);
  return p;
}

v1::KernelRequest kernel_request(const v1::Problem& problem) {
  v1::KernelRequest request;
  request.set_template_id("attention_fwd");
  *request.mutable_problem() = problem;
  request.mutable_config()->set_block_m(128);
  request.mutable_config()->set_block_n(64);
  request.mutable_config()->set_warps(4);
  request.mutable_config()->set_stages(2);
  return request;
}

// The real attention kernel for test_problem(), compiled once by the GPU
// tests' daemon.
const v1::EvalKernel& correct_kernel() {
  static const v1::EvalKernel kernel = [] {
    auto handle = testing::gpu_environment().client->compile(kernel_request(test_problem()));
    EXPECT_TRUE(handle.ok()) << handle.error().message << "\n" << handle.error().detail;
    return handle.ok() ? eval::eval_kernel_from_handle(*handle) : v1::EvalKernel();
  }();
  return kernel;
}

std::optional<fs::path> test_templates_dir() {
  std::vector<fs::path> candidates;
  if (const char* dir = std::getenv("FLASHCORE_GPU_TEST_TEMPLATES"); dir && *dir)
    candidates.emplace_back(dir);
  candidates.push_back(fs::path(FLASHCORE_SOURCE_DIR) / "tests" / "gpu" / "templates");
  candidates.push_back(fs::current_path() / "tests" / "gpu" / "templates");
  for (const auto& dir : candidates)
    if (fs::exists(dir / "faulting" / "attention" / "attention_fwd.cuh")) return dir;
  return std::nullopt;
}

// Compiles test_problem() with the test-only template `variant` (a folder
// under tests/gpu/templates/) through an in-process daemon, with the real
// ABI header beside it.
Result<v1::EvalKernel> compile_test_template_once(const std::string& variant) {
  const auto root = test_templates_dir();
  if (!root)
    return make_error(ErrorCode::not_found,
                      "tests/gpu/templates not found: set FLASHCORE_GPU_TEST_TEMPLATES");
  const std::string source =
      test_support::read_file(*root / variant / "attention" / "attention_fwd.cuh");
  ScratchDir templates, cache;
  test_support::write_attention_templates(templates, source);
  DaemonConfig config;
  config.listen_address = "127.0.0.1:0";
  config.cache_dir = cache.path();
  config.templates_dir = templates.path();
  config.log_level = "warn";
  auto daemon = Daemon::start(config);
  if (!daemon) return daemon.error();
  client::ConnectOptions options;
  options.address = (*daemon)->address();
  auto client = client::Client::connect(options);
  if (!client) return client.error();
  auto handle = client->compile(kernel_request(test_problem()));
  if (!handle) return handle.error();
  return eval::eval_kernel_from_handle(*handle);
}

// Memoized per variant: a second NVRTC compile of the same source in one
// process can be a driver compute-cache hit without a ptxas report, which the
// daemon refuses (it needs the resource report).
Result<v1::EvalKernel> compile_test_template(const std::string& variant) {
  static std::map<std::string, v1::EvalKernel> compiled;
  if (auto it = compiled.find(variant); it != compiled.end()) return it->second;
  auto kernel = compile_test_template_once(variant);
  if (kernel) compiled.emplace(variant, *kernel);
  return kernel;
}

fs::path worker_binary() {
  if (const char* path = std::getenv("FLASHCORE_WORKER"); path && *path) return path;
  std::error_code ec;
  const fs::path beside = fs::read_symlink("/proc/self/exe", ec).parent_path() / "flashcore_worker";
  if (!ec && fs::exists(beside)) return beside;
  return FLASHCORE_WORKER_PATH;
}

// Bytes of one timing input set, counted here from the shape: Q, K, V and O
// in fp16, the LSE in fp32.
int64_t set_bytes(const v1::Problem& p) {
  const int64_t kv_heads = p.kv_heads() ? p.kv_heads() : p.heads();
  const int64_t seq_k = p.seq_k() ? p.seq_k() : p.seq_q();
  const int64_t q = p.batch() * p.heads() * p.seq_q() * p.head_dim();
  const int64_t kv = p.batch() * kv_heads * seq_k * p.head_dim();
  return (2 * q + 2 * kv) * 2 + p.batch() * p.heads() * p.seq_q() * 4;
}

int64_t l2_bytes() {
  auto devices = cuda::probe_devices();
  return devices.ok() && !devices->empty() ? devices->front().l2_bytes : 0;
}

class SM90_Evaluator : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!testing::gpu_environment().skip_reason.empty())
      GTEST_SKIP() << testing::gpu_environment().skip_reason;
    ASSERT_FALSE(correct_kernel().cubin().empty()) << "the correct kernel did not compile";
  }

  // One evaluator for the suite, like the one a worker process holds.
  static eval::Evaluator& evaluator() {
    static std::unique_ptr<eval::Evaluator> instance = [] {
      auto created = eval::Evaluator::create(0);
      EXPECT_TRUE(created.ok()) << created.error().message;
      return created.ok() ? std::move(created.value()) : nullptr;
    }();
    if (!instance) throw std::runtime_error("no evaluator");
    return *instance;
  }

  static v1::EvaluateRequest validate_request(const v1::EvalKernel& kernel) {
    v1::EvaluateRequest request;
    *request.mutable_kernel() = kernel;
    *request.mutable_problem() = test_problem();
    request.set_validate(true);
    return request;
  }
};

void expect_passed(const v1::ValidationRecord& v, double tolerance) {
  EXPECT_TRUE(v.evaluated());
  EXPECT_TRUE(v.passed()) << v.detail();
  EXPECT_TRUE(v.deterministic()) << v.detail();
  EXPECT_EQ(v.determinism_runs(), eval::kDefaultDeterminismRuns);
  EXPECT_EQ(v.determinism_hash().size(), 64u);
  EXPECT_EQ(v.stability_trials(), eval::kDefaultStabilityTrials);
  EXPECT_EQ(v.stability_passed(), v.stability_trials()) << v.detail();
  EXPECT_LE(v.rel_error(), tolerance) << v.detail();
  EXPECT_GE(v.max_abs_error(), 0);
}

TEST_F(SM90_Evaluator, InProcessCorrectKernelPassesTheValidationMatrix) {
  auto response = evaluator().evaluate(validate_request(correct_kernel()));
  ASSERT_TRUE(response.ok()) << response.error().message;
  const auto& v = response->validation();
  std::printf("[ validate ] %s\n", v.detail().c_str());
  expect_passed(v, eval::kFp16Tolerance);
  EXPECT_GT(v.rel_error(), 0) << "fp16 output cannot match fp64 exactly";
  EXPECT_EQ(v.device(), evaluator().info().device());
  EXPECT_FALSE(response->has_timing());
  EXPECT_FALSE(evaluator().context_lost());
}

// max_abs gates on its own: with the rel gate opened wide, a one-element
// tolerance below the kernel's error fails it, naming max_abs_error.
TEST_F(SM90_Evaluator, InProcessMaxAbsToleranceGatesOnItsOwn) {
  auto request = validate_request(correct_kernel());
  request.mutable_validation()->set_determinism_runs(2);
  request.mutable_validation()->set_stability_trials(2);
  request.mutable_validation()->set_rel_tolerance(0.5);
  request.mutable_validation()->set_max_abs_tolerance(1e-7);
  auto tight = evaluator().evaluate(request);
  ASSERT_TRUE(tight.ok()) << tight.error().message;
  std::printf("[ validate ] %s\n", tight->validation().detail().c_str());
  EXPECT_FALSE(tight->validation().passed());
  EXPECT_NE(tight->validation().detail().find("max_abs_error"), std::string::npos);
  EXPECT_EQ(tight->validation().detail().find("rel_error"), std::string::npos)
      << "only the one-element gate fails";
  request.mutable_validation()->set_max_abs_tolerance(0);  // the fp16 default
  auto normal = evaluator().evaluate(request);
  ASSERT_TRUE(normal.ok()) << normal.error().message;
  EXPECT_TRUE(normal->validation().passed()) << normal->validation().detail();
  EXPECT_LE(normal->validation().max_abs_error(), eval::kFp16MaxAbsTolerance * 8);
}

TEST_F(SM90_Evaluator, InProcessSameSeedSameOutputHash) {
  auto request = validate_request(correct_kernel());
  request.set_seed(1234);
  request.mutable_validation()->set_determinism_runs(3);
  request.mutable_validation()->set_stability_trials(1);
  auto first = evaluator().evaluate(request);
  auto second = evaluator().evaluate(request);
  ASSERT_TRUE(first.ok() && second.ok());
  EXPECT_EQ(first->validation().determinism_hash(), second->validation().determinism_hash());
  request.set_seed(1235);
  auto other = evaluator().evaluate(request);
  ASSERT_TRUE(other.ok());
  EXPECT_NE(first->validation().determinism_hash(), other->validation().determinism_hash());
}

TEST_F(SM90_Evaluator, InProcessSampledRowsBf16Causal) {
  v1::Problem problem = test_problem();
  problem.set_dtype(v1::DTYPE_BF16);
  problem.set_causal(true);
  problem.set_seq_q(1000);
  problem.set_seq_k(0);
  auto handle = testing::gpu_environment().client->compile(kernel_request(problem));
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  auto request = validate_request(eval::eval_kernel_from_handle(*handle));
  *request.mutable_problem() = problem;
  request.mutable_validation()->set_reference_rows(16);
  auto response = evaluator().evaluate(request);
  ASSERT_TRUE(response.ok()) << response.error().message;
  std::printf("[ validate ] %s\n", response->validation().detail().c_str());
  expect_passed(response->validation(), eval::kBf16Tolerance);
  EXPECT_NE(response->validation().detail().find("16 rows"), std::string::npos);
}

// The GPU fp64 reference (long validations use it for every row) against the
// CPU's on every row of ragged, GQA, causal (top-left, seq_k above and below
// seq_q), both layouts, fp16 and bf16, head dims 64/128/256.
TEST_F(SM90_Evaluator, GpuReferenceAgreesWithTheCpuOnEveryRow) {
  auto devices = cuda::probe_devices();
  ASSERT_TRUE(devices.ok() && !devices->empty());
  auto context = cuda::Context::retain_primary(0);
  ASSERT_TRUE(context.ok()) << context.error().message;
  ASSERT_TRUE(context->make_current().ok());
  auto reference = eval::GpuReference::create(devices->front().arch);
  ASSERT_TRUE(reference.ok()) << reference.error().message << "\n" << reference.error().detail;
  struct Case {
    DType dtype;
    int batch, heads, kv_heads, seq_q, seq_k, dim;
    bool causal, bhsd;
  };
  const Case cases[] = {
      {DType::fp16, 2, 4, 2, 300, 333, 64, false, false},
      {DType::bf16, 1, 3, 1, 257, 1000, 128, true, true},
      {DType::fp16, 2, 2, 2, 301, 77, 256, true, false},
      {DType::bf16, 1, 8, 8, 1, 4133, 128, false, true},
  };
  std::mt19937_64 rng(77);
  for (const Case& c : cases) {
    eval::AttentionShape shape;
    shape.batch = c.batch;
    shape.heads = c.heads;
    shape.kv_heads = c.kv_heads;
    shape.seq_q = c.seq_q;
    shape.seq_k = c.seq_k;
    shape.head_dim = c.dim;
    shape.causal = c.causal;
    shape.bhsd = c.bhsd;
    const size_t nq = size_t(c.batch) * c.heads * c.seq_q * c.dim;
    const size_t nkv = size_t(c.batch) * c.kv_heads * c.seq_k * c.dim;
    std::vector<uint16_t> qb, kb, vb;
    std::vector<float> q, k, v;
    eval::random_tensor(nq, c.dtype, rng, qb, q);
    eval::random_tensor(nkv, c.dtype, rng, kb, k);
    eval::random_tensor(nkv, c.dtype, rng, vb, v);
    auto dq = cuda::DeviceBuffer::allocate(nq * 2), dk = cuda::DeviceBuffer::allocate(nkv * 2),
         dv = cuda::DeviceBuffer::allocate(nkv * 2), dout = cuda::DeviceBuffer::allocate(nq * 2);
    ASSERT_TRUE(dq.ok() && dk.ok() && dv.ok() && dout.ok());
    ASSERT_TRUE(dq->upload(qb.data(), nq * 2).ok());
    ASSERT_TRUE(dk->upload(kb.data(), nkv * 2).ok());
    ASSERT_TRUE(dv->upload(vb.data(), nkv * 2).ok());
    cuda::AttentionShape launch;
    launch.batch = c.batch;
    launch.heads = c.heads;
    launch.kv_heads = c.kv_heads;
    launch.seq_q = c.seq_q;
    launch.seq_k = c.seq_k;
    launch.head_dim = c.dim;
    launch.layout = c.bhsd ? cuda::TensorLayout::bhsd : cuda::TensorLayout::bshd;
    const AttentionParams params =
        cuda::make_attention_params(launch, dq->get(), dk->get(), dv->get(), dout->get());
    const double scale = 1.0 / std::sqrt(double(c.dim));
    auto gpu = (*reference)->run(shape, c.dtype, params, scale);
    ASSERT_TRUE(gpu.ok()) << gpu.error().message;
    const eval::AttentionReference cpu = eval::reference_attention(shape, q, k, v, scale, 8);
    ASSERT_EQ(gpu->out.size(), cpu.out.size());
    double worst = 0, worst_lse = 0;
    for (size_t i = 0; i < cpu.out.size(); ++i) worst = std::max(worst, std::abs(gpu->out[i] - cpu.out[i]));
    for (size_t i = 0; i < cpu.lse.size(); ++i)
      worst_lse = std::max(worst_lse, std::abs(gpu->lse[i] - cpu.lse[i]));
    std::printf("[ fp64 ref ] B%d H%d/%d S%dx%d D%d causal=%d bhsd=%d: max |gpu-cpu| out %.2e lse %.2e\n",
                c.batch, c.heads, c.kv_heads, c.seq_q, c.seq_k, c.dim, c.causal, c.bhsd, worst,
                worst_lse);
    EXPECT_LT(worst, 1e-11);
    EXPECT_LT(worst_lse, 1e-11);
    EXPECT_GT(std::abs(cpu.out[0]), 0) << "inputs are not zeros";
  }
}

// A sequence long enough that every row on the CPU would take minutes: the
// matrix runs against the GPU reference, and says so.
v1::Problem long_problem() {
  v1::Problem p = test_problem();
  p.set_batch(1);
  p.set_heads(4);
  p.set_kv_heads(2);
  p.set_seq_q(8191);
  p.set_seq_k(8200);
  return p;
}

TEST_F(SM90_Evaluator, InProcessLongSequenceValidatesEveryRowOnTheGpu) {
  auto request = validate_request(correct_kernel());
  *request.mutable_problem() = long_problem();
  const auto start = Clock::now();
  auto response = evaluator().evaluate(request);
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  ASSERT_TRUE(response.ok()) << response.error().message;
  const auto& v = response->validation();
  std::printf("[ validate ] %.1f s: %s\n", seconds, v.detail().c_str());
  expect_passed(v, eval::kFp16Tolerance);
  EXPECT_NE(v.detail().find("every row (on the GPU"), std::string::npos) << v.detail();
  EXPECT_LT(seconds, 60);
}

TEST_F(SM90_Evaluator, InProcessWrongKernelFailsAgainstTheGpuReference) {
  auto wrong = compile_test_template("unwritten");
  ASSERT_TRUE(wrong.ok()) << wrong.error().message << "\n" << wrong.error().detail;
  auto request = validate_request(*wrong);
  *request.mutable_problem() = long_problem();
  request.mutable_validation()->set_determinism_runs(2);
  request.mutable_validation()->set_stability_trials(2);
  auto response = evaluator().evaluate(request);
  ASSERT_TRUE(response.ok()) << response.error().message;
  const auto& v = response->validation();
  std::printf("[ validate ] %s\n", v.detail().c_str());
  EXPECT_FALSE(v.passed());
  EXPECT_EQ(v.stability_passed(), 0);
  EXPECT_GT(v.rel_error(), 0.5) << v.detail();
  EXPECT_NE(v.detail().find("on the GPU"), std::string::npos) << v.detail();
  EXPECT_FALSE(evaluator().context_lost());
}

TEST_F(SM90_Evaluator, InProcessTimingRotatesPastTwiceL2) {
  v1::EvaluateRequest request;
  *request.mutable_kernel() = correct_kernel();
  *request.mutable_problem() = test_problem();
  request.set_time(true);
  auto response = evaluator().evaluate(request);
  ASSERT_TRUE(response.ok()) << response.error().message;
  const auto& t = response->timing();
  std::printf("[ timing   ] median %.2f us (p10 %.2f, p90 %.2f), %d launches x %d samples, %d sets, %.1f TFLOP/s\n",
              t.median_us(), t.p10_us(), t.p90_us(), t.launches_per_sample(), t.samples(),
              t.input_sets(), t.tflops());
  EXPECT_GT(t.median_us(), 0);
  EXPECT_LE(t.min_us(), t.p10_us());
  EXPECT_LE(t.p10_us(), t.median_us());
  EXPECT_LE(t.median_us(), t.p90_us());
  EXPECT_LE(t.p90_us(), t.max_us());
  EXPECT_EQ(t.samples(), eval::kDefaultRepetitions);
  EXPECT_GE(t.launches_per_sample(), 1);
  const int64_t l2 = l2_bytes();
  ASSERT_GT(l2, 0);
  EXPECT_GT(t.input_sets() * set_bytes(test_problem()), 2 * l2);
  const double flops = 4.0 * 2 * 4 * 300 * 333 * 64;
  EXPECT_NEAR(t.tflops(), flops / (t.median_us() * 1e-6) / 1e12, 1e-6 * t.tflops());
  EXPECT_FALSE(response->has_validation());
}

// Three kernels in one call (EvaluateRequest.kernels): the correct kernel,
// the same one under another key (loaded apart, so a module is not shared),
// and the test template that leaves rows unwritten (it runs; only timing is
// asked). Each is timed in every round on the same inputs.
v1::EvaluateRequest three_kernels_request() {
  v1::EvaluateRequest request;
  *request.add_kernels() = correct_kernel();
  v1::EvalKernel twin = correct_kernel();
  twin.set_key(std::string(64, 'e'));
  *request.add_kernels() = twin;
  auto unwritten = compile_test_template("unwritten");
  EXPECT_TRUE(unwritten.ok()) << unwritten.error().message << "\n" << unwritten.error().detail;
  if (unwritten.ok()) *request.add_kernels() = *unwritten;
  *request.mutable_problem() = test_problem();
  request.set_time(true);
  request.set_rounds(4);
  request.mutable_timing()->set_repetitions(9);
  return request;
}

void expect_ordered(const v1::TimingResult& t) {
  EXPECT_GT(t.median_us(), 0);
  EXPECT_LE(t.min_us(), t.p10_us());
  EXPECT_LE(t.p10_us(), t.median_us());
  EXPECT_LE(t.median_us(), t.p90_us());
  EXPECT_LE(t.p90_us(), t.max_us());
  EXPECT_GE(t.launches_per_sample(), 1);
  EXPECT_GE(t.input_sets(), 2);
}

TEST_F(SM90_Evaluator, InProcessThreeKernelsTimedInterleavedInOneCall) {
  const v1::EvaluateRequest request = three_kernels_request();
  ASSERT_EQ(request.kernels_size(), 3);
  auto response = evaluator().evaluate(request);
  ASSERT_TRUE(response.ok()) << response.error().message;
  EXPECT_FALSE(response->has_timing());
  EXPECT_FALSE(response->has_validation());
  ASSERT_EQ(response->timings_size(), 3);
  for (int i = 0; i < 3; ++i) {
    const v1::KernelTiming& k = response->timings(i);
    SCOPED_TRACE("kernels[" + std::to_string(i) + "]");
    EXPECT_EQ(k.key(), request.kernels(i).key());
    std::printf("[ timing   ] kernels[%d]: median %.2f us (p10 %.2f, p90 %.2f) over %d rounds\n", i,
                k.timing().median_us(), k.timing().p10_us(), k.timing().p90_us(), k.rounds_size());
    expect_ordered(k.timing());
    EXPECT_EQ(k.timing().samples(), 4 * 9);  // every round's samples together
    ASSERT_EQ(k.rounds_size(), 4);
    for (const auto& round : k.rounds()) {
      expect_ordered(round);
      EXPECT_EQ(round.samples(), 9);
      EXPECT_EQ(round.input_sets(), k.timing().input_sets());  // one set of inputs for all
    }
  }
  // The same kernel under two keys: the same time within the noise.
  const auto& a = response->timings(0).timing();
  const auto& b = response->timings(1).timing();
  EXPECT_LT(std::abs(a.median_us() - b.median_us()), 0.25 * a.median_us())
      << a.median_us() << " vs " << b.median_us();
}

TEST_F(SM90_Evaluator, InProcessSameKernelAsReferenceIsExact) {
  auto request = validate_request(correct_kernel());
  *request.mutable_reference() = correct_kernel();
  auto response = evaluator().evaluate(request);
  ASSERT_TRUE(response.ok()) << response.error().message;
  const auto& v = response->validation();
  EXPECT_TRUE(v.passed()) << v.detail();
  EXPECT_EQ(v.rel_error(), 0) << v.detail();
  EXPECT_EQ(v.max_abs_error(), 0) << v.detail();
  EXPECT_NE(v.detail().find("reference kernel"), std::string::npos) << v.detail();
}

TEST_F(SM90_Evaluator, InProcessWrongKernelFailsValidationWithoutLosingTheContext) {
  auto wrong = compile_test_template("unwritten");
  ASSERT_TRUE(wrong.ok()) << wrong.error().message << "\n" << wrong.error().detail;
  auto request = validate_request(*wrong);
  request.mutable_validation()->set_determinism_runs(5);
  request.mutable_validation()->set_stability_trials(2);
  request.set_time(true);
  auto response = evaluator().evaluate(request);
  ASSERT_TRUE(response.ok()) << response.error().message;
  const auto& v = response->validation();
  std::printf("[ validate ] %s\n", v.detail().c_str());
  EXPECT_FALSE(v.passed());
  EXPECT_EQ(v.stability_passed(), 0);
  EXPECT_GT(v.rel_error(), 0.5) << "zeros against N(0,1)-weighted means";
  EXPECT_NE(v.detail().find("unwritten"), std::string::npos) << v.detail();
  EXPECT_NE(v.detail().find("rel_error"), std::string::npos) << v.detail();
  EXPECT_TRUE(v.deterministic()) << "zeros and untouched poison are the same every run";
  EXPECT_FALSE(response->has_timing()) << "a candidate is correct before it is timed";
  EXPECT_FALSE(evaluator().context_lost());
  // And the evaluator still works.
  auto good = evaluator().evaluate(validate_request(correct_kernel()));
  ASSERT_TRUE(good.ok()) << good.error().message;
  EXPECT_TRUE(good->validation().passed());
}

TEST_F(SM90_Evaluator, InProcessBadRequestsAreNotFaults) {
  auto request = validate_request(correct_kernel());
  request.mutable_kernel()->set_abi_version(99);
  auto response = evaluator().evaluate(request);
  ASSERT_FALSE(response.ok());
  EXPECT_EQ(response.error().code, ErrorCode::invalid_argument);

  request = validate_request(correct_kernel());
  request.mutable_kernel()->set_key(std::string(64, 'f'));
  request.mutable_kernel()->set_cubin("not a cubin at all");
  response = evaluator().evaluate(request);
  ASSERT_FALSE(response.ok());
  EXPECT_EQ(response.error().code, ErrorCode::failed_precondition) << response.error().message;

  request = validate_request(correct_kernel());
  request.mutable_kernel()->set_lowered_name("no_such_kernel");
  response = evaluator().evaluate(request);
  ASSERT_FALSE(response.ok());
  EXPECT_EQ(response.error().code, ErrorCode::failed_precondition) << response.error().message;

  request = validate_request(correct_kernel());
  request.mutable_kernel()->set_dynamic_smem_bytes(4u << 20);  // more than any GPU has
  response = evaluator().evaluate(request);
  ASSERT_FALSE(response.ok());
  EXPECT_EQ(response.error().code, ErrorCode::failed_precondition) << response.error().message;

  EXPECT_FALSE(evaluator().context_lost());
}

// ---- The worker binary over its socket ----

class WorkerProcess {
 public:
  WorkerProcess(const fs::path& socket, const std::string& log_level = "warn") : socket_(socket) {
    std::vector<std::string> args = {worker_binary().string(), "--socket", socket.string(),
                                     "--gpu", "0", "--log-level", log_level};
    std::vector<char*> raw;
    for (auto& a : args) raw.push_back(a.data());
    raw.push_back(nullptr);
    if (posix_spawn(&pid_, raw[0], nullptr, nullptr, raw.data(), environ) != 0) pid_ = -1;
    grpc::ChannelArguments channel_args;
    channel_args.SetMaxSendMessageSize(64 << 20);
    channel_args.SetMaxReceiveMessageSize(64 << 20);
    stub_ = v1::EvalWorker::NewStub(grpc::CreateCustomChannel(
        "unix:" + socket.string(), grpc::InsecureChannelCredentials(), channel_args));
  }
  ~WorkerProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  pid_t pid() const { return pid_; }
  v1::EvalWorker::Stub& stub() { return *stub_; }

  // Info, waiting for the socket to come up.
  grpc::Status info(v1::WorkerInfo& out) {
    grpc::ClientContext context;
    context.set_wait_for_ready(true);
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    return stub_->Info(&context, v1::WorkerInfoRequest(), &out);
  }
  grpc::Status evaluate(const v1::EvaluateRequest& request, v1::EvaluateResponse& out) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
    return stub_->Evaluate(&context, request, &out);
  }

  // The exit status, or nullopt if still running after `timeout`.
  std::optional<int> wait(std::chrono::seconds timeout) {
    const auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return status;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return std::nullopt;
  }

 private:
  fs::path socket_;
  pid_t pid_ = -1;
  std::unique_ptr<v1::EvalWorker::Stub> stub_;
};

TEST_F(SM90_Evaluator, WorkerBinaryServesOverItsSocketAndExitsZeroOnSigterm) {
  ScratchDir dir;
  const fs::path socket = dir / "gpu0.sock";
  WorkerProcess worker(socket, "info");
  ASSERT_GT(worker.pid(), 0) << "cannot start " << worker_binary();
  v1::WorkerInfo info;
  auto status = worker.info(info);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(info.gpu_index(), 0);
  EXPECT_EQ(info.pid(), worker.pid());
  EXPECT_FALSE(info.device().empty());
  EXPECT_EQ(info.arch().rfind("sm_", 0), 0u) << info.arch();
  EXPECT_GT(info.sm_count(), 0);
  EXPECT_EQ(info.l2_bytes(), l2_bytes());
  EXPECT_FALSE(info.driver_version().empty());
  struct stat st {};
  ASSERT_EQ(::stat(socket.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u) << "only the daemon's user may connect";

  auto request = validate_request(correct_kernel());
  request.set_time(true);
  v1::EvaluateResponse response;
  status = worker.evaluate(request, response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  expect_passed(response.validation(), eval::kFp16Tolerance);
  EXPECT_GT(response.timing().median_us(), 0);
  EXPECT_EQ(response.device(), info.device());

  ASSERT_EQ(kill(worker.pid(), SIGTERM), 0);
  const auto exit = worker.wait(std::chrono::seconds(20));
  ASSERT_TRUE(exit.has_value()) << "worker still running 20 s after SIGTERM";
  ASSERT_TRUE(WIFEXITED(*exit));
  EXPECT_EQ(WEXITSTATUS(*exit), 0);
  EXPECT_FALSE(fs::exists(socket)) << "socket left behind";
}

TEST_F(SM90_Evaluator, FaultingKernelEndsTheWorkerAndAFreshOneEvaluates) {
  auto faulting = compile_test_template("faulting");
  ASSERT_TRUE(faulting.ok()) << faulting.error().message << "\n" << faulting.error().detail;

  ScratchDir dir;
  const fs::path socket = dir / "gpu0.sock";
  {
    WorkerProcess worker(socket);
    ASSERT_GT(worker.pid(), 0) << "cannot start " << worker_binary();
    v1::WorkerInfo info;
    auto status = worker.info(info);
    ASSERT_TRUE(status.ok()) << status.error_message();

    v1::EvaluateResponse response;
    status = worker.evaluate(validate_request(*faulting), response);
    std::printf("[ fault    ] %d: %s\n", static_cast<int>(status.error_code()),
                status.error_message().c_str());
    ASSERT_FALSE(status.ok()) << "a faulting kernel evaluated fine";
    EXPECT_TRUE(status.error_code() == grpc::StatusCode::INTERNAL ||
                status.error_code() == grpc::StatusCode::UNAVAILABLE)
        << status.error_code();
    if (status.error_code() == grpc::StatusCode::INTERNAL) {
      EXPECT_NE(status.error_message().find("CUDA_ERROR"), std::string::npos)
          << status.error_message();
    }
    const auto exit = worker.wait(std::chrono::seconds(30));
    ASSERT_TRUE(exit.has_value()) << "the worker kept running on a faulted context";
    ASSERT_TRUE(WIFEXITED(*exit)) << "killed by signal " << WTERMSIG(*exit);
    EXPECT_EQ(WEXITSTATUS(*exit), 3);
  }

  WorkerProcess fresh(socket);
  ASSERT_GT(fresh.pid(), 0);
  v1::WorkerInfo info;
  auto status = fresh.info(info);
  ASSERT_TRUE(status.ok()) << status.error_message();
  v1::EvaluateResponse response;
  status = fresh.evaluate(validate_request(correct_kernel()), response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  expect_passed(response.validation(), eval::kFp16Tolerance);
}

// One faulting kernel among several fails the call naming it, and ends the
// worker as any fault does.
TEST_F(SM90_Evaluator, FaultingKernelAmongSeveralFailsTheCallNamingIt) {
  auto faulting = compile_test_template("faulting");
  ASSERT_TRUE(faulting.ok()) << faulting.error().message << "\n" << faulting.error().detail;
  v1::EvaluateRequest request;
  *request.add_kernels() = correct_kernel();
  *request.add_kernels() = *faulting;
  *request.add_kernels() = correct_kernel();
  *request.mutable_problem() = test_problem();
  request.set_time(true);

  ScratchDir dir;
  WorkerProcess worker(dir / "gpu0.sock");
  ASSERT_GT(worker.pid(), 0) << "cannot start " << worker_binary();
  v1::WorkerInfo info;
  auto status = worker.info(info);
  ASSERT_TRUE(status.ok()) << status.error_message();
  v1::EvaluateResponse response;
  status = worker.evaluate(request, response);
  std::printf("[ fault    ] %d: %s\n", static_cast<int>(status.error_code()),
              status.error_message().c_str());
  ASSERT_FALSE(status.ok()) << "a faulting kernel was timed fine";
  EXPECT_TRUE(status.error_code() == grpc::StatusCode::INTERNAL ||
              status.error_code() == grpc::StatusCode::UNAVAILABLE)
      << status.error_code();
  if (status.error_code() == grpc::StatusCode::INTERNAL) {
    EXPECT_NE(status.error_message().find("kernels[1]"), std::string::npos)
        << status.error_message();
  }
  const auto exit = worker.wait(std::chrono::seconds(30));
  ASSERT_TRUE(exit.has_value()) << "the worker kept running on a faulted context";
  ASSERT_TRUE(WIFEXITED(*exit)) << "killed by signal " << WTERMSIG(*exit);
  EXPECT_EQ(WEXITSTATUS(*exit), 3);
}

}  // namespace
}  // namespace flashcore
