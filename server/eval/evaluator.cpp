#include "eval/evaluator.hpp"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "common/attention_params.cuh"
#include "common/digest.hpp"
#include "cuda/attention_launch.hpp"
#include "cuda/driver_api.hpp"
#include "eval/attention_reference.hpp"
#include "eval/gpu_reference.hpp"

namespace flashcore::eval {
namespace {

// The decode family's handles (family/attention_decode.hpp: kAbiVersion):
// DecodeParams, filled from the same AttentionParams the other families take.
constexpr unsigned kDecodeAbi = 3;


// Loaded modules kept per worker; a tuning run evaluates hundreds of
// candidates once each, so old ones are unloaded rather than kept forever.
constexpr size_t kMaxLoadedKernels = 64;
// 4 GiB of fp16 per tensor; beyond that neither the device copy nor the
// host-side reference is sensible.
constexpr int64_t kMaxTensorElements = int64_t{1} << 31;
constexpr int kMaxLaunchesPerLoop = 1 << 20;
constexpr double kMaxTargetLoopMs = 10000;
constexpr size_t kRandomChunk = size_t{1} << 20;
// Every-row validations costing more multiply-adds than this run the fp64
// reference on the GPU (checked against the CPU on kCrossCheckRows rows a
// trial): a 16-core host does ~1e9 a second, S=16384 needs ~1e12 a trial.
constexpr double kGpuReferenceCost = 4e9;
constexpr size_t kCrossCheckHeads = 64;  // (batch, head) pairs, 4 rows each
// Poison written over every output before every launch: 0xFFFF is NaN in
// fp16 and bf16, 0xFFFFFFFF in fp32, so an unwritten element is recognised
// by its exact bits.
constexpr unsigned char kPoisonByte = 0xff;
constexpr uint16_t kOutputPoison = 0xffff;
constexpr uint32_t kLsePoison = 0xffffffffu;

Error invalid(std::string message) {
  return make_error(ErrorCode::invalid_argument, std::move(message));
}

std::string sci(double value) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%.3e", value);
  return buffer;
}

DType dtype_of(const v1::Problem& problem) {
  return problem.dtype() == v1::DTYPE_BF16 ? DType::bf16 : DType::fp16;
}

int64_t kv_heads_of(const v1::Problem& p) { return p.kv_heads() == 0 ? p.heads() : p.kv_heads(); }
int64_t seq_k_of(const v1::Problem& p) { return p.seq_k() == 0 ? p.seq_q() : p.seq_k(); }

struct Counts {
  size_t q = 0, kv = 0, o = 0, lse = 0;  // elements per tensor
};

Counts counts_of(const v1::Problem& p) {
  Counts c;
  c.q = static_cast<size_t>(p.batch() * p.heads() * p.seq_q() * p.head_dim());
  c.kv = static_cast<size_t>(p.batch() * kv_heads_of(p) * seq_k_of(p) * p.head_dim());
  c.o = c.q;
  c.lse = static_cast<size_t>(p.batch() * p.heads() * p.seq_q());
  return c;
}

AttentionShape reference_shape(const v1::Problem& p) {
  AttentionShape shape;
  shape.batch = static_cast<int>(p.batch());
  shape.heads = static_cast<int>(p.heads());
  shape.kv_heads = static_cast<int>(kv_heads_of(p));
  shape.seq_q = static_cast<int>(p.seq_q());
  shape.seq_k = static_cast<int>(seq_k_of(p));
  shape.head_dim = p.head_dim();
  shape.causal = p.causal();
  shape.bhsd = p.layout() == v1::LAYOUT_BHSD;
  return shape;
}

cuda::AttentionShape launch_shape(const v1::Problem& p) {
  cuda::AttentionShape shape;
  shape.batch = p.batch();
  shape.heads = p.heads();
  shape.kv_heads = p.kv_heads();
  shape.seq_q = p.seq_q();
  shape.seq_k = p.seq_k();
  shape.head_dim = p.head_dim();
  shape.layout = p.layout() == v1::LAYOUT_BHSD ? cuda::TensorLayout::bhsd : cuda::TensorLayout::bshd;
  return shape;
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

unsigned cpu_threads() { return std::max(1u, std::thread::hardware_concurrency()); }

// N(0, 1) inputs rounded to the dtype, drawn in fixed chunks on every core:
// chunk c comes from its own generator seeded from (seed, c), so a seed gives
// the same inputs whatever the core count.
void random_inputs(size_t count, DType dtype, uint64_t seed, std::vector<uint16_t>& bits,
                   std::vector<float>& values) {
  bits.resize(count);
  values.resize(count);
  const size_t chunks = (count + kRandomChunk - 1) / kRandomChunk;
  std::atomic<size_t> next{0};
  auto work = [&] {
    std::vector<uint16_t> chunk_bits;
    std::vector<float> chunk_values;
    for (size_t c = next++; c < chunks; c = next++) {
      const size_t begin = c * kRandomChunk, n = std::min(kRandomChunk, count - begin);
      std::mt19937_64 rng(splitmix64(seed + c));
      random_tensor(n, dtype, rng, chunk_bits, chunk_values);
      std::copy(chunk_bits.begin(), chunk_bits.end(), bits.begin() + begin);
      std::copy(chunk_values.begin(), chunk_values.end(), values.begin() + begin);
    }
  };
  const unsigned threads = static_cast<unsigned>(std::min<size_t>(cpu_threads(), chunks));
  std::vector<std::thread> pool;
  for (unsigned t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (auto& thread : pool) thread.join();
}

std::optional<std::string> kernel_error(const v1::EvalKernel& kernel, const std::string& field) {
  if (kernel.cubin().empty()) return field + ".cubin: empty";
  if (kernel.lowered_name().empty()) return field + ".lowered_name: empty";
  if (kernel.config().block_m() < 1)
    return field + ".config.block_m: " + std::to_string(kernel.config().block_m()) +
           " must be >= 1 (it decides grid.x)";
  if (kernel.block_threads() < 1 || kernel.block_threads() > 1024)
    return field + ".block_threads: " + std::to_string(kernel.block_threads()) +
           " must be in [1, 1024]";
  if (kernel.abi_version() != FLASHCORE_ATTENTION_ABI_VERSION &&
      kernel.abi_version() != FLASHCORE_ATTENTION_TMA_ABI_VERSION &&
      kernel.abi_version() != kDecodeAbi)
    return field + ".abi_version: " + std::to_string(kernel.abi_version()) +
           ", but this worker fills AttentionParams (version " +
           std::to_string(FLASHCORE_ATTENTION_ABI_VERSION) + "), AttentionTmaParams (version " +
           std::to_string(FLASHCORE_ATTENTION_TMA_ABI_VERSION) + ") or DecodeParams (version " +
           std::to_string(kDecodeAbi) + ")";
  return std::nullopt;
}

}  // namespace

// ---- Pure CPU parts ----

double default_tolerance(DType dtype) { return dtype == DType::fp16 ? kFp16Tolerance : kBf16Tolerance; }
double default_max_abs_tolerance(DType dtype) {
  return dtype == DType::fp16 ? kFp16MaxAbsTolerance : kBf16MaxAbsTolerance;
}

std::vector<int> sample_rows(int seq_q, int count, int block_m, std::mt19937_64& rng) {
  std::vector<int> rows;
  if (seq_q < 1) return rows;
  if (count <= 0 || count >= seq_q) {
    rows.resize(static_cast<size_t>(seq_q));
    for (int i = 0; i < seq_q; ++i) rows[i] = i;
    return rows;
  }
  // The rows where kernels go wrong: the first, the last, and the first of
  // the last (usually partial) tile, whose masking differs from full tiles.
  const int tile = std::max(1, block_m);
  std::set<int> picked = {0, seq_q - 1, ((seq_q - 1) / tile) * tile};
  std::uniform_int_distribution<int> any_row(0, seq_q - 1);
  while (static_cast<int>(picked.size()) < count) picked.insert(any_row(rng));
  return {picked.begin(), picked.end()};
}

uint64_t validation_trial_seed(uint64_t seed, int trial) {
  return splitmix64(seed + static_cast<uint64_t>(trial) * 0x632be59bd9b4e019ull);
}

std::vector<std::vector<int>> reference_rows(int batch, int heads, int seq_q, int count,
                                             int block_m, uint64_t trial_seed) {
  std::mt19937_64 row_rng(splitmix64(trial_seed + 4));
  std::vector<std::vector<int>> rows;
  for (int b = 0; b < batch; ++b)
    for (int h = 0; h < heads; ++h) rows.push_back(sample_rows(seq_q, count, block_m, row_rng));
  return rows;
}

double attention_flops(const v1::Problem& p) {
  const double flops = 4.0 * static_cast<double>(p.batch()) * static_cast<double>(p.heads()) *
                       static_cast<double>(p.seq_q()) * static_cast<double>(seq_k_of(p)) *
                       static_cast<double>(p.head_dim());
  return p.causal() ? flops * 0.5 : flops;
}

size_t interleaved_kernel(int round, size_t step, size_t n) {
  return (step + static_cast<size_t>(round)) % n;
}

double percentile(const std::vector<double>& sorted, double fraction) {
  if (sorted.empty()) return 0;
  fraction = std::clamp(fraction, 0.0, 1.0);
  const double position = fraction * static_cast<double>(sorted.size() - 1);
  const size_t lower = static_cast<size_t>(std::floor(position));
  const size_t upper = std::min(lower + 1, sorted.size() - 1);
  return sorted[lower] + (position - static_cast<double>(lower)) * (sorted[upper] - sorted[lower]);
}

v1::TimingResult summarize_timing(std::vector<double> samples_us, const v1::Problem& problem) {
  v1::TimingResult result;
  if (samples_us.empty()) return result;
  std::sort(samples_us.begin(), samples_us.end());
  result.set_median_us(percentile(samples_us, 0.5));
  result.set_min_us(samples_us.front());
  result.set_max_us(samples_us.back());
  result.set_p10_us(percentile(samples_us, 0.1));
  result.set_p90_us(percentile(samples_us, 0.9));
  result.set_samples(static_cast<int>(samples_us.size()));
  if (result.median_us() > 0)
    result.set_tflops(attention_flops(problem) / (result.median_us() * 1e-6) / 1e12);
  return result;
}

int64_t input_set_bytes(const v1::Problem& problem) {
  const Counts c = counts_of(problem);
  return static_cast<int64_t>((c.q + 2 * c.kv + c.o) * sizeof(uint16_t) + c.lse * sizeof(float));
}

int input_sets_for(int64_t set_bytes, int64_t l2_bytes, int64_t memory_budget_bytes) {
  if (set_bytes < 1) return 1;
  // Strictly more than 2x L2 together, and never the same set twice in a row.
  int64_t sets = std::max<int64_t>(2, (2 * l2_bytes) / set_bytes + 1);
  if (memory_budget_bytes > 0)
    sets = std::min(sets, std::max<int64_t>(1, memory_budget_bytes / set_bytes));
  return static_cast<int>(std::min<int64_t>(sets, INT_MAX));
}

std::string output_digest(std::string_view bytes) { return sha256_hex(bytes); }

namespace {

// Several kernels timed together: only timing is asked, and they share one
// problem, so one family (the ABI decides how the worker fills the params).
std::optional<std::string> timed_kernels_error(const v1::EvaluateRequest& request) {
  const int n = request.kernels_size();
  if (n > kMaxTimedKernels)
    return "kernels: " + std::to_string(n) + " given; one call times at most " +
           std::to_string(kMaxTimedKernels);
  if (request.has_kernel())
    return std::string("kernel: must be unset when kernels is given (one or the other)");
  if (!request.time()) return std::string("time: must be true with kernels (they are only timed)");
  if (request.validate())
    return std::string("validate: must be false with kernels (validate each on a call of its own)");
  if (request.has_reference()) return std::string("reference: not taken with kernels");
  if (!request.sanitizer_tool().empty())
    return std::string("sanitizer_tool: not taken with kernels");
  if (request.rounds() < 0 || request.rounds() > kMaxTimingRounds)
    return "rounds: " + std::to_string(request.rounds()) + " must be in [0, " +
           std::to_string(kMaxTimingRounds) + "]";
  const unsigned abi = request.kernels(0).abi_version();
  for (int i = 0; i < n; ++i) {
    const std::string field = "kernels[" + std::to_string(i) + "]";
    if (auto e = kernel_error(request.kernels(i), field)) return e;
    if (request.kernels(i).abi_version() != abi)
      return field + ".abi_version: " + std::to_string(request.kernels(i).abi_version()) +
             " differs from kernels[0]'s " + std::to_string(abi) +
             "; kernels timed together must be of one family";
  }
  return std::nullopt;
}

std::optional<std::string> kernels_error(const v1::EvaluateRequest& request) {
  if (request.kernels_size() > 0) return timed_kernels_error(request);
  if (request.rounds() != 0)
    return "rounds: " + std::to_string(request.rounds()) +
           " given without kernels (rounds are for several kernels timed together)";
  if (!request.validate() && !request.time())
    return std::string("request: neither validate nor time is set");
  if (!request.has_kernel()) return std::string("kernel: missing (or kernels, to time several)");
  if (auto e = kernel_error(request.kernel(), "kernel")) return e;
  if (request.has_reference())
    if (auto e = kernel_error(request.reference(), "reference")) return e;
  return std::nullopt;
}

}  // namespace

std::string request_kernels_label(const v1::EvaluateRequest& request) {
  if (request.kernels_size() == 0) return request.kernel().key().substr(0, 16);
  std::string label = std::to_string(request.kernels_size()) + " kernels (";
  for (int i = 0; i < request.kernels_size(); ++i)
    label += (i ? ", " : "") + request.kernels(i).key().substr(0, 16);
  return label + ")";
}

std::optional<std::string> request_error(const v1::EvaluateRequest& request) {
  if (auto e = kernels_error(request)) return e;

  const v1::Problem& p = request.problem();
  if (p.dtype() != v1::DTYPE_FP16 && p.dtype() != v1::DTYPE_BF16)
    return std::string("problem.dtype: must be DTYPE_FP16 or DTYPE_BF16");
  if (!v1::Layout_IsValid(p.layout()))
    return "problem.layout: unknown value " + std::to_string(p.layout());
  if (auto e = problem_class_error({dtype_of(p), p.head_dim(), p.causal()})) return e;
  if (auto e = runtime_shape_error({p.batch(), p.heads(), p.kv_heads(), p.seq_q(), p.seq_k()}))
    return e;
  // Products of in-range fields stay far below 2^63 (65535^2 * 2^31 * 256).
  const Counts c = counts_of(p);
  if (static_cast<int64_t>(c.q) > kMaxTensorElements)
    return "problem: " + std::to_string(c.q) + " query elements exceed the worker's 2^31";
  if (static_cast<int64_t>(c.kv) > kMaxTensorElements)
    return "problem: " + std::to_string(c.kv) + " key elements exceed the worker's 2^31";

  const v1::ValidationOptions& v = request.validation();
  if (v.determinism_runs() < 0)
    return "validation.determinism_runs: " + std::to_string(v.determinism_runs()) + " must be >= 0";
  if (v.stability_trials() < 0)
    return "validation.stability_trials: " + std::to_string(v.stability_trials()) + " must be >= 0";
  if (!(v.rel_tolerance() >= 0)) return std::string("validation.rel_tolerance: must be >= 0");
  if (!(v.max_abs_tolerance() >= 0))
    return std::string("validation.max_abs_tolerance: must be >= 0");
  if (v.reference_rows() < 0)
    return "validation.reference_rows: " + std::to_string(v.reference_rows()) + " must be >= 0";

  const v1::TimingOptions& t = request.timing();
  if (t.warmup() < 0) return "timing.warmup: " + std::to_string(t.warmup()) + " must be >= 0";
  if (t.repetitions() < 0)
    return "timing.repetitions: " + std::to_string(t.repetitions()) + " must be >= 0";
  if (!(t.target_loop_ms() >= 0 && t.target_loop_ms() <= kMaxTargetLoopMs))
    return std::string("timing.target_loop_ms: must be in [0, 10000]");
  return std::nullopt;
}

v1::EvalKernel eval_kernel_from_handle(const v1::KernelHandle& handle) {
  v1::EvalKernel kernel;
  kernel.set_key(handle.key());
  kernel.set_lowered_name(handle.lowered_name());
  kernel.set_cubin(handle.cubin());
  *kernel.mutable_config() = handle.config();
  const v1::Dim3& block = handle.launch().block();
  kernel.set_block_threads(std::max(1u, block.x()) * std::max(1u, block.y()) *
                           std::max(1u, block.z()));
  kernel.set_dynamic_smem_bytes(handle.launch().dynamic_smem_bytes());
  kernel.set_abi_version(handle.abi().abi_version());
  if (handle.has_resources()) *kernel.mutable_resources() = handle.resources();
  return kernel;
}

// ---- The device side ----

namespace {

struct LoadedKernel {
  cuda::Module module;
  CUfunction function = nullptr;
  CUfunction combine = nullptr;  // the decode family's second kernel, when it has one
  int max_threads = 0;        // per block, given the kernel's registers
  unsigned smem_limit = 0;    // dynamic shared memory limit set on the function
};

struct DeviceTensors {
  cuda::DeviceBuffer q, k, v, o, lse;
};

struct HostOutput {
  std::vector<uint16_t> o;
  std::vector<float> lse;
};

// What one launch's outputs say before any comparison.
struct OutputCheck {
  int64_t unwritten = 0;   // still the poison pattern
  int64_t non_finite = 0;  // written, but NaN or Inf
};

OutputCheck check_written(const HostOutput& out, DType dtype) {
  OutputCheck check;
  for (uint16_t bits : out.o) {
    if (bits == kOutputPoison) ++check.unwritten;
    else if (!std::isfinite(element_to_float(dtype, bits))) ++check.non_finite;
  }
  for (float value : out.lse) {
    uint32_t bits;
    std::memcpy(&bits, &value, sizeof(bits));
    if (bits == kLsePoison) ++check.unwritten;
    else if (!std::isfinite(value)) ++check.non_finite;
  }
  return check;
}

// One trial's comparison: the gates' inputs.
struct TrialErrors {
  double rel = 0, max_abs = 0;
  double ref_max = 0;  // max |ref| over the compared elements: the max-abs gate's scale
  double lse = 0;
  bool on_gpu = false;  // the fp64 reference ran on the GPU
};

// A validation's options with their defaults filled in.
struct ValidationLimits {
  int runs = 0, trials = 0;  // determinism runs, stability trials
  double tolerance = 0, abs_tolerance = 0;
  int reference_rows = 0;  // rows per (batch, head) on the CPU; <= 0: every row
};

// What a validation gathers over its trials: the record's inputs.
struct ValidationTally {
  double worst_rel = 0, worst_abs = 0, worst_lse = 0;
  std::optional<WrongElement> first_wrong;  // in the first trial that failed
  int stable = 0, first_failed_trial = -1, mismatches = 0;
  std::string first_failure, digest;
  bool used_gpu_reference = false;
};

// The device buffers, launch parameters and host copies that every trial of
// one validation reuses.
struct ValidationBuffers {
  DeviceTensors tensors, reference_outputs;
  AttentionParams params{}, reference_params{};
  HostOutput out, again, reference_out;
  std::vector<float> out_values;  // out.o as floats
  double scale = 0;               // softmax scale
  bool on_gpu = false;            // every row in fp64 on the GPU when it can be built
};

// Folds one trial's errors into the tally; the trial fails on any of
// `problems` or on a gate, and the first failing trial is named.
void gate_trial(int trial, const TrialErrors& errors, const ValidationLimits& limits,
                std::vector<std::string> problems, ValidationTally& tally) {
  tally.worst_rel = std::max(tally.worst_rel, errors.rel);
  tally.worst_abs = std::max(tally.worst_abs, errors.max_abs);
  tally.worst_lse = std::max(tally.worst_lse, errors.lse);
  if (errors.rel > limits.tolerance || !std::isfinite(errors.rel))
    problems.push_back("rel_error " + sci(errors.rel) + " > tolerance " + sci(limits.tolerance));
  if (const double allowed = limits.abs_tolerance * std::max(1.0, errors.ref_max);
      !(errors.max_abs <= allowed))
    problems.push_back("max_abs_error " + sci(errors.max_abs) + " > tolerance " + sci(allowed));
  if (errors.lse > kLseTolerance)
    problems.push_back("lse max error " + sci(errors.lse) + " > " + sci(kLseTolerance));
  if (problems.empty()) {
    ++tally.stable;
  } else if (tally.first_failed_trial < 0) {
    tally.first_failed_trial = trial;
    for (const auto& p : problems)
      tally.first_failure += (tally.first_failure.empty() ? "" : ", ") + p;
  }
}

// A timing's options with their defaults filled in.
struct TimingPlan {
  int warmup = 0, repetitions = 0;
  double target_ms = 0;
};

// The input sets, their launch parameters and the events of one timing:
// every kernel of an interleaved call reads the very same inputs.
struct TimingRig {
  DeviceTensors buffers;
  std::vector<AttentionParams> params;
  std::optional<cuda::Event> start, stop;
  int sets = 0;
  size_t next = 0;  // the set the next launch reads
};

bool same_bytes(const HostOutput& a, const HostOutput& b) {
  return a.o == b.o && a.lse.size() == b.lse.size() &&
         std::memcmp(a.lse.data(), b.lse.data(), a.lse.size() * sizeof(float)) == 0;
}

}  // namespace

struct Evaluator::State {
  explicit State(cuda::Context c) : context(std::move(c)) {}

  cuda::Context context;  // declared first: released after every module
  cuda::DeviceInfo device;
  v1::WorkerInfo info;
  std::mutex mutex;  // one evaluation at a time
  std::map<std::string, std::unique_ptr<LoadedKernel>> kernels;
  std::deque<std::string> load_order;  // oldest first
  // Built on first need; when it cannot be (no NVRTC for this arch), every
  // validation stays on the CPU and the reason is logged once.
  std::unique_ptr<GpuReference> gpu_reference;
  bool gpu_reference_tried = false;
  std::atomic<bool> lost{false};
  // The decode family's workspace, its split counters kept zero (declared
  // after the context: freed before it is released).
  cuda::DecodeWorkspace decode_workspace;
};

namespace {

// A CUDA error once kernels run: the context may hold a sticky fault (an
// illegal address, a trap), so nothing on it can be trusted again.
Error lose_context(Evaluator::State& state, const Error& error) {
  state.lost = true;
  return make_error(ErrorCode::internal, "CUDA error, context unusable: " + error.message);
}

// One Evaluate call: its inputs, buffers and the CUDA calls that, failing,
// lose the context.
class Evaluation {
 public:
  Evaluation(Evaluator::State& state, const v1::EvaluateRequest& request,
             const std::function<bool()>& cancelled, uint64_t seed)
      : state_(state),
        request_(request),
        problem_(request.problem()),
        cancelled_(cancelled),
        seed_(seed),
        dtype_(dtype_of(problem_)),
        counts_(counts_of(problem_)),
        shape_(reference_shape(problem_)) {}

  Result<v1::ValidationRecord> validate(const LoadedKernel& kernel, const LoadedKernel* reference);
  Result<v1::TimingResult> time(const LoadedKernel& kernel);
  // request.kernels, loaded in that order, timed in interleaved rounds.
  Result<std::vector<v1::KernelTiming>> time_interleaved(
      const std::vector<const LoadedKernel*>& kernels);

 private:
  Error lose(const Error& error) { return lose_context(state_, error); }
  Status gpu(Status status) { return status ? status : Status(lose(status.error())); }

  bool is_cancelled() const { return cancelled_ && cancelled_(); }
  static Error cancelled_error() {
    return make_error(ErrorCode::cancelled, "evaluation cancelled (deadline or caller)");
  }

  Result<DeviceTensors> allocate(size_t sets, bool inputs);
  AttentionParams params(const DeviceTensors& inputs, const DeviceTensors& outputs, size_t set) const;
  Status launch(const LoadedKernel& kernel, const v1::EvalKernel& meta, const AttentionParams& p);
  Status synchronize();
  // Poison, launch, synchronize, download: one checked run of `kernel`.
  Status run(const LoadedKernel& kernel, const v1::EvalKernel& meta, const AttentionParams& p,
             DeviceTensors& outputs, HostOutput& host);
  Status upload_inputs(DeviceTensors& inputs, size_t set);
  const GpuReference* gpu_reference();
  // One trial's errors against the reference kernel's output on the same inputs.
  TrialErrors against_kernel(const HostOutput& out, const std::vector<float>& out_values,
                             const HostOutput& reference_out) const;
  // One trial's errors against fp64: every row on the GPU when `on_gpu` and it
  // can be built, else the CPU on the request's rows.
  // With `tolerance` >= 0, a trial over it sets `first_wrong` (the first
  // element off by more than tolerance x (|want| + rms)).
  Result<TrialErrors> against_fp64(const HostOutput& out, const std::vector<float>& out_values,
                                   const AttentionParams& params, double scale,
                                   uint64_t trial_seed, bool on_gpu, double tolerance,
                                   std::optional<WrongElement>& first_wrong);
  // validate()'s steps: its limits; the buffers every trial reuses; one trial
  // (fresh inputs, a checked run, the comparison, the gates, and on the first
  // trial the determinism runs); the record made from the tally.
  ValidationLimits validation_limits() const;
  Status prepare_validation(const LoadedKernel* reference, const ValidationLimits& limits,
                            ValidationBuffers& buffers);
  Status validation_trial(int trial, const LoadedKernel& kernel, const LoadedKernel* reference,
                          const ValidationLimits& limits, ValidationBuffers& buffers,
                          ValidationTally& tally);
  std::vector<std::string> written_problems(const HostOutput& out) const;
  // This trial's errors against the reference kernel, or against fp64;
  // problems of the reference kernel's own outputs are added to `problems`.
  Result<TrialErrors> trial_errors(uint64_t trial_seed, const LoadedKernel* reference,
                                   const ValidationLimits& limits, ValidationBuffers& buffers,
                                   ValidationTally& tally, std::vector<std::string>& problems);
  Status check_determinism(const LoadedKernel& kernel, int runs, ValidationBuffers& buffers,
                           ValidationTally& tally);
  v1::ValidationRecord validation_record(const ValidationLimits& limits,
                                         const ValidationTally& tally,
                                         const LoadedKernel* reference) const;
  std::vector<std::string> validation_failures(const ValidationLimits& limits,
                                               const ValidationTally& tally) const;
  std::string validated_against(const ValidationLimits& limits, const ValidationTally& tally,
                                const LoadedKernel* reference) const;
  // time()'s and time_interleaved()'s steps: the options with their
  // defaults; the input sets with their launch parameters and the events;
  // `launches` launches rotating through the sets; one timed loop in ms; the
  // warm-up that returns the launches per loop filling the target; a block
  // of samples (us per launch); their summary.
  TimingPlan timing_plan() const;
  Status prepare_timing(TimingRig& rig);
  Status launch_some(TimingRig& rig, const LoadedKernel& kernel, const v1::EvalKernel& meta,
                     int launches);
  Result<double> timed_loop(TimingRig& rig, const LoadedKernel& kernel,
                            const v1::EvalKernel& meta, int launches);
  Result<int> warm_up(TimingRig& rig, const LoadedKernel& kernel, const v1::EvalKernel& meta,
                      const TimingPlan& plan);
  Result<std::vector<double>> sample_block(TimingRig& rig, const LoadedKernel& kernel,
                                           const v1::EvalKernel& meta, int launches,
                                           int repetitions);
  v1::TimingResult timing_result(std::vector<double> samples_us, int launches, int sets) const;
  Result<std::vector<AttentionParams>> timing_params(DeviceTensors& buffers, int sets);
  Result<int> launches_per_loop(const std::function<Result<double>(int)>& timed_loop,
                                double target_ms);
  // Every row of this trial's inputs (at `inputs`) in fp64 on the GPU, after
  // the CPU agrees with it on sampled rows; the CPU's verdict otherwise.
  Result<AttentionReference> every_row_on_gpu(const GpuReference& reference,
                                              const AttentionParams& inputs, double scale,
                                              uint64_t trial_seed, int block_m);

  Evaluator::State& state_;
  const v1::EvaluateRequest& request_;
  const v1::Problem& problem_;
  const std::function<bool()>& cancelled_;
  const uint64_t seed_;
  const DType dtype_;
  const Counts counts_;
  const AttentionShape shape_;
  std::vector<uint16_t> q_bits_, k_bits_, v_bits_;
  std::vector<float> q_, k_, v_;
};

Result<DeviceTensors> Evaluation::allocate(size_t sets, bool inputs) {
  DeviceTensors t;
  struct Plan {
    cuda::DeviceBuffer* buffer;
    size_t bytes;
  };
  std::vector<Plan> plan = {{&t.o, counts_.o * 2}, {&t.lse, counts_.lse * 4}};
  if (inputs) {
    plan.push_back({&t.q, counts_.q * 2});
    plan.push_back({&t.k, counts_.kv * 2});
    plan.push_back({&t.v, counts_.kv * 2});
  }
  for (const Plan& p : plan) {
    auto buffer = cuda::DeviceBuffer::allocate(p.bytes * sets);
    if (!buffer) return buffer.error();  // out of memory: resource_exhausted, not a fault
    *p.buffer = std::move(buffer.value());
  }
  return t;
}

AttentionParams Evaluation::params(const DeviceTensors& inputs, const DeviceTensors& outputs,
                                   size_t set) const {
  const CUdeviceptr o = outputs.o.get() + set * counts_.o * 2;
  const CUdeviceptr lse = outputs.lse.get() + set * counts_.lse * 4;
  return cuda::make_attention_params(launch_shape(problem_), inputs.q.get() + set * counts_.q * 2,
                                     inputs.k.get() + set * counts_.kv * 2,
                                     inputs.v.get() + set * counts_.kv * 2, o,
                                     reinterpret_cast<float*>(static_cast<uintptr_t>(lse)));
}

Status Evaluation::launch(const LoadedKernel& kernel, const v1::EvalKernel& meta,
                          const AttentionParams& p) {
  if (meta.abi_version() == kDecodeAbi) {
    cuda::DecodeLaunchConfig decode;
    decode.head_dim = problem_.head_dim();
    decode.packed_rows = static_cast<unsigned>(meta.config().block_m());
    decode.block_n = static_cast<unsigned>(meta.config().block_n());
    decode.split_threads = meta.block_threads();
    decode.split_smem_bytes = meta.dynamic_smem_bytes();
    decode.fused_combine = meta.config().fused_combine();
    decode.splits = meta.config().splits();
    if (auto s = cuda::decode_launch_error(decode); !s) return s;
    const int splits = cuda::decode_splits_for(decode, p, state_.device.sm_count);
    auto workspace = state_.decode_workspace.prepare(decode, p, splits, nullptr);
    if (!workspace) return gpu(Status(workspace.error()));
    const DecodeParams d = cuda::make_decode_params(p, *workspace, decode.head_dim, splits);
    return gpu(cuda::launch_decode(kernel.function, kernel.combine, decode, d, nullptr));
  }
  cuda::AttentionLaunchConfig config;
  config.block_m = static_cast<unsigned>(meta.config().block_m());
  config.block_x = meta.block_threads();
  config.dynamic_smem_bytes = meta.dynamic_smem_bytes();
  config.abi_version = meta.abi_version();
  config.bf16 = problem_.dtype() == v1::DTYPE_BF16;
  config.head_dim = problem_.head_dim();
  config.block_n = static_cast<unsigned>(meta.config().block_n());
  config.persistent = meta.config().persistent();
  config.multiprocessors = state_.device.sm_count;
  // The legacy default stream: it orders launches with the cuMemsetD8 poison
  // and the synchronous copies, which a non-blocking stream would not.
  return gpu(cuda::launch_attention(kernel.function, config, p, nullptr));
}

Status Evaluation::synchronize() {
  auto api = cuda::driver();
  if (!api) return api.error();
  return gpu(cuda::check((*api)->cuCtxSynchronize(), "cuCtxSynchronize"));
}

Status Evaluation::run(const LoadedKernel& kernel, const v1::EvalKernel& meta,
                       const AttentionParams& p, DeviceTensors& outputs, HostOutput& host) {
  if (auto s = gpu(outputs.o.fill_bytes(kPoisonByte)); !s) return s;
  if (auto s = gpu(outputs.lse.fill_bytes(kPoisonByte)); !s) return s;
  if (auto s = launch(kernel, meta, p); !s) return s;
  if (auto s = synchronize(); !s) return s;
  host.o.resize(counts_.o);
  host.lse.resize(counts_.lse);
  if (auto s = gpu(outputs.o.download(host.o.data(), host.o.size() * 2)); !s) return s;
  return gpu(outputs.lse.download(host.lse.data(), host.lse.size() * 4));
}

Status Evaluation::upload_inputs(DeviceTensors& inputs, size_t set) {
  if (auto s = gpu(inputs.q.upload(q_bits_.data(), counts_.q * 2, set * counts_.q * 2)); !s) return s;
  if (auto s = gpu(inputs.k.upload(k_bits_.data(), counts_.kv * 2, set * counts_.kv * 2)); !s)
    return s;
  return gpu(inputs.v.upload(v_bits_.data(), counts_.kv * 2, set * counts_.kv * 2));
}

const GpuReference* Evaluation::gpu_reference() {
  if (!state_.gpu_reference_tried) {
    state_.gpu_reference_tried = true;
    auto built = GpuReference::create(state_.device.arch);
    if (built) state_.gpu_reference = std::move(built.value());
    else spdlog::warn("{}; every-row validations stay on the CPU", built.error().message);
  }
  return state_.gpu_reference.get();
}

Result<AttentionReference> Evaluation::every_row_on_gpu(const GpuReference& reference,
                                                        const AttentionParams& inputs,
                                                        double scale, uint64_t trial_seed,
                                                        int block_m) {
  auto ref = reference.run(shape_, dtype_, inputs, scale);
  if (!ref)
    return ref.error().code == ErrorCode::resource_exhausted ? ref.error() : lose(ref.error());
  // 4 rows (first, last, the last tile's first, one more) of up to 64 heads.
  std::mt19937_64 rng(splitmix64(trial_seed + 5));
  const size_t pairs = static_cast<size_t>(shape_.batch) * shape_.heads;
  const size_t step = std::max<size_t>(1, pairs / kCrossCheckHeads);
  std::vector<QueryRow> rows;
  for (size_t pair = rng() % step; pair < pairs; pair += step)
    for (int i : sample_rows(shape_.seq_q, 4, block_m, rng))
      rows.push_back({static_cast<int>(pair / shape_.heads), static_cast<int>(pair % shape_.heads), i});
  if (std::string wrong = check_against_cpu(shape_, *ref, q_, k_, v_, scale, rows, cpu_threads());
      !wrong.empty())
    return make_error(ErrorCode::internal, "validation reference: " + wrong);
  return ref;
}

TrialErrors Evaluation::against_kernel(const HostOutput& out, const std::vector<float>& out_values,
                                      const HostOutput& reference_out) const {
  TrialErrors e;
  double diff_sq = 0, ref_sq = 0;
  for (size_t i = 0; i < counts_.o; ++i) {
    const double got = out_values[i];
    const double want = element_to_float(dtype_, reference_out.o[i]);
    if (!std::isfinite(got) || !std::isfinite(want)) continue;
    diff_sq += (got - want) * (got - want);
    ref_sq += want * want;
    e.max_abs = std::max(e.max_abs, std::abs(got - want));
    e.ref_max = std::max(e.ref_max, std::abs(want));
  }
  e.rel = ref_sq > 0 ? std::sqrt(diff_sq / ref_sq) : std::sqrt(diff_sq);
  for (size_t i = 0; i < counts_.lse; ++i)
    if (std::isfinite(out.lse[i]) && std::isfinite(reference_out.lse[i]))
      e.lse = std::max(e.lse, std::abs(double(out.lse[i]) - reference_out.lse[i]));
  return e;
}

Result<TrialErrors> Evaluation::against_fp64(const HostOutput& out,
                                             const std::vector<float>& out_values,
                                             const AttentionParams& params, double scale,
                                             uint64_t trial_seed, bool on_gpu, double tolerance,
                                             std::optional<WrongElement>& first_wrong) {
  auto wrong = [&](const ErrorStats& stats) {
    return tolerance >= 0 &&
           (stats.rel_error > tolerance || !std::isfinite(stats.rel_error) || stats.non_finite > 0);
  };
  const int block_m = request_.kernel().config().block_m();
  TrialErrors e;
  if (const GpuReference* gpu_ref = on_gpu ? gpu_reference() : nullptr) {
    auto ref = every_row_on_gpu(*gpu_ref, params, scale, trial_seed, block_m);
    if (!ref) return ref.error();
    const ErrorStats stats = compare_output(shape_, out_values, ref->out);
    e = {stats.rel_error, stats.max_abs_error, stats.ref_max_abs, 0.0, true};
    if (wrong(stats)) {  // every row, in the reference's logical order
      std::vector<QueryRow> all;
      all.reserve(static_cast<size_t>(shape_.batch) * shape_.heads * shape_.seq_q);
      for (int b = 0; b < shape_.batch; ++b)
        for (int h = 0; h < shape_.heads; ++h)
          for (int i = 0; i < shape_.seq_q; ++i) all.push_back({b, h, i});
      first_wrong = first_wrong_element(shape_, out_values, all, ref->out, tolerance);
    }
    for (size_t n = 0; n < counts_.lse; ++n)
      if (std::isfinite(out.lse[n])) e.lse = std::max(e.lse, std::abs(double(out.lse[n]) - ref->lse[n]));
    return e;
  }
  std::vector<QueryRow> rows;
  const auto sampled = reference_rows(shape_.batch, shape_.heads, shape_.seq_q,
                                      request_.validation().reference_rows(), block_m, trial_seed);
  for (int b = 0, n = 0; b < shape_.batch; ++b)
    for (int h = 0; h < shape_.heads; ++h, ++n)
      for (int i : sampled[static_cast<size_t>(n)]) rows.push_back({b, h, i});
  const AttentionReference ref = reference_attention_rows(shape_, q_, k_, v_, scale, rows, cpu_threads());
  const ErrorStats stats = compare_rows(shape_, out_values, rows, ref.out);
  e = {stats.rel_error, stats.max_abs_error, stats.ref_max_abs, 0.0, false};
  if (wrong(stats)) first_wrong = first_wrong_element(shape_, out_values, rows, ref.out, tolerance);
  for (size_t n = 0; n < rows.size(); ++n) {
    const QueryRow& r = rows[n];
    const float got = out.lse[(static_cast<size_t>(r.batch) * shape_.heads + r.head) * shape_.seq_q + r.row];
    if (std::isfinite(got)) e.lse = std::max(e.lse, std::abs(double(got) - ref.lse[n]));
  }
  return e;
}

Result<v1::ValidationRecord> Evaluation::validate(const LoadedKernel& kernel,
                                                  const LoadedKernel* reference) {
  const ValidationLimits limits = validation_limits();
  ValidationBuffers buffers;
  if (auto s = prepare_validation(reference, limits, buffers); !s) return s.error();
  ValidationTally tally;
  for (int trial = 0; trial < limits.trials; ++trial) {
    if (is_cancelled()) return cancelled_error();
    if (auto s = validation_trial(trial, kernel, reference, limits, buffers, tally); !s)
      return s.error();
  }
  return validation_record(limits, tally, reference);
}

ValidationLimits Evaluation::validation_limits() const {
  const v1::ValidationOptions& options = request_.validation();
  ValidationLimits limits;
  limits.runs =
      options.determinism_runs() > 0 ? options.determinism_runs() : kDefaultDeterminismRuns;
  limits.trials =
      options.stability_trials() > 0 ? options.stability_trials() : kDefaultStabilityTrials;
  limits.tolerance =
      options.rel_tolerance() > 0 ? options.rel_tolerance() : default_tolerance(dtype_);
  limits.abs_tolerance = options.max_abs_tolerance() > 0 ? options.max_abs_tolerance()
                                                         : default_max_abs_tolerance(dtype_);
  limits.reference_rows = options.reference_rows();
  return limits;
}

Status Evaluation::prepare_validation(const LoadedKernel* reference,
                                      const ValidationLimits& limits, ValidationBuffers& buffers) {
  auto tensors = allocate(1, true);
  if (!tensors) return tensors.error();
  buffers.tensors = std::move(tensors.value());
  if (reference) {
    auto reference_outputs = allocate(1, false);
    if (!reference_outputs) return reference_outputs.error();
    buffers.reference_outputs = std::move(reference_outputs.value());
  }
  buffers.params = this->params(buffers.tensors, buffers.tensors, 0);
  if (auto s = cuda::attention_params_error(buffers.params); !s) return invalid(s.error().message);
  buffers.reference_params = this->params(buffers.tensors, buffers.reference_outputs, 0);
  buffers.scale = 1.0 / std::sqrt(static_cast<double>(problem_.head_dim()));
  buffers.out_values.assign(counts_.o, 0.0f);
  const bool every_row = limits.reference_rows <= 0 || limits.reference_rows >= shape_.seq_q;
  buffers.on_gpu = every_row && reference_cost(shape_) > kGpuReferenceCost;
  return ok_status();
}

Status Evaluation::validation_trial(int trial, const LoadedKernel& kernel,
                                    const LoadedKernel* reference, const ValidationLimits& limits,
                                    ValidationBuffers& buffers, ValidationTally& tally) {
  const uint64_t trial_seed = validation_trial_seed(seed_, trial);
  random_inputs(counts_.q, dtype_, splitmix64(trial_seed + 1), q_bits_, q_);
  random_inputs(counts_.kv, dtype_, splitmix64(trial_seed + 2), k_bits_, k_);
  random_inputs(counts_.kv, dtype_, splitmix64(trial_seed + 3), v_bits_, v_);
  if (auto s = upload_inputs(buffers.tensors, 0); !s) return s;
  if (auto s = run(kernel, request_.kernel(), buffers.params, buffers.tensors, buffers.out); !s)
    return s;

  std::vector<std::string> problems = written_problems(buffers.out);
  for (size_t i = 0; i < counts_.o; ++i)
    buffers.out_values[i] = element_to_float(dtype_, buffers.out.o[i]);
  auto errors = trial_errors(trial_seed, reference, limits, buffers, tally, problems);
  if (!errors) return errors.error();
  gate_trial(trial, *errors, limits, std::move(problems), tally);
  if (trial == 0) return check_determinism(kernel, limits.runs, buffers, tally);
  return ok_status();
}

std::vector<std::string> Evaluation::written_problems(const HostOutput& out) const {
  std::vector<std::string> problems;
  const OutputCheck written = check_written(out, dtype_);
  if (written.unwritten > 0)
    problems.push_back(std::to_string(written.unwritten) + " of " +
                       std::to_string(counts_.o + counts_.lse) +
                       " outputs left unwritten (still poisoned)");
  if (written.non_finite > 0)
    problems.push_back(std::to_string(written.non_finite) + " outputs NaN or Inf");
  return problems;
}

Result<TrialErrors> Evaluation::trial_errors(uint64_t trial_seed, const LoadedKernel* reference,
                                             const ValidationLimits& limits,
                                             ValidationBuffers& buffers, ValidationTally& tally,
                                             std::vector<std::string>& problems) {
  if (reference) {
    // Tuning's gate: the already validated kernel on the very same inputs.
    if (auto s = run(*reference, request_.reference(), buffers.reference_params,
                     buffers.reference_outputs, buffers.reference_out);
        !s)
      return s.error();
    const OutputCheck reference_written = check_written(buffers.reference_out, dtype_);
    if (reference_written.unwritten + reference_written.non_finite > 0)
      problems.push_back("the reference kernel left " +
                         std::to_string(reference_written.unwritten +
                                        reference_written.non_finite) +
                         " outputs unwritten or non-finite");
    return against_kernel(buffers.out, buffers.out_values, buffers.reference_out);
  }
  auto fp64 = against_fp64(buffers.out, buffers.out_values, buffers.params, buffers.scale,
                           trial_seed, buffers.on_gpu,
                           tally.first_wrong ? -1.0 : limits.tolerance, tally.first_wrong);
  if (!fp64) return fp64.error();
  tally.used_gpu_reference = tally.used_gpu_reference || fp64->on_gpu;
  return fp64;
}

// Determinism on the first trial's inputs: every run's full output, byte for
// byte, against the first (exact comparison; the SHA-256 names the output).
Status Evaluation::check_determinism(const LoadedKernel& kernel, int runs,
                                     ValidationBuffers& buffers, ValidationTally& tally) {
  const HostOutput& out = buffers.out;
  std::string bytes(reinterpret_cast<const char*>(out.o.data()), out.o.size() * 2);
  bytes.append(reinterpret_cast<const char*>(out.lse.data()), out.lse.size() * 4);
  tally.digest = output_digest(bytes);
  for (int r = 1; r < runs; ++r) {
    if (is_cancelled()) return cancelled_error();
    if (auto s = run(kernel, request_.kernel(), buffers.params, buffers.tensors, buffers.again); !s)
      return s;
    if (!same_bytes(out, buffers.again)) ++tally.mismatches;
  }
  return ok_status();
}

v1::ValidationRecord Evaluation::validation_record(const ValidationLimits& limits,
                                                   const ValidationTally& tally,
                                                   const LoadedKernel* reference) const {
  v1::ValidationRecord record;
  record.set_evaluated(true);
  record.set_device(state_.device.name);
  if (tally.first_wrong) {
    v1::OutputElement* where = record.mutable_first_wrong();
    where->set_batch(tally.first_wrong->batch);
    where->set_head(tally.first_wrong->head);
    where->set_row(tally.first_wrong->row);
    where->set_col(tally.first_wrong->col);
    where->set_got(tally.first_wrong->got);
    where->set_want(tally.first_wrong->want);
  }
  record.set_rel_error(tally.worst_rel);
  record.set_max_abs_error(tally.worst_abs);
  record.set_determinism_hash(tally.digest);
  record.set_determinism_runs(limits.runs);
  record.set_deterministic(tally.mismatches == 0);
  record.set_stability_trials(limits.trials);
  record.set_stability_passed(tally.stable);

  const std::vector<std::string> failures = validation_failures(limits, tally);
  record.set_passed(failures.empty());
  std::string detail;
  if (failures.empty()) {
    detail = "passed: worst rel_error " + sci(tally.worst_rel) + " (tolerance " +
             sci(limits.tolerance) + "), max_abs_error " + sci(tally.worst_abs) +
             " (tolerance " + sci(limits.abs_tolerance) + " x max(1, max |ref|)), lse error " +
             sci(tally.worst_lse) + ", " + std::to_string(limits.trials) +
             " trials, identical over " + std::to_string(limits.runs) + " runs";
  } else {
    detail = "failed: ";
    for (size_t i = 0; i < failures.size(); ++i) detail += (i ? "; " : "") + failures[i];
  }
  record.set_detail(detail + "; against " + validated_against(limits, tally, reference) +
                    "; seed " + std::to_string(seed_));
  return record;
}

std::vector<std::string> Evaluation::validation_failures(const ValidationLimits& limits,
                                                         const ValidationTally& tally) const {
  std::vector<std::string> failures;
  if (tally.stable < limits.trials)
    failures.push_back("stability: " + std::to_string(tally.stable) + " of " +
                       std::to_string(limits.trials) + " trials passed; trial " +
                       std::to_string(tally.first_failed_trial) + ": " + tally.first_failure);
  if (tally.mismatches > 0)
    failures.push_back("determinism: " + std::to_string(tally.mismatches) + " of " +
                       std::to_string(limits.runs - 1) + " repeated runs differ from the first");
  const v1::EvalKernel& meta = request_.kernel();
  if (!meta.has_resources()) {
    failures.push_back("resources: not reported (kernel.resources unset)");
  } else {
    const v1::ResourceReport& res = meta.resources();
    if (res.spill_store_bytes() > 0 || res.spill_load_bytes() > 0)
      failures.push_back("resources: spills " + std::to_string(res.spill_store_bytes()) +
                         " bytes stored, " + std::to_string(res.spill_load_bytes()) + " loaded");
    if (res.stack_frame_bytes() > 0)
      failures.push_back("resources: " + std::to_string(res.stack_frame_bytes()) +
                         "-byte stack frame");
  }
  return failures;
}

std::string Evaluation::validated_against(const ValidationLimits& limits,
                                          const ValidationTally& tally,
                                          const LoadedKernel* reference) const {
  if (reference) return "reference kernel " + request_.reference().key();
  if (limits.reference_rows > 0 && limits.reference_rows < shape_.seq_q)
    return "fp64 on " + std::to_string(limits.reference_rows) + " rows per (batch, head)";
  if (tally.used_gpu_reference)
    return "fp64 on every row (on the GPU; the CPU agreed on 4 rows of up to " +
           std::to_string(kCrossCheckHeads) + " heads a trial)";
  return "fp64 on every row";
}

TimingPlan Evaluation::timing_plan() const {
  const v1::TimingOptions& options = request_.timing();
  TimingPlan plan;
  plan.warmup = options.warmup() > 0 ? options.warmup() : kDefaultWarmup;
  plan.repetitions = options.repetitions() > 0 ? options.repetitions() : kDefaultRepetitions;
  plan.target_ms = options.target_loop_ms() > 0 ? options.target_loop_ms() : kDefaultTargetLoopMs;
  return plan;
}

Status Evaluation::prepare_timing(TimingRig& rig) {
  // A quarter of the device: room for the module, the context and a
  // neighbour's reference run without an out-of-memory in the timing loop.
  const int64_t budget = static_cast<int64_t>(state_.device.total_memory_bytes / 4);
  rig.sets = input_sets_for(input_set_bytes(problem_), state_.device.l2_bytes, budget);
  auto buffers = allocate(static_cast<size_t>(rig.sets), true);
  if (!buffers) return buffers.error();
  rig.buffers = std::move(buffers.value());
  auto params = timing_params(rig.buffers, rig.sets);
  if (!params) return params.error();
  rig.params = std::move(params.value());
  auto start = cuda::Event::create();
  if (!start) return start.error();
  auto stop = cuda::Event::create();
  if (!stop) return stop.error();
  rig.start.emplace(std::move(start.value()));
  rig.stop.emplace(std::move(stop.value()));
  return ok_status();
}

Status Evaluation::launch_some(TimingRig& rig, const LoadedKernel& kernel,
                               const v1::EvalKernel& meta, int launches) {
  for (int i = 0; i < launches; ++i) {
    const AttentionParams& p = rig.params[rig.next];
    rig.next = (rig.next + 1) % rig.params.size();
    if (auto s = launch(kernel, meta, p); !s) return s;
  }
  return ok_status();
}

Result<double> Evaluation::timed_loop(TimingRig& rig, const LoadedKernel& kernel,
                                      const v1::EvalKernel& meta, int launches) {
  if (auto s = gpu(rig.start->record(nullptr)); !s) return s.error();
  if (auto s = launch_some(rig, kernel, meta, launches); !s) return s.error();
  if (auto s = gpu(rig.stop->record(nullptr)); !s) return s.error();
  if (auto s = gpu(rig.stop->synchronize()); !s) return s.error();
  auto ms = rig.stop->elapsed_since(*rig.start);
  if (!ms) return lose(ms.error());
  return static_cast<double>(*ms);
}

Result<int> Evaluation::warm_up(TimingRig& rig, const LoadedKernel& kernel,
                                const v1::EvalKernel& meta, const TimingPlan& plan) {
  if (auto s = launch_some(rig, kernel, meta, plan.warmup * rig.sets); !s) return s.error();
  if (auto s = synchronize(); !s) return s.error();
  return launches_per_loop(
      [&](int launches) { return timed_loop(rig, kernel, meta, launches); }, plan.target_ms);
}

Result<std::vector<double>> Evaluation::sample_block(TimingRig& rig, const LoadedKernel& kernel,
                                                     const v1::EvalKernel& meta, int launches,
                                                     int repetitions) {
  std::vector<double> samples_us;
  for (int r = 0; r < repetitions; ++r) {
    if (is_cancelled()) return cancelled_error();
    auto ms = timed_loop(rig, kernel, meta, launches);
    if (!ms) return ms.error();
    samples_us.push_back(*ms * 1000.0 / launches);
  }
  return samples_us;
}

v1::TimingResult Evaluation::timing_result(std::vector<double> samples_us, int launches,
                                           int sets) const {
  v1::TimingResult result = summarize_timing(std::move(samples_us), problem_);
  result.set_launches_per_sample(launches);
  result.set_input_sets(sets);
  return result;
}

Result<v1::TimingResult> Evaluation::time(const LoadedKernel& kernel) {
  const TimingPlan plan = timing_plan();
  const v1::EvalKernel& meta = request_.kernel();
  TimingRig rig;
  if (auto s = prepare_timing(rig); !s) return s.error();
  auto launches = warm_up(rig, kernel, meta, plan);
  if (!launches) return launches.error();
  auto samples = sample_block(rig, kernel, meta, *launches, plan.repetitions);
  if (!samples) return samples.error();
  return timing_result(std::move(samples.value()), *launches, rig.sets);
}

// Round r times every kernel in turn, starting at kernel r mod n, each for a
// block of repetitions samples: what drifts over the call (clocks,
// temperature, a neighbour's load) drifts under every kernel alike, which
// separate calls minutes apart cannot promise.
Result<std::vector<v1::KernelTiming>> Evaluation::time_interleaved(
    const std::vector<const LoadedKernel*>& kernels) {
  const TimingPlan plan = timing_plan();
  const int rounds = request_.rounds() > 0 ? request_.rounds() : kDefaultTimingRounds;
  auto named = [&](size_t i, Error error) {
    error.message = "kernels[" + std::to_string(i) + "] (" +
                    request_.kernels(static_cast<int>(i)).key().substr(0, 16) +
                    "): " + error.message;
    return error;
  };
  TimingRig rig;
  if (auto s = prepare_timing(rig); !s) return s.error();
  const size_t n = kernels.size();
  std::vector<int> launches(n);
  for (size_t i = 0; i < n; ++i) {
    auto sized = warm_up(rig, *kernels[i], request_.kernels(static_cast<int>(i)), plan);
    if (!sized) return named(i, sized.error());
    launches[i] = *sized;
  }
  std::vector<std::vector<double>> pooled(n);
  std::vector<v1::KernelTiming> timings(n);
  // The order rotates by one each round, so no kernel is always first (over n
  // rounds each takes every place once): in a fixed order the first kernel of a
  // round ran measurably faster than the same kernel later in it (7% at
  // S 8192 on an H100, bench/RESULTS.md §0), which favoured kernels[0].
  for (int round = 0; round < rounds; ++round)
    for (size_t step = 0; step < n; ++step) {
      const size_t i = interleaved_kernel(round, step, n);
      const v1::EvalKernel& meta = request_.kernels(static_cast<int>(i));
      // The kernel before left its code in the caches: a few untimed
      // launches, ordered before the start event on the same stream.
      if (auto s = launch_some(rig, *kernels[i], meta, plan.warmup); !s)
        return named(i, s.error());
      auto samples = sample_block(rig, *kernels[i], meta, launches[i], plan.repetitions);
      if (!samples) return named(i, samples.error());
      pooled[i].insert(pooled[i].end(), samples->begin(), samples->end());
      *timings[i].add_rounds() = timing_result(std::move(samples.value()), launches[i], rig.sets);
    }
  for (size_t i = 0; i < n; ++i) {
    timings[i].set_key(request_.kernels(static_cast<int>(i)).key());
    *timings[i].mutable_timing() = timing_result(std::move(pooled[i]), launches[i], rig.sets);
  }
  return timings;
}

Result<std::vector<AttentionParams>> Evaluation::timing_params(DeviceTensors& buffers, int sets) {
  // One random set copied into every slot: distinct addresses are what keep
  // the L2 cold, and fresh samples for hundreds of sets would cost seconds.
  random_inputs(counts_.q, dtype_, splitmix64(seed_ + 11), q_bits_, q_);
  random_inputs(counts_.kv, dtype_, splitmix64(seed_ + 12), k_bits_, k_);
  random_inputs(counts_.kv, dtype_, splitmix64(seed_ + 13), v_bits_, v_);
  std::vector<AttentionParams> params;
  params.reserve(static_cast<size_t>(sets));
  for (int set = 0; set < sets; ++set) {
    if (auto s = upload_inputs(buffers, static_cast<size_t>(set)); !s) return s.error();
    params.push_back(this->params(buffers, buffers, static_cast<size_t>(set)));
  }
  if (auto s = cuda::attention_params_error(params.front()); !s) return invalid(s.error().message);
  return params;
}

// Sizes the loop: double the launches until one loop takes a quarter of the
// target, then scale to the target.
Result<int> Evaluation::launches_per_loop(const std::function<Result<double>(int)>& timed_loop,
                                          double target_ms) {
  int launches = 1;
  double per_launch_ms = 0;
  for (;;) {
    if (is_cancelled()) return cancelled_error();
    auto ms = timed_loop(launches);
    if (!ms) return ms.error();
    if (*ms >= target_ms / 4 || launches >= kMaxLaunchesPerLoop) {
      per_launch_ms = std::max(*ms / launches, 1e-6);
      break;
    }
    launches *= 2;
  }
  return static_cast<int>(std::clamp(std::ceil(target_ms / per_launch_ms), 1.0,
                                     static_cast<double>(kMaxLaunchesPerLoop)));
}

// Unloads the oldest modules so that `needed` more (a candidate and its
// reference, or the kernels timed together) fit under the bound; only
// between evaluations, so no kernel in use goes away.
void evict_kernels(Evaluator::State& state, size_t needed) {
  while (state.kernels.size() + needed > kMaxLoadedKernels && !state.load_order.empty()) {
    state.kernels.erase(state.load_order.front());
    state.load_order.pop_front();
  }
}

// The module for `kernel`, loaded once per (key, lowered name) with its
// dynamic shared memory limit raised. A cubin that does not load or cannot
// launch here is the candidate's failure, not the context's.
Result<const LoadedKernel*> load_kernel(Evaluator::State& state, const v1::EvalKernel& kernel,
                                        const std::string& field) {
  const std::string id =
      (kernel.key().empty() ? sha256_hex(kernel.cubin()) : kernel.key()) + "/" + kernel.lowered_name();
  auto it = state.kernels.find(id);
  if (it == state.kernels.end()) {
    auto module = cuda::Module::load(kernel.cubin());
    if (!module)
      return make_error(ErrorCode::failed_precondition, field + ".cubin: " + module.error().message);
    auto function = module->function(kernel.lowered_name());
    if (!function)
      return make_error(ErrorCode::failed_precondition,
                        field + ".lowered_name: " + function.error().message);
    auto api = cuda::driver();
    if (!api) return api.error();
    CUfunction combine = nullptr;
    if (!kernel.combine_lowered_name().empty()) {
      auto second = module->function(kernel.combine_lowered_name());
      if (!second)
        return make_error(ErrorCode::failed_precondition,
                          field + ".combine_lowered_name: " + second.error().message);
      combine = *second;
    }
    auto loaded =
        std::make_unique<LoadedKernel>(LoadedKernel{std::move(module.value()), *function, combine});
    if (auto s = cuda::check((*api)->cuFuncGetAttribute(&loaded->max_threads,
                                                        CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK,
                                                        *function),
                             "cuFuncGetAttribute(MAX_THREADS_PER_BLOCK)");
        !s)
      return make_error(ErrorCode::failed_precondition, field + ": " + s.error().message);
    it = state.kernels.emplace(id, std::move(loaded)).first;
    state.load_order.push_back(id);
  }
  LoadedKernel& loaded = *it->second;
  if (loaded.smem_limit != kernel.dynamic_smem_bytes()) {
    if (auto s = cuda::set_max_dynamic_smem(loaded.function, kernel.dynamic_smem_bytes()); !s)
      return make_error(ErrorCode::failed_precondition,
                        field + ".dynamic_smem_bytes: " + std::to_string(kernel.dynamic_smem_bytes()) +
                            " not available on this GPU: " + s.error().message);
    loaded.smem_limit = kernel.dynamic_smem_bytes();
  }
  if (static_cast<int>(kernel.block_threads()) > loaded.max_threads)
    return make_error(ErrorCode::failed_precondition,
                      field + ".block_threads: " + std::to_string(kernel.block_threads()) +
                          " exceeds the " + std::to_string(loaded.max_threads) +
                          " threads per block this kernel's registers allow");
  return &loaded;
}

uint64_t fresh_seed() {
  std::random_device device;
  return (static_cast<uint64_t>(device()) << 32) ^ device();
}

v1::EvaluateResponse response_header(const Evaluator::State& state) {
  v1::EvaluateResponse response;
  response.set_gpu_index(state.info.gpu_index());
  response.set_device(state.info.device());
  response.set_driver_version(state.info.driver_version());
  return response;
}

// EvaluateRequest.kernels: all loaded first (a cubin that does not load
// fails the call before any GPU time), then timed interleaved.
Result<v1::EvaluateResponse> time_kernels(Evaluator::State& state,
                                          const v1::EvaluateRequest& request,
                                          const std::function<bool()>& cancelled, uint64_t seed) {
  evict_kernels(state, static_cast<size_t>(request.kernels_size()));
  std::vector<const LoadedKernel*> kernels;
  for (int i = 0; i < request.kernels_size(); ++i) {
    auto loaded = load_kernel(state, request.kernels(i), "kernels[" + std::to_string(i) + "]");
    if (!loaded) return loaded.error();
    kernels.push_back(*loaded);
  }
  Evaluation evaluation(state, request, cancelled, seed);
  auto timings = evaluation.time_interleaved(kernels);
  if (!timings) return timings.error();
  v1::EvaluateResponse response = response_header(state);
  std::string summary;
  for (auto& timing : *timings) {
    summary += fmt::format("{}{}: {:.2f} us [{:.2f}, {:.2f}]", summary.empty() ? "" : "; ",
                           timing.key().substr(0, 16), timing.timing().median_us(),
                           timing.timing().p10_us(), timing.timing().p90_us());
    *response.add_timings() = std::move(timing);
  }
  spdlog::info("timed {} kernels interleaved, {} rounds: {}", kernels.size(),
               request.rounds() > 0 ? request.rounds() : kDefaultTimingRounds, summary);
  return response;
}

}  // namespace

Evaluator::Evaluator(std::unique_ptr<State> state) : state_(std::move(state)) {}
Evaluator::~Evaluator() = default;

Result<std::unique_ptr<Evaluator>> Evaluator::create(int gpu_index) {
  auto devices = cuda::probe_devices();
  if (!devices) return devices.error();
  if (gpu_index < 0 || gpu_index >= static_cast<int>(devices->size()))
    return make_error(ErrorCode::failed_precondition,
                      "GPU " + std::to_string(gpu_index) + " not present (" +
                          std::to_string(devices->size()) + " CUDA device(s))");
  auto api = cuda::driver();
  if (!api) return api.error();
  int version = 0;
  if (auto s = cuda::check((*api)->cuDriverGetVersion(&version), "cuDriverGetVersion"); !s)
    return s.error();

  auto context = cuda::Context::retain_primary(gpu_index);
  if (!context)
    return make_error(ErrorCode::failed_precondition,
                      "GPU " + std::to_string(gpu_index) +
                          ": cannot retain the primary context: " + context.error().message);
  auto state = std::make_unique<State>(std::move(context.value()));
  state->device = (*devices)[static_cast<size_t>(gpu_index)];
  v1::WorkerInfo& info = state->info;
  info.set_gpu_index(gpu_index);
  info.set_device(state->device.name);
  info.set_arch(state->device.arch);
  info.set_sm_count(state->device.sm_count);
  info.set_l2_bytes(state->device.l2_bytes);
  info.set_driver_version(std::to_string(version / 1000) + "." + std::to_string((version % 1000) / 10));
  info.set_pid(static_cast<int>(::getpid()));
  spdlog::info("GPU {}: {} ({}, {} SMs, {} MB L2), driver {}", gpu_index, info.device(),
               info.arch(), info.sm_count(), info.l2_bytes() >> 20, info.driver_version());
  return std::unique_ptr<Evaluator>(new Evaluator(std::move(state)));
}

const v1::WorkerInfo& Evaluator::info() const { return state_->info; }

bool Evaluator::context_lost() const { return state_->lost; }

Result<v1::EvaluateResponse> Evaluator::evaluate(const v1::EvaluateRequest& request,
                                                 const std::function<bool()>& cancelled) {
  State& state = *state_;
  std::lock_guard lock(state.mutex);
  if (state.lost)
    return make_error(ErrorCode::unavailable,
                      "this worker's CUDA context was lost to an earlier fault; it is exiting");
  if (auto e = request_error(request)) return invalid(*e);
  // gRPC calls arrive on any thread; the context must be current on this one.
  if (auto s = state.context.make_current(); !s) return lose_context(state, s.error());

  const uint64_t seed = request.seed() != 0 ? request.seed() : fresh_seed();
  if (request.kernels_size() > 0) return time_kernels(state, request, cancelled, seed);
  evict_kernels(state, 2);
  auto kernel = load_kernel(state, request.kernel(), "kernel");
  if (!kernel) return kernel.error();
  const LoadedKernel* reference = nullptr;
  if (request.validate() && request.has_reference()) {
    auto loaded = load_kernel(state, request.reference(), "reference");
    if (!loaded) return loaded.error();
    reference = *loaded;
  }

  Evaluation evaluation(state, request, cancelled, seed);
  v1::EvaluateResponse response = response_header(state);

  bool may_time = true;
  if (request.validate()) {
    auto record = evaluation.validate(**kernel, reference);
    if (!record) return record.error();
    may_time = record->passed();
    if (!may_time && request.time())
      record->set_detail(record->detail() + "; timing skipped: a candidate is correct before it is timed");
    *response.mutable_validation() = std::move(record.value());
  }
  if (request.time() && may_time) {
    auto timing = evaluation.time(**kernel);
    if (!timing) return timing.error();
    *response.mutable_timing() = std::move(timing.value());
  }
  spdlog::info("evaluated {}: {}{}", request.kernel().key().substr(0, 16),
               request.validate() ? response.validation().detail() : std::string("not validated"),
               response.has_timing()
                   ? fmt::format("; median {:.2f} us ({} launches x {} samples, {} input sets)",
                                 response.timing().median_us(),
                                 response.timing().launches_per_sample(),
                                 response.timing().samples(), response.timing().input_sets())
                   : std::string());
  return response;
}

}  // namespace flashcore::eval
