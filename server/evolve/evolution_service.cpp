#include "evolve/evolution_service.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <thread>
#include <utility>

#include "common/digest.hpp"
#include "evolve/include_guard.hpp"
#include "family/template_catalog.hpp"
#include "jit/nvrtc_compiler.hpp"
#include "rpc/translate.hpp"
#include "service/kernel_handle.hpp"
#include "tuning/shape_bucket.hpp"

namespace flashcore::evolve {

using rpc::bounded_status;
using rpc::to_grpc_status;
using Clock = std::chrono::steady_clock;

namespace {

Error invalid(std::string message) {
  return make_error(ErrorCode::invalid_argument, std::move(message));
}

QkvLayout layout_of(v1::Layout layout) {
  return layout == v1::LAYOUT_BHSD ? QkvLayout::bhsd : QkvLayout::bshd;
}

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

bool evaluated_on_gpu(v1::ValidationDepth depth) { return depth != v1::VALIDATION_DEPTH_COMPILE; }

v1::ResourceReport resources_message(const ResourceReport& r) {
  v1::ResourceReport out;
  out.set_registers(r.registers);
  out.set_static_smem_bytes(r.static_smem_bytes);
  out.set_spill_store_bytes(r.spill_store_bytes);
  out.set_spill_load_bytes(r.spill_load_bytes);
  out.set_stack_frame_bytes(r.stack_frame_bytes);
  out.set_constant_bytes(r.constant_bytes);
  out.set_ptxas_log(r.ptxas_log.substr(0, 4096));
  return out;
}

// NVRTC's options for a submitted source: the daemon's own (nvrtc_compiler),
// and no directory of any source on the include path.
std::vector<std::string> source_options(const std::string& arch) {
  return {"--gpu-architecture=" + arch, "--std=c++17", "--ptxas-options=--verbose",
          "--use_fast_math", "-DFLASHCORE_NVRTC=1", "--no-source-include"};
}

// One EvaluateSource call in EvolutionService::streams(), from the first
// line of its handler until the call is done: a refusal drops it as the
// handler returns, a generation's reactor holds it until OnDone.
class CountedCall {
 public:
  explicit CountedCall(std::atomic<size_t>& count) : count_(&count) { count_->fetch_add(1); }
  CountedCall(CountedCall&& other) noexcept : count_(std::exchange(other.count_, nullptr)) {}
  CountedCall& operator=(CountedCall&&) = delete;
  ~CountedCall() {
    if (count_ != nullptr) count_->fetch_sub(1);
  }

 private:
  std::atomic<size_t>* count_;
};

}  // namespace

// One candidate as the generation handles it.
struct Candidate {
  v1::StoredCandidate stored;   // as stored (id set once inserted)
  std::string name_expression;  // resolved
  v1::SourceLaunch launch;      // resolved
  v1::TileConfig config;        // block_m for the grid (and the family's fields with a config)
  bool hidden = false;          // a stored baseline evaluated again: not streamed, not stored
  v1::CandidateVerdict verdict;
  std::string lowered_name, cubin;
  ResourceReport resources;
  bool compiled = false;
  double median_us = 0;
};

// Candidates handed from the compile threads to the GPU side, in the order
// they compiled (only those that go on to a GPU).
struct CompiledQueue {
  std::mutex mutex;
  std::condition_variable changed;
  std::deque<size_t> order;
  size_t done = 0;  // compiles finished
  size_t next = 0;  // the next candidate to compile
};

// The GPU side's account of a generation.
struct GpuAccount {
  double gpu_ms = 0;
  bool budget_spent = false;
  std::string served;     // what the daemon serves for the bucket
  double served_us = 0;   // its median (0: not timed)
  double baseline_us = 0;  // the baseline's median (0: none, or not valid)
};

// One EvaluateSource call, run on a thread of its own.
struct EvolutionService::Generation {
  EvolutionService* service = nullptr;
  auth::Identity who;
  std::string template_id;
  ProblemClass problem;
  std::vector<RuntimeShape> shapes;
  std::vector<v1::Layout> layouts;
  std::string arch;
  int64_t generation = 0;
  v1::EvaluateSourceOptions options;
  std::vector<Candidate> candidates;  // request order; a hidden baseline last
  int baseline = -1;                  // index into candidates
  std::chrono::milliseconds gpu_budget{0};
  std::atomic<bool> cancelled{false};
  bool quota_taken = false;

  // The stream: events queued here, written by the reactor.
  std::function<void(v1::EvaluateSourceEvent)> emit;

  // EvaluateSource's steps, in order. Checks that need no state
  // (INVALID_ARGUMENT naming the field or limit): the options and limits,
  // the shapes, the candidates (each one's kernel and launch resolved), the
  // lineage (parents and a stored baseline must be the caller's). Then the
  // state: admission to the daemon's queue and the client's quotas
  // (RESOURCE_EXHAUSTED), and the rows stored before anything runs, so that
  // a crashed loop finds its generation.
  Status check_request(const v1::EvaluateSourceRequest& request);
  Status parse_shapes(const v1::EvaluateSourceRequest& request);
  Status parse_candidates(const v1::EvaluateSourceRequest& request);
  Status resolve_launch(Candidate& c, const v1::SourceCandidate& in, const std::string& field,
                        const v1::EvaluateSourceRequest& request);
  Status check_lineage();
  Status add_stored_baseline(const std::string& name);
  Status admit();
  Status store_rows();
  // Gives back the queue places and the quota's tune job that admit() took.
  void release_admission();

  // run()'s steps: announce, compile on several threads while the GPU side
  // evaluates what compiled (the baseline first), then the summary.
  void run();
  void announce();
  void compile_all(CompiledQueue& queue, bool gpu);
  void evaluate_compiled(CompiledQueue& queue, GpuAccount& account);
  void evaluate_baseline(CompiledQueue& queue, Clock::time_point budget_end, GpuAccount& account);
  void finish(Candidate& c, const GpuAccount& account);
  void summarize(const GpuAccount& account, bool gpu, Clock::time_point started_at);

