// The client library and the `flashcore` CLI against a real in-process daemon
// on a loopback port, with the real (embedded) attention template behind it.
// NVRTC takes seconds per attention kernel, so this file compiles exactly two:
// kernel A through the Client, kernel B through the CLI; both are compiled
// once, on first use, whatever order the tests run in.
#include <fcntl.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <dlfcn.h>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "flashcore/client.hpp"
#include "rpc_test_support.hpp"

#ifndef FLASHCORE_CLI_PATH
#error "FLASHCORE_CLI_PATH must name the built flashcore binary (tests/CMakeLists.txt)"
#endif

namespace flashcore {
namespace {

namespace v1 = ::flashcore::v1;
using test_support::read_file;
using test_support::ScratchDir;

// One daemon for the whole file: starting one is cheap, but the kernels it
// compiles are not, and they live in its cache.
struct Environment {
  ScratchDir scratch;
  std::unique_ptr<Daemon> daemon;
  std::optional<client::Client> client;
};

Environment* g_env = nullptr;

// Stops the daemon and removes its scratch folder after the last test.
class EnvironmentCleanup : public ::testing::Environment {
 public:
  void TearDown() override {
    delete g_env;
    g_env = nullptr;
  }
};
[[maybe_unused]] auto* const g_cleanup =
    ::testing::AddGlobalTestEnvironment(new EnvironmentCleanup);

Environment& env() {
  static Environment* e = [] {
    auto* created = new Environment;
    g_env = created;
    created->daemon = rpc_testing::start_daemon(rpc_testing::loopback_config(created->scratch / "cache"));
    if (created->daemon) {
      client::ConnectOptions options;
      options.address = created->daemon->address();
      options.call_timeout = std::chrono::seconds(180);
      auto connected = client::Client::connect(options);
      if (connected.ok())
        created->client.emplace(std::move(connected).value());
      else
        ADD_FAILURE() << "connect: " << connected.error().message;
    }
    return created;
  }();
  return *e;
}

#define REQUIRE_ENV()                                                          \
  if (!env().daemon || !env().client) GTEST_FAIL() << "daemon not started"

bool is_elf(const std::string& bytes) { return bytes.rfind("\x7f" "ELF", 0) == 0; }

bool is_key(const std::string& key) {
  return key.size() == 64 && rpc_testing::is_lower_hex(key);
}

// Kernel A: fp16, D=64, non-causal, default tile, sm_90a, 2 x 8 heads x 500 rows.
v1::KernelRequest request_a() {
  v1::KernelRequest request = rpc_testing::quick_request();
  request.set_arch("sm_90a");
  return request;
}

const Result<v1::KernelHandle>& kernel_a() {
  static const Result<v1::KernelHandle> handle = env().client->compile(request_a());
  return handle;
}

// ---- running the CLI ----

struct CliRun {
  int exit_code = -1;
  std::string out, err;
};

// Runs the built CLI with `args`, stdout and stderr captured separately.
CliRun run_cli(const std::vector<std::string>& args) {
  static int counter = 0;
  const auto out_path = env().scratch / ("cli_out_" + std::to_string(counter));
  const auto err_path = env().scratch / ("cli_err_" + std::to_string(counter++));
  std::vector<std::string> argv_strings = {FLASHCORE_CLI_PATH};
  argv_strings.insert(argv_strings.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& arg : argv_strings) argv.push_back(arg.data());
  argv.push_back(nullptr);

  CliRun run;
  const pid_t pid = fork();
  if (pid == 0) {
    const int out = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int err = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (out < 0 || err < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0) _exit(126);
    unsetenv("FLASHCORE_ADDRESS");
    execv(argv[0], argv.data());
    _exit(127);
  }
  if (pid < 0) {
    ADD_FAILURE() << "fork: " << std::strerror(errno);
    return run;
  }
  int status = 0;
  waitpid(pid, &status, 0);
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  run.out = read_file(out_path);
  run.err = read_file(err_path);
  return run;
}

std::string address_arg() { return env().daemon->address(); }

std::string describe_run(const CliRun& run) {
  return "exit " + std::to_string(run.exit_code) + "\n--- stdout\n" + run.out + "--- stderr\n" +
         run.err;
}

// Kernel B: bf16, D=64, causal, BHSD, block_m 64 -- compiled by the CLI.
const CliRun& cli_compile_b() {
  static const CliRun run = run_cli(
      {"--address", address_arg(), "--json", "compile", "--dtype", "bf16", "--head-dim", "64",
       "--causal", "--batch", "1", "--heads", "4", "--kv-heads", "2", "--seq-q", "200",
       "--layout", "bhsd", "--block-m", "64", "--block-n", "64", "--warps", "4", "--stages",
       "2", "--arch", "sm_90a"});
  return run;
}

std::optional<v1::KernelHandle> parse_handle(const std::string& json) {
  v1::KernelHandle handle;
  if (!google::protobuf::util::JsonStringToMessage(json, &handle).ok()) return std::nullopt;
  return handle;
}

// ---- Client ----

TEST(Client, ConnectToNothingIsUnavailableNamingTheAddress) {
  client::ConnectOptions options;
  options.address = "127.0.0.1:1";
  options.connect_timeout = std::chrono::milliseconds(300);
  auto connected = client::Client::connect(options);
  ASSERT_FALSE(connected.ok());
  EXPECT_EQ(connected.error().code, ErrorCode::unavailable);
  EXPECT_NE(connected.error().message.find("127.0.0.1:1"), std::string::npos)
      << connected.error().message;
}

TEST(Client, CompileReturnsALaunchableHandle) {
  REQUIRE_ENV();
  const auto& handle = kernel_a();
  ASSERT_TRUE(handle.ok()) << handle.error().message << "\n" << handle.error().detail;
  EXPECT_TRUE(is_key(handle->key())) << handle->key();
  EXPECT_TRUE(is_elf(handle->cubin()));
  EXPECT_EQ(handle->cubin_size(), handle->cubin().size());
  EXPECT_EQ(handle->arch(), "sm_90a");
  EXPECT_FALSE(handle->lowered_name().empty());
  // The ABI the launcher checks must be the one this client was built with.
  EXPECT_EQ(handle->abi().abi_version(), unsigned{FLASHCORE_ATTENTION_ABI_VERSION});
  EXPECT_EQ(handle->abi().params_size(), sizeof(AttentionParams));
  // Grid for 2 x 8 heads x 500 rows with block_m 128.
  EXPECT_EQ(handle->launch().grid().x(), 4u);
  EXPECT_EQ(handle->launch().grid().y(), 8u);
  EXPECT_EQ(handle->launch().grid().z(), 2u);
  EXPECT_EQ(handle->launch().block().x(), 128u);
  EXPECT_GT(handle->launch().dynamic_smem_bytes(), 0u);

  const std::string text = client::describe(*handle);
  EXPECT_NE(text.find(handle->key()), std::string::npos) << text;
  EXPECT_NE(text.find("block_m=128"), std::string::npos) << text;
  EXPECT_NE(text.find("sm_90a"), std::string::npos) << text;
}

TEST(Client, SecondCompileIsAMemoryHitWithTheSameKey) {
  REQUIRE_ENV();
  const auto& first = kernel_a();
  ASSERT_TRUE(first.ok()) << first.error().message;
  v1::KernelRequest request = request_a();
  request.mutable_problem()->set_seq_q(1000);  // run-time shape: same kernel
  request.set_omit_cubin(true);
  auto again = env().client->compile(request);
  ASSERT_TRUE(again.ok()) << again.error().message;
  EXPECT_EQ(again->key(), first->key());
  EXPECT_EQ(again->tier(), v1::CACHE_TIER_MEMORY);
  EXPECT_TRUE(again->cubin().empty());
  EXPECT_EQ(again->cubin_size(), first->cubin_size());
  EXPECT_EQ(again->launch().grid().x(), 8u);  // ceil(1000 / 128)
}

TEST(Client, GetKernelByKeyWithAndWithoutCubinAndForAShape) {
  REQUIRE_ENV();
  const auto& compiled = kernel_a();
  ASSERT_TRUE(compiled.ok()) << compiled.error().message;

  auto full = env().client->get_kernel(compiled->key());
  ASSERT_TRUE(full.ok()) << full.error().message;
  EXPECT_EQ(full->cubin(), compiled->cubin());
  EXPECT_EQ(full->cubin_sha256(), compiled->cubin_sha256());

  v1::Problem shape = request_a().problem();
  shape.set_batch(3);
  shape.set_seq_q(129);
  auto light = env().client->get_kernel(compiled->key(), /*omit_cubin=*/true, &shape);
  ASSERT_TRUE(light.ok()) << light.error().message;
  EXPECT_TRUE(light->cubin().empty());
  EXPECT_EQ(light->cubin_size(), compiled->cubin_size());
  EXPECT_EQ(light->launch().grid().x(), 2u);
  EXPECT_EQ(light->launch().grid().z(), 3u);

  auto missing = env().client->get_kernel(std::string(64, 'a'));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, ErrorCode::not_found);
  EXPECT_EQ(missing.error().message.rfind("GetKernel: ", 0), 0u) << missing.error().message;
}

TEST(Client, InvalidRequestKeepsCodeAndNamesRpcAndField) {
  REQUIRE_ENV();
  v1::KernelRequest request = request_a();
  request.mutable_problem()->set_head_dim(7);
  auto result = env().client->compile(request);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.error().code, ErrorCode::invalid_argument);
  EXPECT_EQ(result.error().message.rfind("Compile: ", 0), 0u) << result.error().message;
  EXPECT_NE(result.error().message.find("head_dim"), std::string::npos);
  EXPECT_EQ(result.error().message.find('\n'), std::string::npos);
}

