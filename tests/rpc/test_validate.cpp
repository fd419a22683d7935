// The Validate RPC over real gRPC, with the real flashcore_worker as the
// daemon's worker binary. Here (no GPU) the daemon runs without workers:
// Validate refuses bad input exactly as Compile does and otherwise answers
// FAILED_PRECONDITION with the reason. With a GPU, the SM80-and-later tests
// validate real kernels and check that a faulting or hanging kernel is
// recorded as failed while the pool keeps working.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "cuda/driver_api.hpp"
#include "flashcore/client.hpp"
#include "rpc_test_support.hpp"

namespace flashcore {
namespace {

using namespace rpc_testing;

grpc::Status validate(v1::FlashCore::Stub& stub, const v1::ValidateRequest& request,
                      v1::KernelHandle* handle, int deadline_s = 300) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(deadline_s));
  return stub.Validate(&context, request, handle);
}

v1::ValidateRequest validate_request(const v1::KernelRequest& kernel) {
  v1::ValidateRequest request;
  *request.mutable_kernel() = kernel;
  return request;
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

class ValidateTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { server_ = start_small_template_daemon(use_real_worker).release(); }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override { ASSERT_NE(server_, nullptr); }

  static bool daemon_has_workers() {
    v1::ServerInfo info;
    return server_info(*server_->stub, &info).ok() && info.gpu_available();
  }

  static SmallTemplateDaemon* server_;
};
SmallTemplateDaemon* ValidateTest::server_ = nullptr;

TEST_F(ValidateTest, WithoutAGpuItIsFailedPreconditionNamingTheReason) {
  if (daemon_has_workers()) GTEST_SKIP() << "this daemon has evaluation workers";
  const auto probe = cuda::probe_devices();
  ASSERT_FALSE(probe.ok() && !probe->empty());
  const std::string reason = probe.ok() ? "no CUDA device found" : probe.error().message;

  v1::KernelHandle handle;
  const grpc::Status status = validate(*server_->stub, validate_request(quick_request()), &handle);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << status.error_message();
  EXPECT_TRUE(contains(status.error_message(), "validation needs a GPU evaluation worker"))
      << status.error_message();
  EXPECT_TRUE(contains(status.error_message(), reason)) << status.error_message();

  // Refused before compiling: nothing is in the cache.
  v1::ListKernelsResponse listed;
  ASSERT_TRUE(list_kernels(*server_->stub, 0, "", &listed).ok());
  EXPECT_EQ(listed.kernels_size(), 0);

  // GetServerInfo tells the same story.
  v1::ServerInfo info;
  ASSERT_TRUE(server_info(*server_->stub, &info).ok());
  EXPECT_FALSE(info.gpu_available());
  EXPECT_TRUE(contains(info.gpu_unavailable_reason(), reason)) << info.gpu_unavailable_reason();
}

TEST_F(ValidateTest, OptionsAtTheirLimitsAreAccepted) {
  if (daemon_has_workers()) GTEST_SKIP() << "would run 100000 launches on the GPU";
  v1::ValidateRequest request = validate_request(quick_request());
  request.mutable_options()->set_determinism_runs(100000);
  request.mutable_options()->set_stability_trials(100000);
  request.mutable_options()->set_rel_tolerance(0.5);
  request.mutable_options()->set_reference_rows(7);
  v1::KernelHandle handle;
  const grpc::Status status = validate(*server_->stub, request, &handle);
  // Past input validation, refused only for want of a GPU.
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << status.error_message();
}

struct BadKernel {
  const char* name;
  void (*change)(v1::KernelRequest&);
};

const BadKernel kBadKernels[] = {
    {"HeadDimSeven", [](v1::KernelRequest& r) { r.mutable_problem()->set_head_dim(7); }},
    {"SeqQZero", [](v1::KernelRequest& r) { r.mutable_problem()->set_seq_q(0); }},
    {"KvHeadsNotDividingHeads", [](v1::KernelRequest& r) { r.mutable_problem()->set_kv_heads(3); }},
    {"BlockMNotMultipleOf16", [](v1::KernelRequest& r) { r.mutable_config()->set_block_m(100); }},
    {"UnknownTemplate", [](v1::KernelRequest& r) { r.set_template_id("nope"); }},
    {"DtypeUnspecified",
     [](v1::KernelRequest& r) { r.mutable_problem()->set_dtype(v1::DTYPE_UNSPECIFIED); }},
    {"ArchSm70", [](v1::KernelRequest& r) { r.set_arch("sm_70"); }},
    {"LayoutUnknownValue",
     [](v1::KernelRequest& r) { r.mutable_problem()->set_layout(static_cast<v1::Layout>(7)); }},
};

