// KernelEvolution on a CPU box (issue 18): real gRPC on loopback, real
// compile-worker processes running real NVRTC, a real SQLite store. The GPU
// half of EvaluateSource (correctness, timing) is in tests/gpu.
#include <gtest/gtest.h>

#include <sqlite3.h>

#include <fstream>
#include <future>
#include <thread>

#include "common/digest.hpp"
#include "evolve_sources.hpp"
#include "flashcore/v1/evolve.grpc.pb.h"
#include "rpc_test_support.hpp"

namespace flashcore {
namespace {

using namespace std::chrono_literals;
using test_support::ScratchDir;

struct EvolveDaemon {
  ScratchDir dir;
  std::unique_ptr<Daemon> daemon;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::KernelEvolution::Stub> evolve;
  std::unique_ptr<v1::FlashCore::Stub> flashcore;
};

std::unique_ptr<EvolveDaemon> start(const std::function<void(DaemonConfig&)>& adjust = nullptr,
                                    std::unique_ptr<EvolveDaemon> reuse = nullptr) {
  auto d = reuse ? std::move(reuse) : std::make_unique<EvolveDaemon>();
  DaemonConfig config = rpc_testing::loopback_config(d->dir.path());
  config.compile_worker = FLASHCORE_COMPILE_WORKER_PATH;
  config.worker_binary = d->dir.path() / "no-worker";  // a CPU daemon, even on a GPU box
  config.evolve.compile.wall = 60s;
  if (adjust) adjust(config);
  d->daemon = rpc_testing::start_daemon(config);
  if (!d->daemon) return nullptr;
  d->channel = rpc_testing::channel_to(*d->daemon);
  d->evolve = v1::KernelEvolution::NewStub(d->channel);
  d->flashcore = v1::FlashCore::NewStub(d->channel);
  return d;
}

v1::SourceCandidate naive(const std::string& name) {
  v1::SourceCandidate c;
  c.set_name(name);
  c.set_source(test_support::naive_attention_source());
  c.set_name_expression(test_support::naive_name_expression());
  c.mutable_launch()->set_block_m(32);
  c.mutable_launch()->set_threads(32);
  return c;
}

v1::SourceCandidate raw(const std::string& name, const std::string& source,
                        const std::string& kernel) {
  v1::SourceCandidate c;
  c.set_name(name);
  c.set_source(source);
  c.set_name_expression(kernel);
  c.mutable_launch()->set_block_m(32);
  c.mutable_launch()->set_threads(32);
  return c;
}

v1::EvaluateSourceRequest generation(int64_t number, std::vector<v1::SourceCandidate> candidates) {
  v1::EvaluateSourceRequest request;
  auto* problem = request.mutable_problem();
  problem->set_dtype(v1::DTYPE_FP16);
  problem->set_head_dim(64);
  problem->set_batch(1);
  problem->set_heads(2);
  problem->set_seq_q(100);
  request.set_arch("sm_80");
  request.set_generation(number);
  for (auto& c : candidates) *request.add_candidates() = std::move(c);
  return request;
}

struct Outcome {
  grpc::Status status;
  v1::GenerationStarted started;
  std::map<std::string, v1::CandidateVerdict> final;  // by name
  std::vector<v1::CandidateVerdict> verdicts;          // in arrival order
  v1::GenerationSummary summary;
  bool has_summary = false;
};

Outcome run(v1::KernelEvolution::Stub& stub, const v1::EvaluateSourceRequest& request,
            const std::string& authorization = "", std::chrono::seconds deadline = 300s) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + deadline);
  if (!authorization.empty()) context.AddMetadata("authorization", authorization);
  auto reader = stub.EvaluateSource(&context, request);
  Outcome out;
  v1::EvaluateSourceEvent event;
  while (reader->Read(&event)) {
    if (event.has_started()) out.started = event.started();
    if (event.has_verdict()) {
      out.verdicts.push_back(event.verdict());
      if (event.verdict().final()) out.final[event.verdict().name()] = event.verdict();
    }
    if (event.has_summary()) {
      out.summary = event.summary();
      out.has_summary = true;
    }
  }
  out.status = reader->Finish();
  return out;
}