TEST(Client, ListKernelsPagesInKeyOrder) {
  REQUIRE_ENV();
  ASSERT_TRUE(kernel_a().ok());
  ASSERT_EQ(cli_compile_b().exit_code, 0) << describe_run(cli_compile_b());

  std::vector<std::string> keys;
  std::string token;
  int pages = 0;
  do {
    auto page = env().client->list_kernels(1, token);
    ASSERT_TRUE(page.ok()) << page.error().message;
    ASSERT_LE(page->kernels_size(), 1);
    for (const auto& kernel : page->kernels()) keys.push_back(kernel.key());
    token = page->next_page_token();
    ASSERT_LT(++pages, 10) << "pagination does not end";
  } while (!token.empty());
  EXPECT_EQ(keys.size(), 2u);
  EXPECT_TRUE(std::is_sorted(keys.begin(), keys.end()));
  EXPECT_NE(std::find(keys.begin(), keys.end(), kernel_a()->key()), keys.end());
}

TEST(Client, ServerInfoAndHealth) {
  REQUIRE_ENV();
  auto info = env().client->server_info();
  ASSERT_TRUE(info.ok()) << info.error().message;
  EXPECT_FALSE(info->nvrtc_version().empty());
  EXPECT_NE(std::find(info->templates().begin(), info->templates().end(), "attention_fwd"),
            info->templates().end());
  EXPECT_NE(std::find(info->supported_archs().begin(), info->supported_archs().end(), "sm_90a"),
            info->supported_archs().end());

  auto health = env().client->health();
  ASSERT_TRUE(health.ok()) << health.error().message;
  EXPECT_EQ(*health, "SERVING");
}