  void compile(Candidate& candidate);
  // evaluate()'s steps: validation on every shape, timing of a correct
  // kernel, compute-sanitizer on request. Each uses the GPU until
  // `budget_end`, adding to `gpu_ms`, and sets `budget_spent` when it runs out.
  void evaluate(Candidate& candidate, Clock::time_point budget_end, double& gpu_ms,
                bool& budget_spent);
  std::optional<bool> validate_shapes(Candidate& c, const v1::EvalKernel& kernel,
                                      Clock::time_point budget_end, double& gpu_ms,
                                      bool& budget_spent, std::string& first_problem);
  bool time_correct(Candidate& c, const v1::EvalKernel& kernel, Clock::time_point budget_end,
                    double& gpu_ms, bool& budget_spent);
  void sanitize(Candidate& c, const v1::EvalKernel& kernel, Clock::time_point budget_end,
                double& gpu_ms, bool& budget_spent);
  // One evaluation on a worker, its wall time added to `gpu_ms` and the candidate's.
  Result<v1::EvaluateResponse> on_worker(Candidate& c, const v1::EvaluateRequest& request,
                                         Clock::time_point budget_end, double& gpu_ms,
                                         eval::EvaluateCall* call);
  void publish(Candidate& candidate, const std::string& stage, bool final);
  std::optional<double> served_median(std::string& served, double& gpu_ms);
};

// Server-streaming writer: events go out one at a time, in order; the call
// finishes once the generation has ended and every event is written.
class EvolutionService::GenerationReactor final
    : public grpc::ServerWriteReactor<v1::EvaluateSourceEvent> {
 public:
  GenerationReactor(std::shared_ptr<Generation> generation, CountedCall counted)
      : state_(std::make_shared<State>()), counted_(std::move(counted)) {
    state_->reactor = this;
    state_->generation = std::move(generation);
  }

  // Queues an event (from the generation's threads).
  static void push(const std::shared_ptr<void>& opaque, v1::EvaluateSourceEvent event) {
    auto state = std::static_pointer_cast<State>(opaque);
    std::lock_guard lock(state->mutex);
    if (state->status || !state->reactor) return;
    state->queue.push_back(std::move(event));
    pump(*state);
  }
  static void end(const std::shared_ptr<void>& opaque, grpc::Status status) {
    auto state = std::static_pointer_cast<State>(opaque);
    std::lock_guard lock(state->mutex);
    state->generation.reset();  // the generation's emit holds this state
    if (state->status) return;
    state->status = bounded_status(status);
    pump(*state);
  }
  std::shared_ptr<void> handle() const { return state_; }

  void OnWriteDone(bool ok) override {
    std::lock_guard lock(state_->mutex);
    state_->writing = false;
    if (!ok) state_->queue.clear();
    pump(*state_);
  }
  void OnCancel() override {
    std::lock_guard lock(state_->mutex);
    if (state_->generation) state_->generation->cancelled = true;
    if (!state_->status) state_->status = grpc::Status(grpc::StatusCode::CANCELLED, "evaluation cancelled");
    state_->queue.clear();
    pump(*state_);
  }
  void OnDone() override {
    {
      std::lock_guard lock(state_->mutex);
      state_->reactor = nullptr;
    }
    delete this;
  }

 private:
  struct State {
    std::mutex mutex;
    GenerationReactor* reactor = nullptr;
    std::shared_ptr<Generation> generation;
    std::deque<v1::EvaluateSourceEvent> queue;
    v1::EvaluateSourceEvent current;
    bool writing = false;
    bool finish_called = false;
    std::optional<grpc::Status> status;
  };
  static void pump(State& state) {
    if (state.writing || state.finish_called || !state.reactor) return;
    if (!state.queue.empty()) {
      state.current = std::move(state.queue.front());
      state.queue.pop_front();
      state.writing = true;
      state.reactor->StartWrite(&state.current);
      return;
    }
    if (state.status) {
      state.finish_called = true;
      state.reactor->Finish(*state.status);
    }
  }
  std::shared_ptr<State> state_;
  CountedCall counted_;  // until OnDone deletes this
};

EvolutionService::EvolutionService(EvolutionServiceParts parts) : parts_(std::move(parts)) {}

Result<std::unique_ptr<EvolutionService>> EvolutionService::create(EvolutionServiceParts parts) {
  auto store = CandidateStore::open(parts.store_path);
  if (!store) return store.error();
  std::unique_ptr<EvolutionService> service(new EvolutionService(std::move(parts)));
  service->store_ = std::move(store).value();
  const auto worker = service->parts_.compile_worker.empty() ? default_compile_worker()
                                                             : service->parts_.compile_worker;
  service->sandbox_ = std::make_unique<CompileSandbox>(worker, service->parts_.limits.compile,
                                                       service->parts_.limits.compile_workers);
  return service;
}

EvolutionService::~EvolutionService() {
  shutdown();
  std::unique_lock lock(threads_mutex_);
  threads_idle_.wait(lock, [this] { return threads_ == 0; });
}

void EvolutionService::shutdown() {
  {
    std::lock_guard lock(threads_mutex_);
    stopping_ = true;
  }
  if (sandbox_) sandbox_->shutdown();
}

bool EvolutionService::spawn(std::function<void()> task) {
  std::lock_guard lock(threads_mutex_);
  if (stopping_) return false;
  ++threads_;
  std::thread([this, task = std::move(task)]() mutable {
    task();
    task = nullptr;
    std::lock_guard lock(threads_mutex_);
    --threads_;
    threads_idle_.notify_all();
  }).detach();
  return true;
}

Result<auth::Identity> EvolutionService::authorize(const grpc::CallbackServerContext* context,
                                                   auth::Role needed, std::string_view rpc) const {
  if (!parts_.auth) return auth::Identity{std::string(auth::kAnonymous), auth::Role::admin};
  std::string_view header;
  const auto& metadata = context->client_metadata();
  if (auto it = metadata.find("authorization"); it != metadata.end())
    header = std::string_view(it->second.data(), it->second.size());
  auto who = parts_.auth->authenticate(header);
  if (!who) {
    spdlog::info("refused {} from {}: {}", rpc, context->peer(), who.error().message);
    return who.error();
  }
  if (!who->may(needed))
    return make_error(ErrorCode::permission_denied,
                      "needs role " + std::string(auth::role_name(needed)) + "; client '" +
                          who->client + "' has role " + std::string(auth::role_name(who->role)));
  return who;
}

namespace {

// The run-time shape and class of a Problem message, through the same
// validation as Compile (each failure named under `field`).
Result<rpc::CompileRequest> parse_shape(const std::string& template_id, const v1::Problem& problem,
                                        const std::string& arch, const std::string& field,
                                        const v1::TileConfig* config = nullptr) {
  v1::KernelRequest request;
  request.set_template_id(template_id);
  *request.mutable_problem() = problem;
  request.set_arch(arch);
  if (config) *request.mutable_config() = *config;
  auto parsed = rpc::parse_kernel_request(request, arch);
  if (!parsed) {
    Error error = parsed.error();
    std::string message = error.message;
    if (message.rfind("problem.", 0) == 0) message = message.substr(8);
    error.message = field + "." + message;
    return error;
  }
  return parsed;
}


// The request that compiles a submitted source in the sandbox: the source
// as `candidate.cu` with the registry's files as its only headers.
v1::SourceCompileRequest source_compile_request(const std::string& source,
                                                const std::string& name_expression,
                                                const std::string& arch,
                                                const TemplateRegistry& templates) {
  v1::SourceCompileRequest request;
  request.set_source(source);
  request.set_program_name("candidate.cu");
  for (const auto& [path, contents] : templates.sources()) {
    request.add_header_names(path);
    request.add_header_sources(contents);
  }
  request.add_name_expressions(name_expression);
  for (auto& option : source_options(arch)) request.add_options(option);
  return request;
}

// The first shape cut to 2 heads, 128 query rows and keys: compute-sanitizer's.
RuntimeShape sanitizer_shape(const RuntimeShape& shape) {
  RuntimeShape small = shape;
  small.batch = 1;
  small.heads = std::min<int64_t>(small.heads, 2);
  small.kv_heads = small.kv_heads == 0 ? 0 : std::min<int64_t>(small.kv_heads, small.heads);
  if (small.kv_heads != 0 && small.heads % small.kv_heads != 0) small.kv_heads = 0;
  small.seq_q = std::min<int64_t>(small.seq_q, 128);
  small.seq_k = std::min<int64_t>(small.effective_seq_k(), 128);
  return small;
}

// Counts one candidate's verdict in the generation's summary (the best
// timed valid one named).
void count_verdict(const Candidate& c, v1::GenerationSummary& summary) {
  summary.set_candidates(summary.candidates() + 1);
  if (c.compiled) summary.set_compiled(summary.compiled() + 1);
  switch (c.verdict.status()) {
    case v1::CANDIDATE_STATUS_VALID:
      summary.set_valid(summary.valid() + 1);
      if (c.median_us > 0 && (summary.best_median_us() == 0 || c.median_us < summary.best_median_us())) {
        summary.set_best_median_us(c.median_us);
        summary.set_best_candidate_id(c.stored.id());
        summary.set_best_speedup_vs_served(c.verdict.timing().speedup_vs_served());
      }
      break;
    case v1::CANDIDATE_STATUS_WRONG:
      summary.set_wrong(summary.wrong() + 1);
      break;
    case v1::CANDIDATE_STATUS_FAILED:
    case v1::CANDIDATE_STATUS_COMPILE_FAILED:
    case v1::CANDIDATE_STATUS_REFUSED:
      summary.set_failed(summary.failed() + 1);
      break;
    default:
      break;
  }
}

// A call refused before its stream starts: finished at once with the error.
grpc::ServerWriteReactor<v1::EvaluateSourceEvent>* refused(const Error& error) {
  class Refused final : public grpc::ServerWriteReactor<v1::EvaluateSourceEvent> {
   public:
    explicit Refused(const grpc::Status& status) { Finish(bounded_status(status)); }
    void OnDone() override { delete this; }
  };
  return new Refused(to_grpc_status(error));
}

}  // namespace

grpc::ServerWriteReactor<v1::EvaluateSourceEvent>* EvolutionService::EvaluateSource(
    grpc::CallbackServerContext* context, const v1::EvaluateSourceRequest* request) {
  CountedCall counted(streams_);  // checking and storing the request take a while
  auto who = authorize(context, auth::Role::tune, "EvaluateSource");
  if (!who) return refused(who.error());

  auto generation = std::make_shared<Generation>();
  Generation& g = *generation;
  g.service = this;
  g.who = *who;
  g.template_id = request->template_id().empty() ? std::string(kAttentionTemplateId)
                                                 : request->template_id();
  g.arch = request->arch().empty() ? parts_.default_arch : request->arch();
  g.generation = request->generation();
  g.options = request->options();
  if (Status s = g.check_request(*request); !s) return refused(s.error());
  if (Status s = g.parse_shapes(*request); !s) return refused(s.error());
  if (Status s = g.parse_candidates(*request); !s) return refused(s.error());
  if (Status s = g.check_lineage(); !s) return refused(s.error());
  if (Status s = g.admit(); !s) return refused(s.error());
  if (Status s = g.store_rows(); !s) return refused(s.error());

  const size_t count = g.candidates.size();
  auto* reactor = new GenerationReactor(generation, std::move(counted));
  std::shared_ptr<void> handle = reactor->handle();
  g.emit = [handle](v1::EvaluateSourceEvent event) {
    GenerationReactor::push(handle, std::move(event));
  };
  const bool started = spawn([generation, handle, this, count] {
    generation->run();
    pending_candidates_.fetch_sub(count);
    GenerationReactor::end(handle, grpc::Status::OK);
  });
  if (!started) {
    g.release_admission();
    GenerationReactor::end(handle,
                           grpc::Status(grpc::StatusCode::UNAVAILABLE, "the daemon is shutting down"));
  }
  return reactor;
}

Status EvolutionService::Generation::check_request(const v1::EvaluateSourceRequest& request) {
  const EvolveLimits& limits = service->parts_.limits;
  const TemplateInfo* info = find_template(template_id);
  if (!info) return invalid("template_id: unknown template " + template_id);
  if (info->abi_version != 1)
    return invalid("template_id: " + template_id + " has ABI " +
                   std::to_string(info->abi_version) +
                   "; EvaluateSource takes sources of the AttentionParams ABI (1: attention_fwd)");
  if (request.candidates_size() == 0) return invalid("candidates: at least one is needed");
  if (static_cast<size_t>(request.candidates_size()) > limits.max_candidates)
    return invalid("candidates: " + std::to_string(request.candidates_size()) +
                   " exceeds the limit of " + std::to_string(limits.max_candidates) +
                   " per call (evolve.max_candidates)");
  if (static_cast<size_t>(request.shapes_size()) > limits.max_shapes)
    return invalid("shapes: " + std::to_string(request.shapes_size()) +
                   " exceeds the limit of " + std::to_string(limits.max_shapes) +
                   " per call (evolve.max_shapes)");
  const int budget = options.gpu_time_budget_ms();
  if (budget < 0) return invalid("options.gpu_time_budget_ms: must be >= 0");
  if (budget > limits.max_gpu_time_budget_ms)
    return invalid("options.gpu_time_budget_ms: " + std::to_string(budget) +
                   " exceeds the limit of " + std::to_string(limits.max_gpu_time_budget_ms) +
                   " ms of GPU time per generation (evolve.max_gpu_time_budget_ms)");
  gpu_budget = std::chrono::milliseconds(budget > 0 ? budget : limits.default_gpu_time_budget_ms);
  if (!(options.rel_tolerance() >= 0 && options.rel_tolerance() < 1))
    return invalid("options.rel_tolerance: must be in [0, 1)");
  const auto& timing = options.timing();
  if (timing.warmup() < 0 || timing.repetitions() < 0 || timing.target_loop_ms() < 0)
    return invalid("options.timing: warmup, repetitions and target_loop_ms must be >= 0");
  if (!v1::ValidationDepth_IsValid(options.depth()))
    return invalid("options.depth: unknown validation depth");
  return ok_status();
}

Status EvolutionService::Generation::parse_shapes(const v1::EvaluateSourceRequest& request) {
  const EvolveLimits& limits = service->parts_.limits;
  auto base = parse_shape(template_id, request.problem(), arch, "problem");
  if (!base) return base.error();
  problem = base->spec.problem;
  std::vector<v1::Problem> requested(request.shapes().begin(), request.shapes().end());
  if (requested.empty()) requested.push_back(request.problem());
  for (size_t i = 0; i < requested.size(); ++i) {
    v1::Problem shape = requested[i];
    const std::string field = "shapes[" + std::to_string(i) + "]";
    if ((shape.dtype() != v1::DTYPE_UNSPECIFIED && shape.dtype() != request.problem().dtype()) ||
        (shape.head_dim() != 0 && shape.head_dim() != request.problem().head_dim()) ||
        (shape.causal() && !request.problem().causal()))
      return invalid(field + ": dtype, head_dim and causal must be unset or problem's");
    shape.set_dtype(request.problem().dtype());
    shape.set_head_dim(request.problem().head_dim());
    shape.set_causal(request.problem().causal());
    auto parsed = parse_shape(template_id, shape, arch, field);
    if (!parsed) return parsed.error();
    const RuntimeShape& s = parsed->shape;
    const int64_t elements = s.batch * std::max(s.heads, s.effective_kv_heads()) *
                             std::max(s.seq_q, s.effective_seq_k()) * problem.head_dim;
    if (elements > limits.max_shape_elements)
      return invalid(field + ": " + std::to_string(elements) +
                     " elements per tensor exceeds the limit of " +
                     std::to_string(limits.max_shape_elements) + " (evolve.max_shape_elements)");
    shapes.push_back(s);
    layouts.push_back(parsed->layout);
  }
  return ok_status();
}

Status EvolutionService::Generation::parse_candidates(const v1::EvaluateSourceRequest& request) {
  const EvolveLimits& limits = service->parts_.limits;
  std::set<std::string, std::less<>> allowed;
  for (const auto& [path, contents] : service->parts_.templates->sources()) allowed.insert(path);
  std::set<std::string> names;
  const std::set<std::string> request_tags(request.tags().begin(), request.tags().end());
  for (int i = 0; i < request.candidates_size(); ++i) {
    const v1::SourceCandidate& in = request.candidates(i);
    const std::string field = "candidates[" + std::to_string(i) + "]";
    if (in.name().empty() || in.name().size() > 128)
      return invalid(field + ".name: must be 1 to 128 characters");
    if (!names.insert(in.name()).second)
      return invalid(field + ".name: '" + in.name() + "' appears twice in the generation");
    if (in.source().empty()) return invalid(field + ".source: empty");
    if (in.source().size() > limits.max_source_bytes)
      return invalid(field + ".source: " + std::to_string(in.source().size()) +
                     " bytes exceeds the limit of " + std::to_string(limits.max_source_bytes) +
                     " bytes per source (evolve.max_source_bytes)");
    if (auto error = include_error(in.source(), allowed))
      return invalid(field + ".source: " + *error);
    if (in.tags_size() > 32) return invalid(field + ".tags: at most 32");
    Candidate c;
    c.stored.set_owner(who.client);
    c.stored.set_generation(generation);
    c.stored.set_name(in.name());
    c.stored.set_source(in.source());
    c.stored.set_template_id(template_id);
    c.stored.set_arch(arch);
    *c.stored.mutable_problem() = request.problem();
    *c.stored.mutable_parent_ids() = in.parent_ids();
    std::set<std::string> tags(request_tags);
    tags.insert(in.tags().begin(), in.tags().end());
    for (const auto& tag : tags) c.stored.add_tags(tag);
    if (Status s = resolve_launch(c, in, field, request); !s) return s;
    c.stored.set_name_expression(c.name_expression);
    *c.stored.mutable_launch() = c.launch;
    *c.stored.mutable_config() = c.config;
    candidates.push_back(std::move(c));
  }
  return ok_status();
}

// The candidate's kernel and launch: its own name expression and launch
// (checked against the arch), or the family's for its config.
Status EvolutionService::Generation::resolve_launch(Candidate& c, const v1::SourceCandidate& in,
                                                    const std::string& field,
                                                    const v1::EvaluateSourceRequest& request) {
  if (!in.name_expression().empty()) {
    const auto target = find_arch(arch);
    c.name_expression = in.name_expression();
    c.launch = in.launch();
    const auto& l = c.launch;
    if (l.block_m() < 1 || l.block_m() > 1024)
      return invalid(field + ".launch.block_m: " + std::to_string(l.block_m()) +
                     " must be in [1, 1024]");
    if (l.threads() < 32 || l.threads() > 1024 || l.threads() % 32 != 0)
      return invalid(field + ".launch.threads: " + std::to_string(l.threads()) +
                     " must be a multiple of 32 in [32, 1024]");
    if (static_cast<int64_t>(l.dynamic_smem_bytes()) > target->max_dynamic_smem_bytes)
      return invalid(field + ".launch.dynamic_smem_bytes: " +
                     std::to_string(l.dynamic_smem_bytes()) + " exceeds " + arch + "'s " +
                     std::to_string(target->max_dynamic_smem_bytes));
    c.config.set_block_m(l.block_m());
    if (in.has_config()) c.config = in.config(), c.config.set_block_m(l.block_m());
    return ok_status();
  }
  if (!in.has_config())
    return invalid(field + ": name_expression (with launch) or config is needed");
  v1::Problem shape0 = request.problem();
  auto parsed = parse_shape(template_id, shape0, arch, field, &in.config());
  if (!parsed) {
    Error error = parsed.error();
    return invalid(error.message);
  }
  const TemplateInfo& family = template_info(template_id);
  c.name_expression = family.name_expression(problem, parsed->spec.config);
  const LaunchGeometry geometry =
      family.launch_geometry(parsed->spec.config, problem, shapes.front());
  c.launch.set_block_m(parsed->spec.config.block_m);
  c.launch.set_threads(static_cast<int>(geometry.block.x));
  c.launch.set_dynamic_smem_bytes(geometry.dynamic_smem_bytes);
  c.config = in.config();
  c.config.set_block_m(static_cast<int32_t>(parsed->spec.config.block_m));
  c.config.set_block_n(static_cast<int32_t>(parsed->spec.config.block_n));
  c.config.set_warps(static_cast<int32_t>(parsed->spec.config.warps));
  c.config.set_stages(static_cast<int32_t>(parsed->spec.config.stages));
  return ok_status();
}

Status EvolutionService::Generation::check_lineage() {
  for (size_t i = 0; i < candidates.size(); ++i)
    for (int64_t parent : candidates[i].stored.parent_ids()) {
      auto found = service->store_->get(parent);
      if (!found) return found.error();
      if (!*found || ((*found)->owner() != who.client && who.role != auth::Role::admin))
        return invalid("candidates[" + std::to_string(i) + "].parent_ids: no candidate " +
                       std::to_string(parent) + " of client '" + who.client + "'");
    }
  const std::string& name = options.baseline();
  if (name.empty()) return ok_status();
  if (name[0] == '#') return add_stored_baseline(name);
  for (size_t i = 0; i < candidates.size(); ++i)
    if (candidates[i].stored.name() == name) baseline = static_cast<int>(i);
  if (baseline < 0)
    return invalid("options.baseline: no candidate named '" + name +
                   "' in this generation (a stored one is '#<id>')");
  return ok_status();
}

// A stored baseline ("#<id>") is evaluated again beside the generation,
// hidden: neither streamed nor stored.
Status EvolutionService::Generation::add_stored_baseline(const std::string& name) {
  char* end = nullptr;
  const long long id = std::strtoll(name.c_str() + 1, &end, 10);
  auto found = (end && *end == '\0' && id > 0) ? service->store_->get(id)
                                               : Result<std::optional<v1::StoredCandidate>>(
                                                     std::optional<v1::StoredCandidate>());
  if (!found) return found.error();
  if (!*found || ((*found)->owner() != who.client && who.role != auth::Role::admin))
    return invalid("options.baseline: no candidate " + name + " of client '" + who.client + "'");
  Candidate hidden;
  hidden.hidden = true;
  hidden.stored = **found;
  hidden.name_expression = hidden.stored.name_expression();
  hidden.launch = hidden.stored.launch();
  hidden.config = hidden.stored.config();
  candidates.push_back(std::move(hidden));
  baseline = static_cast<int>(candidates.size()) - 1;
  return ok_status();
}

Status EvolutionService::Generation::admit() {
  const EvolveLimits& limits = service->parts_.limits;
  const size_t count = candidates.size();
  const size_t before = service->pending_candidates_.fetch_add(count);
  if (before + count > limits.max_pending_candidates) {
    service->pending_candidates_.fetch_sub(count);
    return make_error(ErrorCode::resource_exhausted,
                      "compile queue full: " + std::to_string(before) +
                          " candidates pending, " + std::to_string(count) +
                          " more exceed the limit of " +
                          std::to_string(limits.max_pending_candidates) +
                          " (evolve.max_pending_candidates)");
  }
  if (service->parts_.quotas) {
    std::optional<double> left;
    if (Status quota = service->parts_.quotas->admit_tune_job(who.client, left); !quota) {
      service->pending_candidates_.fetch_sub(count);
      return quota.error();
    }
    quota_taken = true;
    if (left)
      gpu_budget = std::min(gpu_budget, std::chrono::milliseconds(std::max<int64_t>(
                                            1, static_cast<int64_t>(*left * 1000.0))));
  }
  return ok_status();
}

void EvolutionService::Generation::release_admission() {
  service->pending_candidates_.fetch_sub(candidates.size());
  if (quota_taken) service->parts_.quotas->end_tune_job(who.client, 0);
}

Status EvolutionService::Generation::store_rows() {
  std::vector<v1::StoredCandidate> rows;
  for (auto& c : candidates)
    if (!c.hidden) {
      c.stored.mutable_verdict()->set_status(v1::CANDIDATE_STATUS_PENDING);
      rows.push_back(c.stored);
    }
  auto ids = service->store_->insert(rows);
  if (!ids) {
    release_admission();
    return ids.error();
  }
  size_t next = 0;
  for (auto& c : candidates)
    if (!c.hidden) {
      c.stored.set_id((*ids)[next]);
      c.stored.set_source_sha256(rows[next].source_sha256());
      c.stored.set_created_unix_ms(rows[next].created_unix_ms());
      ++next;
      c.verdict.set_candidate_id(c.stored.id());
      c.verdict.set_name(c.stored.name());
      c.verdict.set_source_sha256(c.stored.source_sha256());
      c.verdict.set_status(v1::CANDIDATE_STATUS_PENDING);
    }
  return ok_status();
}

void EvolutionService::Generation::publish(Candidate& c, const std::string& stage, bool final) {
  if (c.hidden) return;
  c.verdict.set_stage(stage);
  c.verdict.set_final(final);
  if (Status stored = service->store_->set_verdict(c.stored.id(), c.verdict); !stored)
    spdlog::warn("candidate {}: verdict not stored: {}", c.stored.id(), stored.error().message);
  v1::EvaluateSourceEvent event;
  *event.mutable_verdict() = c.verdict;
  emit(std::move(event));
}

void EvolutionService::Generation::compile(Candidate& c) {
  const v1::SourceCompileRequest request = source_compile_request(
      c.stored.source(), c.name_expression, arch, *service->parts_.templates);
  v1::CompileVerdict* verdict = c.verdict.mutable_compile();
  auto answer = service->sandbox_->compile(request);
  if (!answer) {
    verdict->set_ok(false);
    verdict->set_error(answer.error().message);
    c.verdict.set_status(v1::CANDIDATE_STATUS_COMPILE_FAILED);
    c.verdict.set_detail(answer.error().message);
    return;
  }
  verdict->set_compile_ms(answer->compile_ms());
  verdict->set_log(answer->log().substr(0, 65536));
  if (!answer->ok()) {
    verdict->set_ok(false);
    // NVRTC's front end reports running out of the worker's address space
    // as a compile error: say which limit that was.
    if (answer->log().find("out of memory") != std::string::npos)
      answer->set_error(answer->error() + "; NVRTC ran out of memory: the compile worker's " +
                        std::to_string(service->parts_.limits.compile.memory_mb) +
                        " MiB address-space limit (evolve.compile.memory_mb)");
    verdict->set_error(answer->error());
    c.verdict.set_status(v1::CANDIDATE_STATUS_COMPILE_FAILED);
    c.verdict.set_detail(answer->error());
    return;
  }
  c.compiled = true;
  c.lowered_name = answer->lowered_names(0);
  c.cubin = answer->cubin();
  c.resources = parse_ptxas_report(answer->log());
  verdict->set_ok(true);
  verdict->set_lowered_name(c.lowered_name);
  verdict->set_cubin_size(c.cubin.size());
  verdict->set_cubin_sha256(sha256_hex(c.cubin));
  *c.verdict.mutable_resources() = resources_message(c.resources);
  c.verdict.set_status(v1::CANDIDATE_STATUS_COMPILED);
  const auto limits = find_arch(arch);
  const int64_t smem = int64_t{c.resources.static_smem_bytes} + c.launch.dynamic_smem_bytes();
  if (c.resources.spill_store_bytes > 0 || c.resources.spill_load_bytes > 0 ||
      c.resources.stack_frame_bytes > 0) {
    c.verdict.set_status(v1::CANDIDATE_STATUS_REFUSED);
    c.verdict.set_detail("no GPU time: " + std::to_string(c.resources.spill_store_bytes) +
                         " B spill stores, " + std::to_string(c.resources.spill_load_bytes) +
                         " B spill loads, " + std::to_string(c.resources.stack_frame_bytes) +
                         " B stack (the validation matrix needs 0 of each)");
  } else if (limits && smem > limits->max_dynamic_smem_bytes) {
    c.verdict.set_status(v1::CANDIDATE_STATUS_REFUSED);
    c.verdict.set_detail("no GPU time: " + std::to_string(smem) + " B shared memory exceeds " +
                         arch + "'s " + std::to_string(limits->max_dynamic_smem_bytes));
  }
}

// What the daemon serves for the timed shape's bucket, timed on a worker.
std::optional<double> EvolutionService::Generation::served_median(std::string& served,
                                                                  double& gpu_ms) {
  auto& parts = service->parts_;
  const TemplateInfo& family = template_info(template_id);
  KernelSpec spec;
  spec.template_id = template_id;
  spec.problem = problem;
  spec.arch = arch;
  spec.config = family.default_config(problem);
  served = "family default";
  const auto infos = parts.workers->workers();
  if (parts.tuning_db && !infos.empty()) {
    TuningScope scope;
    scope.template_id = template_id;
    scope.problem = problem;
    scope.bucket = bucket_of(shapes.front(), layout_of(layouts.front()));
    scope.device_name = infos.front().device();
    scope.arch = arch;
    if (auto best = parts.tuning_db->best_for(scope); best && *best) {
      spec.config = family.resolve((*best)->config, problem);
      served = "tuned best";
    }
  }
  auto lookup = parts.cache->get_or_compile_sync(spec, shapes.front());
  if (!lookup) {
    served += " (did not compile: " + lookup.error().message + ")";
    return std::nullopt;
  }
  v1::KernelHandle handle;
  service::fill_handle(*lookup->kernel, lookup->tier, shapes.front(), layouts.front(), false, &handle);
  served += " " + lookup->kernel->key.substr(0, 12);
  v1::EvaluateRequest request;
  service::fill_eval_kernel(handle, request.mutable_kernel());
  *request.mutable_problem() = handle.problem();
  request.set_time(true);
  *request.mutable_timing() = options.timing();
  const auto start = Clock::now();
  auto timed = parts.workers->evaluate(request, Clock::now() + std::chrono::minutes(5));
  gpu_ms += ms_since(start);
  if (!timed || timed->timing().median_us() <= 0) return std::nullopt;
  return timed->timing().median_us();
}

void EvolutionService::Generation::evaluate(Candidate& c, Clock::time_point budget_end,
                                            double& gpu_ms, bool& budget_spent) {
  v1::EvalKernel kernel;
  kernel.set_key("candidate-" + std::to_string(c.stored.id()) + "-" +
                 c.stored.source_sha256().substr(0, 16));
  kernel.set_lowered_name(c.lowered_name);
  kernel.set_cubin(c.cubin);
  *kernel.mutable_config() = c.config;
  kernel.set_block_threads(static_cast<uint32_t>(c.launch.threads()));
  kernel.set_dynamic_smem_bytes(c.launch.dynamic_smem_bytes());
  kernel.set_abi_version(1);
  *kernel.mutable_resources() = resources_message(c.resources);

  std::string first_problem;
  const std::optional<bool> all_passed =
      validate_shapes(c, kernel, budget_end, gpu_ms, budget_spent, first_problem);
  if (!all_passed) return;
  // Only a correct kernel is timed (DESIGN §6), on the first shape.
  if (*all_passed && !time_correct(c, kernel, budget_end, gpu_ms, budget_spent)) return;
  c.verdict.set_status(*all_passed ? v1::CANDIDATE_STATUS_VALID : v1::CANDIDATE_STATUS_WRONG);
  c.verdict.set_detail(*all_passed ? "correct on " + std::to_string(shapes.size()) + " shape(s)" +
                                        (c.median_us > 0 ? std::string() : "; not timed: the generation's GPU budget is spent")
                                   : first_problem);
  if (options.sanitizer()) sanitize(c, kernel, budget_end, gpu_ms, budget_spent);
}

Result<v1::EvaluateResponse> EvolutionService::Generation::on_worker(
    Candidate& c, const v1::EvaluateRequest& request, Clock::time_point budget_end,
    double& gpu_ms, eval::EvaluateCall* call) {
  auto& workers = *service->parts_.workers;
  const auto start = Clock::now();
  auto result = call ? workers.evaluate(request, budget_end, *call)
                     : workers.evaluate(request, budget_end);
  const double used = ms_since(start);
  gpu_ms += used;
  c.verdict.set_gpu_ms(c.verdict.gpu_ms() + used);
  return result;
}

// Validates the kernel on every shape in turn: whether every one passed
// (`first_problem` names the first that did not), or nullopt when the
// verdict is already final (the budget ran out, or an evaluation failed).
std::optional<bool> EvolutionService::Generation::validate_shapes(
    Candidate& c, const v1::EvalKernel& kernel, Clock::time_point budget_end, double& gpu_ms,
    bool& budget_spent, std::string& first_problem) {
  v1::ValidationOptions validation;
  if (options.depth() != v1::VALIDATION_DEPTH_FULL) {
    validation.set_determinism_runs(10);
    validation.set_stability_trials(1);
    validation.set_reference_rows(64);
  }
  validation.set_rel_tolerance(options.rel_tolerance());
  bool all_passed = true;
  for (size_t i = 0; i < shapes.size(); ++i) {
    if (Clock::now() >= budget_end) {
      budget_spent = true;
      c.verdict.set_status(v1::CANDIDATE_STATUS_COMPILED);
      c.verdict.set_detail("not evaluated: the generation's GPU budget of " +
                           std::to_string(gpu_budget.count()) + " ms is spent");
      return std::nullopt;
    }
    v1::EvaluateRequest request;
    *request.mutable_kernel() = kernel;
    service::fill_problem(problem, shapes[i], layouts[i], request.mutable_problem());
    request.set_validate(true);
    *request.mutable_validation() = validation;
    eval::EvaluateCall call;
    auto result = on_worker(c, request, budget_end, gpu_ms, &call);
    v1::ShapeVerdict* shape = c.verdict.add_correctness();
    *shape->mutable_shape() = request.problem();
    shape->set_first_wrong_batch(-1);
    shape->set_first_wrong_head(-1);
    shape->set_first_wrong_row(-1);
    shape->set_first_wrong_col(-1);
    if (!result) {
      const Error& error = result.error();
      shape->set_passed(false);
      shape->set_detail(error.message);
      c.verdict.set_status(v1::CANDIDATE_STATUS_FAILED);
      c.verdict.set_detail((call.dispatched ? "the kernel failed on a GPU worker: "
                                            : "not evaluated: ") +
                           error.message);
      return std::nullopt;
    }
    const v1::ValidationRecord& record = result->validation();
    shape->set_passed(record.passed());
    shape->set_rel_error(record.rel_error());
    shape->set_max_abs_error(record.max_abs_error());
    shape->set_detail(record.detail());
    if (record.has_first_wrong()) {
      shape->set_first_wrong_batch(record.first_wrong().batch());
      shape->set_first_wrong_head(record.first_wrong().head());
      shape->set_first_wrong_row(record.first_wrong().row());
      shape->set_first_wrong_col(record.first_wrong().col());
    }
    if (i == 0) {
      auto* determinism = c.verdict.mutable_determinism();
      determinism->set_evaluated(record.determinism_runs() > 0);
      determinism->set_deterministic(record.deterministic());
      determinism->set_runs(record.determinism_runs());
      determinism->set_hash(record.determinism_hash());
    }
    if (!record.passed()) {
      all_passed = false;
      if (first_problem.empty()) first_problem = "shape " + std::to_string(i) + ": " + record.detail();
    }
  }
  return all_passed;
}

// Times a correct kernel on the first shape, unless the budget is spent;
// false when the timing failed (the verdict is final then).
bool EvolutionService::Generation::time_correct(Candidate& c, const v1::EvalKernel& kernel,
                                                Clock::time_point budget_end, double& gpu_ms,
                                                bool& budget_spent) {
  if (Clock::now() >= budget_end) {
    budget_spent = true;
    return true;
  }
  v1::EvaluateRequest request;
  *request.mutable_kernel() = kernel;
  service::fill_problem(problem, shapes[0], layouts[0], request.mutable_problem());
  request.set_time(true);
  *request.mutable_timing() = options.timing();
  eval::EvaluateCall call;
  auto result = on_worker(c, request, budget_end, gpu_ms, &call);
  if (!result) {
    c.verdict.set_status(v1::CANDIDATE_STATUS_FAILED);
    c.verdict.set_detail("correct, but failed while timed: " + result.error().message);
    return false;
  }
  auto* timing = c.verdict.mutable_timing();
  timing->set_median_us(result->timing().median_us());
  timing->set_p10_us(result->timing().p10_us());
  timing->set_p90_us(result->timing().p90_us());
  timing->set_tflops(result->timing().tflops());
  timing->set_bucket(canonical_bucket(bucket_of(shapes[0], layout_of(layouts[0]))));
  c.median_us = result->timing().median_us();
  return true;
}

// memcheck and racecheck on one small shape of the class: the first shape
// cut to 2 heads, 128 query rows and keys; one launch checked.
void EvolutionService::Generation::sanitize(Candidate& c, const v1::EvalKernel& kernel,
                                            Clock::time_point budget_end, double& gpu_ms,
                                            bool& budget_spent) {
  auto* sanitizer = c.verdict.mutable_sanitizer();
  sanitizer->set_tools("memcheck,racecheck");
  const RuntimeShape small = sanitizer_shape(shapes[0]);
  bool clean = true;
  std::string report;
  for (const char* tool : {"memcheck", "racecheck"}) {
    if (Clock::now() >= budget_end) {
      budget_spent = true;
      report += std::string(tool) + ": not run, the generation's GPU budget is spent\n";
      clean = false;
      break;
    }
    v1::EvaluateRequest request;
    *request.mutable_kernel() = kernel;
    service::fill_problem(problem, small, layouts[0], request.mutable_problem());
    request.set_validate(true);
    request.mutable_validation()->set_determinism_runs(1);
    request.mutable_validation()->set_stability_trials(1);
    request.mutable_validation()->set_reference_rows(16);
    request.mutable_validation()->set_rel_tolerance(options.rel_tolerance());
    request.set_sanitizer_tool(tool);
    auto result = on_worker(c, request, budget_end, gpu_ms, nullptr);
    if (!result) {
      clean = false;
      report += std::string(tool) + ": " + result.error().message + "\n";
      continue;
    }
    if (!result->sanitizer_clean()) {
      clean = false;
      report += std::string(tool) + ":\n" + result->sanitizer_report();
    }
  }
  sanitizer->set_evaluated(true);
  sanitizer->set_clean(clean);
  sanitizer->set_report(report.substr(0, 16384));
  if (!clean) {
    c.verdict.set_status(v1::CANDIDATE_STATUS_FAILED);
    const std::string first = report.substr(0, report.find('\n', report.find('\n') + 1));
    c.verdict.set_detail("compute-sanitizer found errors: " + first);
  }
}

void EvolutionService::Generation::run() {
  auto& parts = service->parts_;
  const auto started_at = Clock::now();
  const bool gpu = parts.workers != nullptr && evaluated_on_gpu(options.depth());
  announce();
  // Compiles in parallel (the sandbox bounds the processes daemon-wide); the
  // GPU side takes candidates as they compile, the baseline first.
  CompiledQueue queue;
  std::vector<std::thread> compilers;
  const size_t threads = std::min(candidates.size(), std::max<size_t>(1, parts.limits.compile_workers));
  for (size_t i = 0; i < threads; ++i) compilers.emplace_back([&] { compile_all(queue, gpu); });
  GpuAccount account;
  if (gpu) evaluate_compiled(queue, account);
  for (auto& t : compilers) t.join();
  summarize(account, gpu, started_at);
}

void EvolutionService::Generation::announce() {
  auto& parts = service->parts_;
  v1::EvaluateSourceEvent event;
  auto* started = event.mutable_started();
  started->set_generation(generation);
  for (const auto& c : candidates)
    if (!c.hidden) started->add_candidate_ids(c.stored.id());
  started->set_bucket(canonical_bucket(bucket_of(shapes.front(), layout_of(layouts.front()))));
  started->set_gpu_available(parts.workers != nullptr);
  if (!parts.workers) started->set_gpu_unavailable_reason(parts.workers_unavailable_reason);
  emit(std::move(event));
}

// One compile thread: takes the next candidate until none is left; those
// that go on to a GPU join the queue, the others' verdicts are final.
void EvolutionService::Generation::compile_all(CompiledQueue& queue, bool gpu) {
  auto& parts = service->parts_;
  for (;;) {
    size_t index;
    {
      std::lock_guard lock(queue.mutex);
      if (queue.next >= candidates.size()) return;
      index = queue.next++;
    }
    Candidate& c = candidates[index];
    if (cancelled) {
      c.verdict.set_status(v1::CANDIDATE_STATUS_PENDING);
      c.verdict.set_detail("not compiled: the call was cancelled");
    } else {
      compile(c);
    }
    const bool goes_on = gpu && c.compiled && c.verdict.status() == v1::CANDIDATE_STATUS_COMPILED;
    if (!goes_on && c.verdict.status() == v1::CANDIDATE_STATUS_COMPILED && !parts.workers)
      c.verdict.set_detail("compiled; not evaluated: " + parts.workers_unavailable_reason);
    else if (!goes_on && c.verdict.status() == v1::CANDIDATE_STATUS_COMPILED)
      c.verdict.set_detail("compiled; not evaluated (validation depth COMPILE)");
    publish(c, "compile", !goes_on);
    std::lock_guard lock(queue.mutex);
    if (goes_on) queue.order.push_back(index);
    ++queue.done;
    queue.changed.notify_all();
  }
}

// The GPU side: the served kernel timed first, then the baseline, then the
// others in the order they compile.
void EvolutionService::Generation::evaluate_compiled(CompiledQueue& queue, GpuAccount& account) {
  const auto budget_end = Clock::now() + gpu_budget;
  if (auto median = served_median(account.served, account.gpu_ms)) account.served_us = *median;
  if (baseline >= 0) evaluate_baseline(queue, budget_end, account);
  for (;;) {
    size_t index;
    {
      std::unique_lock lock(queue.mutex);
      queue.changed.wait(lock, [&] { return !queue.order.empty() || queue.done == candidates.size(); });
      if (queue.order.empty()) break;
      index = queue.order.front();
      queue.order.pop_front();
    }
    Candidate& c = candidates[index];
    if (cancelled) {
      c.verdict.set_detail("compiled; not evaluated: the call was cancelled");
    } else {
      evaluate(c, budget_end, account.gpu_ms, account.budget_spent);
    }
    finish(c, account);
  }
}

// Waits for the baseline to compile (or every compile to end) and
// evaluates it first, so that the others' speedups have it.
void EvolutionService::Generation::evaluate_baseline(CompiledQueue& queue,
                                                     Clock::time_point budget_end,
                                                     GpuAccount& account) {
  const size_t index = static_cast<size_t>(baseline);
  std::unique_lock lock(queue.mutex);
  queue.changed.wait(lock, [&] {
    return std::find(queue.order.begin(), queue.order.end(), index) != queue.order.end() ||
           queue.done == candidates.size();
  });
  auto it = std::find(queue.order.begin(), queue.order.end(), index);
  if (it == queue.order.end()) return;
  queue.order.erase(it);
  lock.unlock();
  Candidate& b = candidates[index];
  if (!cancelled) evaluate(b, budget_end, account.gpu_ms, account.budget_spent);
  if (b.verdict.status() == v1::CANDIDATE_STATUS_VALID) account.baseline_us = b.median_us;
  finish(b, account);
}

// A timed candidate's speedups over the served kernel and the baseline;
// its final verdict published.
void EvolutionService::Generation::finish(Candidate& c, const GpuAccount& account) {
  if (c.median_us > 0) {
    auto* timing = c.verdict.mutable_timing();
    timing->set_served(account.served);
    timing->set_served_median_us(account.served_us);
    if (account.served_us > 0) timing->set_speedup_vs_served(account.served_us / c.median_us);
    if (account.baseline_us > 0) {
      timing->set_baseline_median_us(account.baseline_us);
      timing->set_speedup_vs_baseline(account.baseline_us / c.median_us);
    }
  }
  publish(c, "evaluation", true);
}

void EvolutionService::Generation::summarize(const GpuAccount& account, bool gpu,
                                             Clock::time_point started_at) {
  auto& parts = service->parts_;
  v1::EvaluateSourceEvent event;
  auto* summary = event.mutable_summary();
  summary->set_generation(generation);
  for (const auto& c : candidates)
    if (!c.hidden) count_verdict(c, *summary);
  summary->set_served_median_us(account.served_us);
  summary->set_wall_seconds(ms_since(started_at) / 1000.0);
  summary->set_gpu_seconds(account.gpu_ms / 1000.0);
  summary->set_gpu_budget_exhausted(account.budget_spent);
  if (!parts.workers)
    summary->set_note("compile verdicts only: " + parts.workers_unavailable_reason);
  else if (!gpu)
    summary->set_note("compile verdicts only (validation depth COMPILE)");
  if (quota_taken) parts.quotas->end_tune_job(who.client, account.gpu_ms / 1000.0);
  spdlog::info("EvaluateSource generation {} of '{}': {} candidates, {} compiled, {} valid in {:.1f} s",
               generation, who.client, summary->candidates(), summary->compiled(), summary->valid(),
               summary->wall_seconds());
  emit(std::move(event));
}

grpc::ServerUnaryReactor* EvolutionService::ListCandidates(grpc::CallbackServerContext* context,
                                                           const v1::ListCandidatesRequest* request,
                                                           v1::ListCandidatesResponse* response) {
  auto* reactor = context->DefaultReactor();
  const Status status = [&]() -> Status {
    auto who = authorize(context, auth::Role::read, "ListCandidates");
    if (!who) return who.error();
    CandidateStore::Query query;
    query.owner = who->client;
    if (!request->owner().empty() && request->owner() != who->client) {
      if (who->role != auth::Role::admin)
        return make_error(ErrorCode::permission_denied,
                          "owner: listing another client's candidates needs role admin");
      query.owner = request->owner();
    }
    if (request->has_generation()) query.generation = request->generation();
    query.tag = request->tag();
    if (request->page_size() < 0 || request->page_size() > 1000)
      return invalid("page_size: " + std::to_string(request->page_size()) + " must be in [0, 1000]");
    query.page_size = request->page_size() == 0 ? 100 : request->page_size();
    if (!request->page_token().empty()) {
      char* end = nullptr;
      const long long after = std::strtoll(request->page_token().c_str(), &end, 10);
      if (end == nullptr || *end != '\0' || after <= 0)
        return invalid("page_token: not a token ListCandidates returned");
      query.after_id = after;
    }
    query.include_source = request->include_source();
    auto page = store_->list(query);
    if (!page) return page.error();
    for (auto& c : page->candidates) *response->add_candidates() = std::move(c);
    if (page->next_after_id > 0) response->set_next_page_token(std::to_string(page->next_after_id));
    return ok_status();
  }();
  reactor->Finish(status ? grpc::Status::OK : bounded_status(to_grpc_status(status.error())));
  return reactor;
}

grpc::ServerUnaryReactor* EvolutionService::GetCandidate(grpc::CallbackServerContext* context,
                                                         const v1::GetCandidateRequest* request,
                                                         v1::StoredCandidate* response) {
  auto* reactor = context->DefaultReactor();
  const Status status = [&]() -> Status {
    auto who = authorize(context, auth::Role::read, "GetCandidate");
    if (!who) return who.error();
    auto found = store_->get(request->id());
    if (!found) return found.error();
    // Another client's candidate reads as absent: ids say nothing of others.
    if (!*found || ((*found)->owner() != who->client && who->role != auth::Role::admin))
      return make_error(ErrorCode::not_found, "no candidate " + std::to_string(request->id()) +
                                                  " of client '" + who->client + "'");
    *response = std::move(**found);
    return ok_status();
  }();
  reactor->Finish(status ? grpc::Status::OK : bounded_status(to_grpc_status(status.error())));
  return reactor;
}

namespace {

// Only a candidate that passed its evaluation and beats the served best of
// its bucket by more than its spread is promoted, and only by a daemon with
// evaluation workers (FAILED_PRECONDITION saying which is missing).
Status check_promotable(const v1::StoredCandidate& candidate, int64_t id,
                        const EvolutionServiceParts& parts) {
  const v1::CandidateVerdict& verdict = candidate.verdict();
  if (verdict.status() != v1::CANDIDATE_STATUS_VALID)
    return make_error(ErrorCode::failed_precondition,
                      "candidate " + std::to_string(id) + " is " +
                          v1::CandidateStatus_Name(verdict.status()) +
                          ", not CANDIDATE_STATUS_VALID: only a candidate that passed its "
                          "evaluation may be promoted (" + verdict.detail() + ")");
  const auto& timing = verdict.timing();
  const double spread = std::max(0.0, timing.p90_us() - timing.p10_us());
  if (timing.served_median_us() <= 0 ||
      timing.median_us() + spread >= timing.served_median_us())
    return make_error(ErrorCode::failed_precondition,
                      "candidate " + std::to_string(id) +
                          " does not beat the served best of its bucket by more than its "
                          "spread (median " + std::to_string(timing.median_us()) +
                          " us, served " + std::to_string(timing.served_median_us()) + " us)");
  if (!parts.workers)
    return make_error(ErrorCode::failed_precondition,
                      "promotion runs the full validation matrix on a GPU and the daemon has "
                      "no evaluation workers: " + parts.workers_unavailable_reason);
  return ok_status();
}

// The worker's kernel for a stored candidate compiled again.
v1::EvalKernel promoted_kernel(const v1::StoredCandidate& candidate,
                               const v1::SourceCompileResponse& compiled) {
  v1::EvalKernel kernel;
  kernel.set_key("candidate-" + std::to_string(candidate.id()) + "-" +
                 candidate.source_sha256().substr(0, 16));
  kernel.set_lowered_name(compiled.lowered_names(0));
  kernel.set_cubin(compiled.cubin());
  *kernel.mutable_config() = candidate.config();
  kernel.mutable_config()->set_block_m(candidate.launch().block_m());
  kernel.set_block_threads(static_cast<uint32_t>(candidate.launch().threads()));
  kernel.set_dynamic_smem_bytes(candidate.launch().dynamic_smem_bytes());
  kernel.set_abi_version(1);
  *kernel.mutable_resources() = resources_message(parse_ptxas_report(compiled.log()));
  return kernel;
}

// A promotion: the candidate compiled again and put through the full
// validation matrix on `shape`; recorded in the store and answered with the
// candidate.
Status promote(const EvolutionServiceParts& parts, CompileSandbox& sandbox, CandidateStore& store,
               v1::StoredCandidate& candidate, const rpc::CompileRequest& shape,
               const auth::Identity& admin, v1::PromoteCandidateResponse* response) {
  auto compiled = sandbox.compile(source_compile_request(
      candidate.source(), candidate.name_expression(), candidate.arch(), *parts.templates));
  if (!compiled) return compiled.error();
  if (!compiled->ok())
    return make_error(ErrorCode::failed_precondition,
                      "candidate no longer compiles: " + compiled->error(), compiled->log());
  v1::EvaluateRequest request;
  *request.mutable_kernel() = promoted_kernel(candidate, *compiled);
  service::fill_problem(shape.spec.problem, shape.shape, shape.layout, request.mutable_problem());
  request.set_validate(true);  // the whole matrix: every row, 100 launches, 10 trials
  auto evaluated = parts.workers->evaluate(request, Clock::now() + std::chrono::minutes(10));
  if (!evaluated) return evaluated.error();
  const v1::ValidationRecord& record = evaluated->validation();
  if (!record.passed())
    return make_error(ErrorCode::failed_precondition,
                      "candidate " + std::to_string(candidate.id()) +
                          " failed the full validation matrix: " + record.detail());
  v1::Promotion promotion;
  promotion.set_bucket(canonical_bucket(bucket_of(shape.shape, layout_of(shape.layout))));
  promotion.set_device(evaluated->device());
  promotion.set_arch(candidate.arch());
  *promotion.mutable_validation() = record;
  promotion.set_promoted_by(admin.client);
  promotion.set_promoted_unix_ms(std::chrono::duration_cast<std::chrono::milliseconds>(
                                     std::chrono::system_clock::now().time_since_epoch())
                                     .count());
  if (Status stored = store.add_promotion(candidate.id(), promotion); !stored) return stored;
  *candidate.add_promotions() = promotion;
  *response->mutable_candidate() = candidate;
  *response->mutable_promotion() = promotion;
  return ok_status();
}

}  // namespace

grpc::ServerUnaryReactor* EvolutionService::PromoteCandidate(
    grpc::CallbackServerContext* context, const v1::PromoteCandidateRequest* request,
    v1::PromoteCandidateResponse* response) {
  auto* reactor = context->DefaultReactor();
  // Checks on the spot; the validation matrix on a thread (it waits on a GPU).
  std::optional<v1::StoredCandidate> candidate;
  rpc::CompileRequest shape;
  auth::Identity admin;
  const Status status = [&]() -> Status {
    auto who = authorize(context, auth::Role::admin, "PromoteCandidate");
    if (!who) return who.error();
    admin = *who;
    auto found = store_->get(request->id());
    if (!found) return found.error();
    if (!*found)
      return make_error(ErrorCode::not_found, "no candidate " + std::to_string(request->id()));
    candidate = std::move(*found);
    if (Status s = check_promotable(*candidate, request->id(), parts_); !s) return s;
    v1::Problem problem = request->has_shape() ? request->shape() : candidate->problem();
    problem.set_dtype(candidate->problem().dtype());
    problem.set_head_dim(candidate->problem().head_dim());
    problem.set_causal(candidate->problem().causal());
    auto parsed = parse_shape(candidate->template_id(), problem, candidate->arch(), "shape");
    if (!parsed) return parsed.error();
    shape = std::move(parsed).value();
    return ok_status();
  }();
  if (!status) {
    reactor->Finish(bounded_status(to_grpc_status(status.error())));
    return reactor;
  }
  const bool started = spawn([this, reactor, response, candidate = std::move(*candidate), shape,
                              admin]() mutable {
    const Status promoted =
        promote(parts_, *sandbox_, *store_, candidate, shape, admin, response);
    reactor->Finish(promoted ? grpc::Status::OK : bounded_status(to_grpc_status(promoted.error())));
  });
  if (!started)
    reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the daemon is shutting down"));
  return reactor;
}

}  // namespace flashcore::evolve