TEST(EvaluateSourceTest, CompileErrorsComeBackWithTheirLogAndGoodSourcesCompile) {
  auto d = start();
  ASSERT_TRUE(d);
  auto out = run(*d->evolve, generation(1, {naive("good"), raw("broken", test_support::kBrokenSource, "broken"),
                                            raw("undefined", test_support::kBrokenSource + std::string(), "no_such_kernel")}));
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  ASSERT_EQ(out.started.candidate_ids_size(), 3);
  EXPECT_FALSE(out.started.gpu_available());
  ASSERT_EQ(out.final.size(), 3u);

  const auto& good = out.final["good"];
  EXPECT_EQ(good.status(), v1::CANDIDATE_STATUS_COMPILED) << good.detail();
  EXPECT_TRUE(good.compile().ok());
  EXPECT_GT(good.resources().registers(), 0);
  EXPECT_GT(good.compile().cubin_size(), 0u);
  EXPECT_FALSE(good.compile().lowered_name().empty());
  EXPECT_NE(good.detail().find("not evaluated"), std::string::npos) << good.detail();
  EXPECT_EQ(good.source_sha256(), sha256_hex(test_support::naive_attention_source()));

  const auto& broken = out.final["broken"];
  EXPECT_EQ(broken.status(), v1::CANDIDATE_STATUS_COMPILE_FAILED);
  EXPECT_FALSE(broken.compile().ok());
  // NVRTC's log, with the line of the error in the candidate's own file.
  EXPECT_NE(broken.compile().log().find("candidate.cu(3)"), std::string::npos)
      << broken.compile().log();
  EXPECT_NE(broken.compile().log().find("error"), std::string::npos);

  ASSERT_TRUE(out.has_summary);
  EXPECT_EQ(out.summary.candidates(), 3);
  EXPECT_EQ(out.summary.compiled(), 1);
  EXPECT_EQ(out.summary.generation(), 1);
  EXPECT_NE(out.summary.note().find("compile verdicts only"), std::string::npos);
}

TEST(EvaluateSourceTest, IncludesBeyondTheTemplateHeadersAreRefused) {
  auto d = start();
  ASSERT_TRUE(d);
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"#include \"/etc/passwd\"\n", "absolute paths are not allowed"},
      {"#include </etc/passwd>\n", "absolute paths are not allowed"},
      {"#include \"../../../../etc/passwd\"\n", "'..' is not allowed"},
      {"#include \"common/../../etc/passwd\"\n", "'..' is not allowed"},
      {"#define F \"/etc/passwd\"\n#include F\n", "no macros"},
      {"  %:  include \"/etc/passwd\"\n", "absolute paths"},
      {"/* a */ # /* b */ include \\\n \"/etc/passwd\"\n", "absolute paths"},
      {"#include \"passwd\"\n", "not one of the daemon's template headers"},
      {"#if __has_include(\"/etc/passwd\")\n#endif\n", "__has_include"},
      {"_Pragma(\"GCC dependency \\\"/etc/passwd\\\"\")\n", "dependency"},
      {"#include_next \"/etc/passwd\"\n", "absolute"},
  };
  for (const auto& [source, reason] : cases) {
    auto request = generation(1, {raw("evil", "int ok;\n" + source, "k")});
    auto out = run(*d->evolve, request);
    EXPECT_EQ(out.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << source;
    EXPECT_NE(out.status.error_message().find("candidates[0].source: line "), std::string::npos)
        << out.status.error_message();
    EXPECT_NE(out.status.error_message().find(reason), std::string::npos)
        << source << " -> " << out.status.error_message();
    EXPECT_FALSE(out.has_summary);
  }
  // What the templates themselves do is allowed, and nothing was stored above.
  auto out = run(*d->evolve, generation(2, {naive("fine")}));
  EXPECT_TRUE(out.status.ok()) << out.status.error_message();
  grpc::ClientContext context;
  v1::ListCandidatesResponse list;
  ASSERT_TRUE(d->evolve->ListCandidates(&context, v1::ListCandidatesRequest{}, &list).ok());
  EXPECT_EQ(list.candidates_size(), 1);
}