TEST(Client, HealthAfterShutdownIsNotServingOrUnavailable) {
  // A daemon of its own: shutting down the shared one would end the others.
  ScratchDir scratch;
  auto daemon = rpc_testing::start_daemon(rpc_testing::loopback_config(scratch / "cache"));
  ASSERT_TRUE(daemon);
  client::ConnectOptions options;
  options.address = daemon->address();
  options.call_timeout = std::chrono::seconds(5);
  auto connected = client::Client::connect(options);
  ASSERT_TRUE(connected.ok()) << connected.error().message;
  auto before = connected->health();
  ASSERT_TRUE(before.ok()) << before.error().message;
  EXPECT_EQ(*before, "SERVING");
  daemon->shutdown(std::chrono::milliseconds(100));
  daemon->wait();
  auto after = connected->health();
  if (after.ok())
    EXPECT_NE(*after, "SERVING");
  else
    EXPECT_EQ(after.error().message.rfind("Health.Check: ", 0), 0u) << after.error().message;
}

// ---- launching (no GPU here) ----

bool libcuda_present() {
  void* handle = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (handle != nullptr) dlclose(handle);
  return handle != nullptr;
}

TEST(KernelLauncher, NoDriverIsFailedPrecondition) {
  if (libcuda_present()) GTEST_SKIP() << "libcuda.so.1 is present: the no-driver path cannot run";
  auto launcher = client::KernelLauncher::create(0);
  ASSERT_FALSE(launcher.ok());
  EXPECT_EQ(launcher.error().code, ErrorCode::failed_precondition);
  EXPECT_NE(launcher.error().message.find("libcuda.so.1"), std::string::npos)
      << launcher.error().message;
}