TEST_F(ValidateTest, BadKernelIsRefusedExactlyAsCompileRefusesIt) {
  for (const BadKernel& bad : kBadKernels) {
    SCOPED_TRACE(bad.name);
    v1::KernelRequest kernel = quick_request();
    bad.change(kernel);
    v1::KernelHandle handle;
    const grpc::Status compiled = compile(*server_->stub, kernel, &handle);
    ASSERT_EQ(compiled.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    const grpc::Status validated = validate(*server_->stub, validate_request(kernel), &handle);
    EXPECT_EQ(validated.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    // The same words, with the field named from the ValidateRequest.
    EXPECT_EQ(validated.error_message(), "kernel." + compiled.error_message());
  }
}

struct BadOptions {
  const char* name;
  void (*change)(v1::ValidationOptions&);
  const char* field;
};

const BadOptions kBadOptions[] = {
    {"NegativeRuns", [](v1::ValidationOptions& o) { o.set_determinism_runs(-1); },
     "options.determinism_runs: -1"},
    {"TooManyRuns", [](v1::ValidationOptions& o) { o.set_determinism_runs(100001); },
     "options.determinism_runs: 100001"},
    {"NegativeTrials", [](v1::ValidationOptions& o) { o.set_stability_trials(-3); },
     "options.stability_trials: -3"},
    {"NegativeRows", [](v1::ValidationOptions& o) { o.set_reference_rows(-5); },
     "options.reference_rows: -5"},
    {"NegativeTolerance", [](v1::ValidationOptions& o) { o.set_rel_tolerance(-0.1); },
     "options.rel_tolerance"},
    {"ToleranceOne", [](v1::ValidationOptions& o) { o.set_rel_tolerance(1.0); },
     "options.rel_tolerance"},
    {"ToleranceNan", [](v1::ValidationOptions& o) { o.set_rel_tolerance(std::nan("")); },
     "options.rel_tolerance"},
    {"NegativeMaxAbs", [](v1::ValidationOptions& o) { o.set_max_abs_tolerance(-1e-3); },
     "options.max_abs_tolerance"},
    {"MaxAbsInfinite", [](v1::ValidationOptions& o) { o.set_max_abs_tolerance(INFINITY); },
     "options.max_abs_tolerance"},
};

TEST_F(ValidateTest, BadOptionsAreRefusedByName) {
  for (const BadOptions& bad : kBadOptions) {
    SCOPED_TRACE(bad.name);
    v1::ValidateRequest request = validate_request(quick_request());
    bad.change(*request.mutable_options());
    v1::KernelHandle handle;
    const grpc::Status status = validate(*server_->stub, request, &handle);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(status.error_message().rfind(bad.field, 0), 0u) << status.error_message();
  }
}

// ---- With a GPU: the real worker, real kernels. ----

// The small template, which computes no attention (its outputs fail the
// reference check, which is still an evaluation), except that one tile
// config faults (block_n 32: a store through a null pointer) and another
// never returns (block_n 128: spins on an input value that never occurs).
const std::string kMisbehavingTemplate = test_support::attention_template_source(
    std::string(test_support::kAttentionKernelSignature) + R"( {
  if (BlockN == 32) *static_cast<volatile int*>(nullptr) = 1;
  if (BlockN == 128)
    while (*static_cast<const volatile int*>(p.q) != 0x7fff7fff) {}
  const int row = blockIdx.x * BlockM + threadIdx.x;
  if (threadIdx.x >= BlockM || row >= p.seq_q) return;
  Element* o = static_cast<Element*>(p.o) + blockIdx.z * p.o_batch_stride +
               blockIdx.y * p.o_head_stride + row * p.o_row_stride;
  for (int d = 0; d < HeadDim; ++d) o[d].bits = 0;
}
)");

v1::KernelRequest small_gpu_request(int block_n) {
  v1::KernelRequest request = quick_request();
  request.clear_arch();  // the daemon's GPU
  request.mutable_problem()->set_batch(1);
  request.mutable_problem()->set_heads(2);
  request.mutable_problem()->set_seq_q(256);
  request.mutable_config()->set_block_m(64);
  request.mutable_config()->set_block_n(block_n);
  return request;
}

TEST(ValidateGpuTest, SM80_RealKernelPassesAndLaterCallsReturnTheRecord) {
  test_support::ScratchDir cache;
  DaemonConfig config = loopback_config(cache.path());
  use_real_worker(config);
  auto daemon = start_daemon(config);
  ASSERT_NE(daemon, nullptr);
  auto stub = v1::FlashCore::NewStub(channel_to(*daemon));
  v1::ServerInfo info;
  ASSERT_TRUE(server_info(*stub, &info).ok());
  if (!info.gpu_available()) GTEST_SKIP() << "no evaluation workers: " << info.gpu_unavailable_reason();

  v1::KernelRequest kernel = small_gpu_request(64);
  kernel.mutable_config()->set_block_m(128);
  kernel.mutable_config()->set_warps(4);
  kernel.set_omit_cubin(true);
  v1::ValidateRequest request = validate_request(kernel);
  request.mutable_options()->set_determinism_runs(5);
  request.mutable_options()->set_stability_trials(2);
  v1::KernelHandle handle;
  const grpc::Status status = validate(*stub, request, &handle);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(handle.cubin().empty());  // omit_cubin honoured
  EXPECT_GT(handle.cubin_size(), 0u);
  const v1::ValidationRecord& record = handle.validation();
  EXPECT_TRUE(record.evaluated());
  EXPECT_TRUE(record.passed()) << record.detail();
  EXPECT_FALSE(record.device().empty());
  EXPECT_TRUE(record.deterministic());

  v1::GetKernelRequest get;
  get.set_key(handle.key());
  get.set_omit_cubin(true);
  v1::KernelHandle fetched;
  ASSERT_TRUE(get_kernel(*stub, get, &fetched).ok());
  EXPECT_EQ(fetched.validation().SerializeAsString(), record.SerializeAsString());
  v1::KernelHandle compiled;
  ASSERT_TRUE(compile(*stub, kernel, &compiled).ok());
  EXPECT_EQ(compiled.validation().SerializeAsString(), record.SerializeAsString());
}

// The same path through the client library (Client::validate): the real
// attention template, bf16 causal, where the record is the answer.
TEST(ValidateGpuTest, SM80_ClientValidateReturnsAPassingRecord) {
  test_support::ScratchDir cache;
  DaemonConfig config = loopback_config(cache.path());
  WorkerDaemon served;
  ASSERT_NO_FATAL_FAILURE(start_worker_daemon(config, served));
  if (!served.skip.empty()) GTEST_SKIP() << served.skip;
  client::Client& client = *served.client;

  v1::KernelRequest kernel = small_gpu_request(64);
  kernel.mutable_problem()->set_dtype(v1::DTYPE_BF16);
  kernel.mutable_problem()->set_causal(true);
  kernel.set_omit_cubin(true);
  v1::ValidateRequest request = validate_request(kernel);
  request.mutable_options()->set_determinism_runs(5);
  request.mutable_options()->set_stability_trials(2);
  auto handle = client.validate(request, std::chrono::minutes(5));
  ASSERT_TRUE(handle.ok()) << handle.error().message << "\n" << handle.error().detail;
  const v1::ValidationRecord& record = handle->validation();
  EXPECT_TRUE(record.evaluated());
  EXPECT_TRUE(record.passed()) << record.detail();
  // Compared with fp64: bf16 output cannot be exact, and must be within
  // the daemon's default bf16 tolerance.
  EXPECT_GT(record.rel_error(), 0.0);
  EXPECT_LT(record.rel_error(), 1e-2) << record.detail();
  EXPECT_EQ(record.determinism_runs(), 5);
  EXPECT_TRUE(record.deterministic());
  EXPECT_EQ(record.stability_trials(), 2);
  EXPECT_EQ(record.stability_passed(), 2);
  EXPECT_EQ(record.determinism_hash().size(), 64u) << record.determinism_hash();
  EXPECT_EQ(handle->resources().spill_store_bytes(), 0);
  EXPECT_NE(client::describe_validation(*handle).find("passed         yes"), std::string::npos)
      << client::describe_validation(*handle);
}

TEST(ValidateGpuTest, SM80_FaultingAndHangingKernelsFailAndThePoolKeepsWorking) {
  test_support::ScratchDir templates, cache;
  test_support::write_attention_templates(templates, kMisbehavingTemplate);
  DaemonConfig config = loopback_config(cache.path());
  config.templates_dir = templates.path();
  config.evaluation_timeout = std::chrono::milliseconds(3000);
  use_real_worker(config);
  auto daemon = start_daemon(config);
  ASSERT_NE(daemon, nullptr);
  auto stub = v1::FlashCore::NewStub(channel_to(*daemon));
  v1::ServerInfo info;
  ASSERT_TRUE(server_info(*stub, &info).ok());
  if (!info.gpu_available()) GTEST_SKIP() << "no evaluation workers: " << info.gpu_unavailable_reason();

  const auto run = [&](int block_n) {
    v1::ValidateRequest request = validate_request(small_gpu_request(block_n));
    request.mutable_options()->set_determinism_runs(2);
    request.mutable_options()->set_stability_trials(1);
    v1::KernelHandle handle;
    const grpc::Status status = validate(*stub, request, &handle);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return handle.validation();
  };

  const v1::ValidationRecord faulted = run(32);
  EXPECT_TRUE(faulted.evaluated());
  EXPECT_FALSE(faulted.passed());
  EXPECT_TRUE(contains(faulted.detail(), "worker for GPU")) << faulted.detail();
  EXPECT_TRUE(contains(faulted.detail(), "exited with code 3")) << faulted.detail();

  // A restarted worker evaluates the next kernel (whose zeros fail the check).
  const v1::ValidationRecord after_fault = run(64);
  EXPECT_TRUE(after_fault.evaluated());
  EXPECT_FALSE(after_fault.passed());
  EXPECT_FALSE(contains(after_fault.detail(), "exited")) << after_fault.detail();
  EXPECT_EQ(after_fault.device(), faulted.device());

  const v1::ValidationRecord hung = run(128);
  EXPECT_FALSE(hung.passed());
  EXPECT_TRUE(contains(hung.detail(), "timed out after")) << hung.detail();

  const v1::ValidationRecord after_hang = run(64);
  EXPECT_TRUE(after_hang.evaluated());
  EXPECT_FALSE(contains(after_hang.detail(), "timed out")) << after_hang.detail();
}

// More calls than workers: they queue for the one worker and all finish.
TEST(ValidateGpuTest, SM80_ConcurrentValidationsQueueForTheWorkers) {
  test_support::ScratchDir templates, cache;
  test_support::write_attention_templates(templates, kMisbehavingTemplate);
  DaemonConfig config = loopback_config(cache.path());
  config.templates_dir = templates.path();
  use_real_worker(config);
  auto daemon = start_daemon(config);
  ASSERT_NE(daemon, nullptr);
  auto stub = v1::FlashCore::NewStub(channel_to(*daemon));
  v1::ServerInfo info;
  ASSERT_TRUE(server_info(*stub, &info).ok());
  if (!info.gpu_available()) GTEST_SKIP() << "no evaluation workers: " << info.gpu_unavailable_reason();

  const std::pair<int, int> tiles[] = {{64, 4}, {128, 4}, {128, 8}, {64, 2}, {32, 2}, {16, 1}};
  std::vector<v1::KernelHandle> handles(std::size(tiles));
  std::vector<grpc::Status> statuses(std::size(tiles));
  std::vector<std::thread> callers;
  for (size_t i = 0; i < std::size(tiles); ++i)
    callers.emplace_back([&, i] {
      v1::KernelRequest kernel = small_gpu_request(64);
      kernel.mutable_config()->set_block_m(tiles[i].first);
      kernel.mutable_config()->set_warps(tiles[i].second);
      v1::ValidateRequest request = validate_request(kernel);
      request.mutable_options()->set_determinism_runs(20);
      request.mutable_options()->set_stability_trials(2);
      statuses[i] = validate(*stub, request, &handles[i]);
    });
  for (auto& caller : callers) caller.join();
  for (size_t i = 0; i < std::size(tiles); ++i) {
    SCOPED_TRACE(i);
    EXPECT_TRUE(statuses[i].ok()) << statuses[i].error_message();
    EXPECT_TRUE(handles[i].validation().evaluated());
    EXPECT_FALSE(contains(handles[i].validation().detail(), "worker for GPU"))
        << handles[i].validation().detail();
  }
}

}  // namespace
}  // namespace flashcore