TEST(EvaluateSourceTest, LimitsOfACallNameTheLimit) {
  auto d = start([](DaemonConfig& c) {
    c.evolve.max_candidates = 3;
    c.evolve.max_source_bytes = 20000;
    c.evolve.max_gpu_time_budget_ms = 5000;
  });
  ASSERT_TRUE(d);
  auto too_many = run(*d->evolve, generation(1, {naive("a"), naive("b"), naive("c"), naive("d")}));
  EXPECT_EQ(too_many.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(too_many.status.error_message().find("candidates: 4 exceeds the limit of 3 per call (evolve.max_candidates)"),
            std::string::npos)
      << too_many.status.error_message();

  auto big = naive("big");
  big.set_source(big.source() + "\n//" + std::string(30000, 'x') + "\n");
  auto oversized = run(*d->evolve, generation(1, {big}));
  EXPECT_EQ(oversized.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(oversized.status.error_message().find("exceeds the limit of 20000 bytes per source (evolve.max_source_bytes)"),
            std::string::npos)
      << oversized.status.error_message();

  auto request = generation(1, {naive("a")});
  request.mutable_options()->set_gpu_time_budget_ms(6000);
  auto budget = run(*d->evolve, request);
  EXPECT_EQ(budget.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(budget.status.error_message().find("evolve.max_gpu_time_budget_ms"), std::string::npos)
      << budget.status.error_message();

  auto twice = run(*d->evolve, generation(1, {naive("a"), naive("a")}));
  EXPECT_EQ(twice.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  auto no_kernel = naive("a");
  no_kernel.clear_name_expression();
  auto missing = run(*d->evolve, generation(1, {no_kernel}));
  EXPECT_EQ(missing.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  auto bad_launch = naive("a");
  bad_launch.mutable_launch()->set_threads(33);
  auto launch = run(*d->evolve, generation(1, {bad_launch}));
  EXPECT_EQ(launch.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(launch.status.error_message().find("candidates[0].launch.threads"), std::string::npos);
}

TEST(EvaluateSourceTest, TheCompileQueueBoundIsResourceExhausted) {
  auto d = start([](DaemonConfig& c) {
    c.evolve.max_pending_candidates = 2;
    c.evolve.compile_workers = 1;
    c.evolve.compile.wall = 20s;
    c.evolve.compile.cpu_seconds = 15;
  });
  ASSERT_TRUE(d);
  // The first generation holds both places while its hanging source compiles.
  auto first = std::async(std::launch::async, [&] {
    return run(*d->evolve, generation(1, {raw("hang", test_support::kNvrtcHangSource, "never"), naive("ok")}));
  });
  std::this_thread::sleep_for(1500ms);
  auto second = run(*d->evolve, generation(2, {naive("more")}));
  EXPECT_EQ(second.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(second.status.error_message().find("evolve.max_pending_candidates"), std::string::npos)
      << second.status.error_message();
  EXPECT_TRUE(first.get().status.ok());
}

// A source that keeps NVRTC busy and one that makes it exhaust its memory
// each cost one killed compile worker; meanwhile the daemon answers other
// calls (a Compile of a real kernel, another client's generation) at once.
TEST(EvaluateSourceTest, HangingAndMemoryHungryCompilesAreContainedWhileTheDaemonServes) {
  auto d = start([](DaemonConfig& c) {
    c.evolve.compile.wall = 8s;
    c.evolve.compile.cpu_seconds = 6;
    c.evolve.compile.memory_mb = 1536;
    c.evolve.compile_workers = 3;
  });
  ASSERT_TRUE(d);
  const auto started = std::chrono::steady_clock::now();
  auto bad = std::async(std::launch::async, [&] {
    return run(*d->evolve, generation(1, {raw("hang", test_support::kNvrtcHangSource, "never")}));
  });
  std::this_thread::sleep_for(500ms);
  // Served while the hanging compile runs.
  auto good = run(*d->evolve, generation(2, {naive("meanwhile")}));
  ASSERT_TRUE(good.status.ok()) << good.status.error_message();
  EXPECT_EQ(good.final["meanwhile"].status(), v1::CANDIDATE_STATUS_COMPILED);
  v1::KernelHandle handle;
  auto request = rpc_testing::quick_request();
  request.set_omit_cubin(true);
  EXPECT_TRUE(rpc_testing::compile(*d->flashcore, request, &handle).ok());
  v1::ServerInfo info;
  EXPECT_TRUE(rpc_testing::server_info(*d->flashcore, &info).ok());

  auto hung = bad.get();
  ASSERT_TRUE(hung.status.ok()) << hung.status.error_message();
  const auto& verdict = hung.final["hang"];
  EXPECT_EQ(verdict.status(), v1::CANDIDATE_STATUS_COMPILE_FAILED);
  // Killed by one of its limits: CPU time, memory or wall time, named.
  const std::string& error = verdict.compile().error();
  EXPECT_TRUE(error.find("compile worker") != std::string::npos &&
              (error.find("CPU time") != std::string::npos ||
               error.find("memory") != std::string::npos ||
               error.find("wall time") != std::string::npos))
      << error;
  EXPECT_LT(std::chrono::steady_clock::now() - started, 40s);
  // And the daemon still compiles sources.
  auto after = run(*d->evolve, generation(3, {naive("after")}));
  EXPECT_EQ(after.final["after"].status(), v1::CANDIDATE_STATUS_COMPILED);
}

TEST(EvaluateSourceTest, ACompileWorkerOverItsMemoryLimitIsNamed) {
  auto d = start([](DaemonConfig& c) {
    c.evolve.compile.memory_mb = 1536;
    c.evolve.compile.cpu_seconds = 120;
    c.evolve.compile.wall = 180s;
  });
  ASSERT_TRUE(d);
  // One exhausts LLVM's memory (the worker aborts), one the front end's (NVRTC reports it).
  auto out = run(*d->evolve, generation(1, {raw("hungry", test_support::kNvrtcMemorySource, "never"),
                                            raw("long-string", test_support::kNvrtcStringSource, "never"),
                                            raw("constexpr", test_support::kConstexprLoopSource, "never")}));
  ASSERT_TRUE(out.status.ok());
  for (const char* name : {"hungry", "long-string"}) {
    const auto& verdict = out.final[name];
    EXPECT_EQ(verdict.status(), v1::CANDIDATE_STATUS_COMPILE_FAILED) << name;
    const std::string& error = verdict.compile().error();
    EXPECT_NE(error.find("out of memory"), std::string::npos) << name << ": " << error;
    EXPECT_NE(error.find("1536 MiB"), std::string::npos) << name << ": " << error;
    EXPECT_NE(error.find("evolve.compile.memory_mb"), std::string::npos) << name << ": " << error;
  }
  // A huge constexpr loop: NVRTC's own complexity limit refuses it at once.
  const auto& constexpr_loop = out.final["constexpr"];
  EXPECT_EQ(constexpr_loop.status(), v1::CANDIDATE_STATUS_COMPILE_FAILED);
  EXPECT_NE(constexpr_loop.compile().log().find("excessive constexpr function call complexity"),
            std::string::npos)
      << constexpr_loop.compile().log();
}

TEST(EvaluateSourceTest, LineageRoundTripsAndSurvivesARestart) {
  auto d = start();
  ASSERT_TRUE(d);
  auto first = generation(7, {naive("parent-a"), naive("parent-b")});
  first.add_tags("run-1");
  first.mutable_candidates(0)->add_tags("elite");
  auto out1 = run(*d->evolve, first);
  ASSERT_TRUE(out1.status.ok()) << out1.status.error_message();
  ASSERT_EQ(out1.started.candidate_ids_size(), 2);
  const int64_t a = out1.started.candidate_ids(0), b = out1.started.candidate_ids(1);

  auto child = naive("child");
  child.add_parent_ids(a);
  child.add_parent_ids(b);
  auto second = generation(8, {child});
  second.add_tags("run-1");
  auto out2 = run(*d->evolve, second);
  ASSERT_TRUE(out2.status.ok()) << out2.status.error_message();
  const int64_t c = out2.started.candidate_ids(0);

  auto bad_parent = naive("orphan");
  bad_parent.add_parent_ids(999999);
  auto out3 = run(*d->evolve, generation(9, {bad_parent}));
  EXPECT_EQ(out3.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(out3.status.error_message().find("parent_ids"), std::string::npos);

  // Restart on the same folder: a loop resumes from what was stored.
  d->evolve.reset();
  d->flashcore.reset();
  d->channel.reset();
  d->daemon.reset();
  d = start(nullptr, std::move(d));
  ASSERT_TRUE(d);

  grpc::ClientContext get_context;
  v1::GetCandidateRequest get;
  get.set_id(c);
  v1::StoredCandidate stored;
  ASSERT_TRUE(d->evolve->GetCandidate(&get_context, get, &stored).ok());
  EXPECT_EQ(stored.name(), "child");
  EXPECT_EQ(stored.generation(), 8);
  EXPECT_EQ(stored.owner(), "anonymous");
  ASSERT_EQ(stored.parent_ids_size(), 2);
  EXPECT_EQ(stored.parent_ids(0), a);
  EXPECT_EQ(stored.parent_ids(1), b);
  EXPECT_EQ(stored.source(), test_support::naive_attention_source());
  EXPECT_EQ(stored.source_sha256(), sha256_hex(stored.source()));
  EXPECT_EQ(stored.verdict().status(), v1::CANDIDATE_STATUS_COMPILED);
  EXPECT_TRUE(stored.verdict().final());
  EXPECT_TRUE(stored.verdict().compile().ok());
  EXPECT_EQ(stored.name_expression(), test_support::naive_name_expression());
  EXPECT_EQ(stored.launch().block_m(), 32);

  auto list = [&](std::optional<int64_t> generation, const std::string& tag, int page_size = 0,
                  const std::string& token = "") {
    grpc::ClientContext context;
    v1::ListCandidatesRequest request;
    if (generation) request.set_generation(*generation);
    request.set_tag(tag);
    request.set_page_size(page_size);
    request.set_page_token(token);
    v1::ListCandidatesResponse response;
    EXPECT_TRUE(d->evolve->ListCandidates(&context, request, &response).ok());
    return response;
  };
  EXPECT_EQ(list(7, "").candidates_size(), 2);
  EXPECT_EQ(list(8, "").candidates_size(), 1);
  EXPECT_EQ(list(std::nullopt, "run-1").candidates_size(), 3);
  const auto elite = list(std::nullopt, "elite");
  ASSERT_EQ(elite.candidates_size(), 1);
  EXPECT_EQ(elite.candidates(0).id(), a);
  EXPECT_TRUE(elite.candidates(0).source().empty());  // without include_source
  const auto page1 = list(std::nullopt, "", 2);
  ASSERT_EQ(page1.candidates_size(), 2);
  ASSERT_FALSE(page1.next_page_token().empty());
  const auto page2 = list(std::nullopt, "", 2, page1.next_page_token());
  ASSERT_EQ(page2.candidates_size(), 1);
  EXPECT_EQ(page2.candidates(0).id(), c);
  EXPECT_TRUE(page2.next_page_token().empty());
}

TEST(EvaluateSourceTest, ATamperedRowIsAnErrorForItsIdAndLeftOutOfLists) {
  auto d = start();
  ASSERT_TRUE(d);
  auto out = run(*d->evolve, generation(1, {naive("x"), naive("y")}));
  ASSERT_TRUE(out.status.ok());
  const int64_t x = out.started.candidate_ids(0);
  const auto path = d->dir.path() / "candidates.db";
  d->evolve.reset();
  d->flashcore.reset();
  d->channel.reset();
  d->daemon.reset();
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
    const std::string sql = "UPDATE candidates SET source = source || ' ' WHERE id = " + std::to_string(x);
    ASSERT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr), SQLITE_OK);
    sqlite3_close(db);
  }
  d = start(nullptr, std::move(d));
  ASSERT_TRUE(d);
  grpc::ClientContext context;
  v1::GetCandidateRequest get;
  get.set_id(x);
  v1::StoredCandidate stored;
  auto status = d->evolve->GetCandidate(&context, get, &stored);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_NE(status.error_message().find("does not match its SHA-256"), std::string::npos)
      << status.error_message();
  grpc::ClientContext list_context;
  v1::ListCandidatesResponse list;
  ASSERT_TRUE(d->evolve->ListCandidates(&list_context, v1::ListCandidatesRequest{}, &list).ok());
  ASSERT_EQ(list.candidates_size(), 1);
  EXPECT_EQ(list.candidates(0).name(), "y");
}

TEST(EvaluateSourceTest, AStoreThatIsNotOursIsRefusedNotRecreated) {
  ScratchDir dir;
  const auto path = dir.path() / "candidates.db";
  std::ofstream(path) << "not a database at all, but someone's file";
  auto d = start([&](DaemonConfig& c) { c.candidates_db = path; });
  ASSERT_TRUE(d);  // the daemon serves; only KernelEvolution is off
  auto out = run(*d->evolve, generation(1, {naive("x")}));
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::UNIMPLEMENTED);
  std::ifstream in(path);
  std::string contents((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(contents, "not a database at all, but someone's file");
}

// Shared box: roles and ownership as for tune jobs.
struct Client {
  const char* name;
  const char* role;
  const char* token;
  std::string bearer() const { return std::string("Bearer ") + token; }
};
constexpr Client kAlice{"alice", "tune", "token-of-alice"};
constexpr Client kBob{"bob", "tune", "token-of-bob"};
constexpr Client kReader{"reader", "read", "token-of-reader"};
constexpr Client kAdmin{"boss", "admin", "token-of-boss"};

TEST(EvaluateSourceTest, ClientsSeeOnlyTheirOwnCandidatesAndOnlyAdminsPromote) {
  ScratchDir tokens;
  {
    std::ofstream out(tokens.path() / "tokens");
    for (const Client& c : {kAlice, kBob, kReader, kAdmin})
      out << c.name << " " << c.role << " " << sha256_hex(c.token) << "\n";
  }
  auto d = start([&](DaemonConfig& c) { c.auth_tokens = tokens.path() / "tokens"; });
  ASSERT_TRUE(d);

  auto unauthenticated = run(*d->evolve, generation(1, {naive("x")}));
  EXPECT_EQ(unauthenticated.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  auto reader = run(*d->evolve, generation(1, {naive("x")}), kReader.bearer());
  EXPECT_EQ(reader.status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(reader.status.error_message().find("needs role tune"), std::string::npos);

  auto alice = run(*d->evolve, generation(1, {naive("mine")}), kAlice.bearer());
  ASSERT_TRUE(alice.status.ok()) << alice.status.error_message();
  const int64_t id = alice.started.candidate_ids(0);

  auto get = [&](const Client& who, int64_t which, v1::StoredCandidate* out) {
    grpc::ClientContext context;
    context.AddMetadata("authorization", who.bearer());
    v1::GetCandidateRequest request;
    request.set_id(which);
    return d->evolve->GetCandidate(&context, request, out);
  };
  auto list = [&](const Client& who, const std::string& owner, v1::ListCandidatesResponse* out) {
    grpc::ClientContext context;
    context.AddMetadata("authorization", who.bearer());
    v1::ListCandidatesRequest request;
    request.set_owner(owner);
    return d->evolve->ListCandidates(&context, request, out);
  };
  v1::StoredCandidate stored;
  EXPECT_TRUE(get(kAlice, id, &stored).ok());
  EXPECT_EQ(stored.owner(), "alice");
  EXPECT_EQ(get(kBob, id, &stored).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_TRUE(get(kAdmin, id, &stored).ok());
  v1::ListCandidatesResponse listed;
  ASSERT_TRUE(list(kBob, "", &listed).ok());
  EXPECT_EQ(listed.candidates_size(), 0);
  EXPECT_EQ(list(kBob, "alice", &listed).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  listed.Clear();
  ASSERT_TRUE(list(kAdmin, "alice", &listed).ok());
  EXPECT_EQ(listed.candidates_size(), 1);

  // Bob may not build on Alice's candidate, nor name it as his baseline.
  auto child = naive("child");
  child.add_parent_ids(id);
  auto bob = run(*d->evolve, generation(2, {child}), kBob.bearer());
  EXPECT_EQ(bob.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  auto baseline = generation(2, {naive("b")});
  baseline.mutable_options()->set_baseline("#" + std::to_string(id));
  EXPECT_EQ(run(*d->evolve, baseline, kBob.bearer()).status.error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  auto promote = [&](const Client& who, int64_t which) {
    grpc::ClientContext context;
    context.AddMetadata("authorization", who.bearer());
    v1::PromoteCandidateRequest request;
    request.set_id(which);
    v1::PromoteCandidateResponse response;
    return d->evolve->PromoteCandidate(&context, request, &response);
  };
  auto denied = promote(kAlice, id);
  EXPECT_EQ(denied.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(denied.error_message().find("needs role admin"), std::string::npos);
  EXPECT_EQ(promote(kAdmin, 424242).error_code(), grpc::StatusCode::NOT_FOUND);
  // Compiled but never evaluated (no GPU): not promotable.
  auto not_valid = promote(kAdmin, id);
  EXPECT_EQ(not_valid.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(not_valid.error_message().find("CANDIDATE_STATUS_COMPILED"), std::string::npos)
      << not_valid.error_message();
}

TEST(EvaluateSourceTest, AGenerationIsATuneJobOfItsClientForTheQuotas) {
  auto d = start([](DaemonConfig& c) {
    c.quota_tune_jobs = 1;
    c.evolve.compile.wall = 20s;
    c.evolve.compile.cpu_seconds = 15;
  });
  ASSERT_TRUE(d);
  auto first = std::async(std::launch::async, [&] {
    return run(*d->evolve, generation(1, {raw("hang", test_support::kNvrtcHangSource, "never")}));
  });
  std::this_thread::sleep_for(1500ms);
  auto second = run(*d->evolve, generation(2, {naive("x")}));
  EXPECT_EQ(second.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(second.status.error_message().find("anonymous"), std::string::npos)
      << second.status.error_message();
  EXPECT_TRUE(first.get().status.ok());
  auto third = run(*d->evolve, generation(3, {naive("x")}));
  EXPECT_TRUE(third.status.ok()) << third.status.error_message();
}

}  // namespace
}  // namespace flashcore