TEST(KernelLauncher, ParamsFollowTheProblemMessage) {
  v1::Problem problem;
  problem.set_head_dim(128);
  problem.set_batch(2);
  problem.set_heads(8);
  problem.set_kv_heads(2);
  problem.set_seq_q(100);
  problem.set_seq_k(40);
  problem.set_layout(v1::LAYOUT_BHSD);
  const AttentionParams p = client::make_attention_params(problem, 0x1000, 0x2000, 0x3000, 0x4000);
  EXPECT_EQ(p.batch, 2);
  EXPECT_EQ(p.heads, 8);
  EXPECT_EQ(p.kv_heads, 2);
  EXPECT_EQ(p.seq_q, 100);
  EXPECT_EQ(p.seq_k, 40);
  // BHSD: a row is one head_dim vector; K's heads are seq_k rows apart.
  EXPECT_EQ(p.q_row_stride, 128);
  EXPECT_EQ(p.k_head_stride, 40 * 128);
  EXPECT_EQ(p.q_head_stride, 100 * 128);

  problem.set_layout(v1::LAYOUT_UNSPECIFIED);  // treated as BSHD
  problem.set_kv_heads(0);
  problem.set_seq_k(0);
  const AttentionParams bshd = client::make_attention_params(problem, 1, 2, 3, 4);
  EXPECT_EQ(bshd.kv_heads, 8);
  EXPECT_EQ(bshd.seq_k, 100);
  EXPECT_EQ(bshd.q_row_stride, 8 * 128);
  EXPECT_EQ(bshd.k_row_stride, 8 * 128);
}

// ---- the CLI ----

TEST(Cli, CompileJsonPrintsTheHandleWithoutCubin) {
  REQUIRE_ENV();
  const CliRun& run = cli_compile_b();
  ASSERT_EQ(run.exit_code, 0) << describe_run(run);
  auto handle = parse_handle(run.out);
  ASSERT_TRUE(handle) << "stdout is not a KernelHandle in JSON:\n" << run.out;
  EXPECT_TRUE(is_key(handle->key()));
  EXPECT_TRUE(handle->cubin().empty());  // left out unless --include-cubin
  EXPECT_GT(handle->cubin_size(), 0u);
  EXPECT_EQ(handle->problem().dtype(), v1::DTYPE_BF16);
  EXPECT_TRUE(handle->problem().causal());
  EXPECT_EQ(handle->config().block_m(), 64);
  EXPECT_EQ(handle->launch().grid().x(), 4u);  // ceil(200 / 64)
  EXPECT_EQ(handle->launch().grid().y(), 4u);
  ASSERT_TRUE(kernel_a().ok());
  EXPECT_NE(handle->key(), kernel_a()->key());
}

TEST(Cli, GetWritesTheCubin) {
  REQUIRE_ENV();
  const auto& a = kernel_a();
  ASSERT_TRUE(a.ok()) << a.error().message;
  const auto file = env().scratch / "a.cubin";
  const CliRun run = run_cli({"--address", address_arg(), "get", a->key(), "-o", file.string()});
  ASSERT_EQ(run.exit_code, 0) << describe_run(run);
  const std::string cubin = read_file(file);
  EXPECT_TRUE(is_elf(cubin));
  EXPECT_EQ(cubin, a->cubin());
  EXPECT_NE(run.out.find(a->key()), std::string::npos) << run.out;  // describe() output
  EXPECT_TRUE(run.err.empty()) << run.err;
}

TEST(Cli, ListShowsBothKernelsAsATableAndAsJson) {
  REQUIRE_ENV();
  const auto& a = kernel_a();
  ASSERT_TRUE(a.ok());
  const CliRun& b_run = cli_compile_b();
  ASSERT_EQ(b_run.exit_code, 0) << describe_run(b_run);
  const auto b = parse_handle(b_run.out);
  ASSERT_TRUE(b);

  const CliRun table = run_cli({"--address", address_arg(), "list"});
  ASSERT_EQ(table.exit_code, 0) << describe_run(table);
  EXPECT_EQ(table.out.rfind("KEY", 0), 0u) << table.out;
  EXPECT_NE(table.out.find(a->key().substr(0, 16)), std::string::npos) << table.out;
  EXPECT_NE(table.out.find(b->key().substr(0, 16)), std::string::npos) << table.out;
  EXPECT_NE(table.out.find("bf16"), std::string::npos);

  // One kernel per page: --all must follow the token to collect both.
  const CliRun json =
      run_cli({"--address", address_arg(), "--json", "list", "--page-size", "1", "--all"});
  ASSERT_EQ(json.exit_code, 0) << describe_run(json);
  v1::ListKernelsResponse listed;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json.out, &listed).ok()) << json.out;
  ASSERT_EQ(listed.kernels_size(), 2) << json.out;
  EXPECT_TRUE(listed.next_page_token().empty());

  const CliRun first_page = run_cli({"--address", address_arg(), "list", "--page-size", "1"});
  ASSERT_EQ(first_page.exit_code, 0) << describe_run(first_page);
  EXPECT_NE(first_page.out.find("--page-token"), std::string::npos) << first_page.out;
}

TEST(Cli, HealthAndInfo) {
  REQUIRE_ENV();
  const CliRun health = run_cli({"--address", address_arg(), "health"});
  EXPECT_EQ(health.exit_code, 0) << describe_run(health);
  EXPECT_EQ(health.out, "SERVING\n");

  const CliRun info = run_cli({"--address", address_arg(), "info"});
  EXPECT_EQ(info.exit_code, 0) << describe_run(info);
  EXPECT_NE(info.out.find("attention_fwd"), std::string::npos) << info.out;
}

// One line on stderr, "flashcore: ...", exit 1.
void expect_one_line_failure(const CliRun& run, const std::string& mentions) {
  EXPECT_EQ(run.exit_code, 1) << describe_run(run);
  EXPECT_EQ(run.err.rfind("flashcore: ", 0), 0u) << run.err;
  EXPECT_EQ(std::count(run.err.begin(), run.err.end(), '\n'), 1) << run.err;
  EXPECT_NE(run.err.find(mentions), std::string::npos) << run.err;
  EXPECT_TRUE(run.out.empty()) << run.out;
}

TEST(Cli, BadHeadDimIsOneLineNamingTheField) {
  REQUIRE_ENV();
  const CliRun run = run_cli({"--address", address_arg(), "compile", "--dtype", "fp16",
                              "--head-dim", "7", "--seq-q", "128"});
  expect_one_line_failure(run, "head_dim");
}

TEST(Cli, UnknownKeyAndUnreachableDaemonAreOneLineFailures) {
  REQUIRE_ENV();
  expect_one_line_failure(run_cli({"--address", address_arg(), "get", std::string(64, 'b')}),
                          "GetKernel");
  expect_one_line_failure(
      run_cli({"--address", "127.0.0.1:1", "--timeout-ms", "300", "health"}), "127.0.0.1:1");
}

// The daemon here has no GPU: validate is refused before compiling (the
// cache keeps its two kernels), one line naming the RPC and the reason.
TEST(Cli, ValidateWithoutAGpuIsOneLineFailurePreconditionReason) {
  REQUIRE_ENV();
  auto info = env().client->server_info();
  ASSERT_TRUE(info.ok()) << info.error().message;
  if (info->gpu_available()) GTEST_SKIP() << "this daemon has evaluation workers";
  for (const bool json : {false, true}) {
    SCOPED_TRACE(json ? "--json" : "text");
    std::vector<std::string> args = {"--address", address_arg(), "validate", "--dtype", "fp16",
                                     "--head-dim", "64", "--seq-q", "128",
                                     "--determinism-runs", "5", "--stability-trials", "2",
                                     "--rel-tolerance", "0.01", "--reference-rows", "16"};
    if (json) args.insert(args.begin() + 2, "--json");
    const CliRun run = run_cli(args);
    expect_one_line_failure(run, "Validate: validation needs a GPU evaluation worker");
    EXPECT_NE(run.err.find(info->gpu_unavailable_reason()), std::string::npos) << run.err;
  }
}

TEST(Cli, ValidateRefusesBadOptionsAndDocumentsItsExitCodes) {
  // Negative knobs are usage errors, before connecting.
  const CliRun negative = run_cli({"--address", "127.0.0.1:1", "validate", "--dtype", "fp16",
                                   "--head-dim", "64", "--seq-q", "128", "--determinism-runs",
                                   "-1"});
  EXPECT_EQ(negative.exit_code, 2) << describe_run(negative);
  EXPECT_NE(negative.err.find("--determinism-runs"), std::string::npos) << negative.err;

  // Upper bounds are the daemon's: it names the field.
  REQUIRE_ENV();
  const CliRun too_many = run_cli({"--address", address_arg(), "validate", "--dtype", "fp16",
                                   "--head-dim", "64", "--seq-q", "128", "--stability-trials",
                                   "100001"});
  expect_one_line_failure(too_many, "options.stability_trials");

  const CliRun help = run_cli({"validate", "--help"});
  EXPECT_EQ(help.exit_code, 0) << describe_run(help);
  for (const char* option : {"--head-dim", "--block-m", "--determinism-runs", "--stability-trials",
                             "--rel-tolerance", "--reference-rows"})
    EXPECT_NE(help.out.find(option), std::string::npos) << option << "\n" << help.out;
  EXPECT_NE(help.out.find("3 when it failed"), std::string::npos) << help.out;
}

TEST(Cli, CacheEvictAndClearRemoveKernelsAndSayWhat) {
  REQUIRE_ENV();
  const auto& a = kernel_a();
  ASSERT_TRUE(a.ok()) << a.error().message;
  const CliRun evicted = run_cli({"--address", address_arg(), "cache", "evict", a->key(),
                                  std::string(64, 'd')});
  ASSERT_EQ(evicted.exit_code, 0) << describe_run(evicted);
  EXPECT_NE(evicted.out.find("memory: removed 1 entries"), std::string::npos) << evicted.out;
  EXPECT_NE(evicted.out.find("disk:   removed 1 entries"), std::string::npos) << evicted.out;
  EXPECT_NE(evicted.out.find("not cached: " + std::string(64, 'd')), std::string::npos)
      << evicted.out;
  const CliRun get = run_cli({"--address", address_arg(), "get", a->key()});
  EXPECT_EQ(get.exit_code, 1) << describe_run(get);

  const CliRun cleared = run_cli({"--address", address_arg(), "--json", "cache", "clear"});
  ASSERT_EQ(cleared.exit_code, 0) << describe_run(cleared);
  v1::CacheChange change;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(cleared.out, &change).ok())
      << cleared.out;
  EXPECT_EQ(change.memory().entries_left(), 0u);

  const CliRun trimmed =
      run_cli({"--address", address_arg(), "cache", "evict", "--down-to", "1M"});
  EXPECT_EQ(trimmed.exit_code, 0) << describe_run(trimmed);
  // Neither keys nor a size: the daemon's one-line refusal names the fields.
  const CliRun nothing = run_cli({"--address", address_arg(), "cache", "evict"});
  EXPECT_EQ(nothing.exit_code, 1) << describe_run(nothing);
  EXPECT_NE(nothing.err.find("keys, down_to_bytes"), std::string::npos) << nothing.err;

  const CliRun help = run_cli({"cache", "--help"});
  EXPECT_EQ(help.exit_code, 0);
  for (const char* word : {"clear", "evict", "admin"})
    EXPECT_NE(help.out.find(word), std::string::npos) << word << "\n" << help.out;
  const CliRun top = run_cli({"--help"});
  EXPECT_NE(top.out.find("cache"), std::string::npos) << top.out;
}

TEST(Cli, UsageErrorsExitTwo) {
  // No daemon needed: the arguments are refused before connecting.
  const CliRun missing_dtype = run_cli({"--address", "127.0.0.1:1", "compile", "--head-dim",
                                        "64", "--seq-q", "128"});
  EXPECT_EQ(missing_dtype.exit_code, 2) << describe_run(missing_dtype);
  EXPECT_NE(missing_dtype.err.find("--dtype"), std::string::npos) << missing_dtype.err;

  const CliRun bad_dtype = run_cli({"compile", "--dtype", "fp32", "--head-dim", "64",
                                    "--seq-q", "128"});
  EXPECT_EQ(bad_dtype.exit_code, 2) << describe_run(bad_dtype);

  const CliRun help = run_cli({"compile", "--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.out.find("--head-dim"), std::string::npos) << help.out;
}

}  // namespace
}  // namespace flashcore
