// The evaluation worker's CPU parts: row sampling for the fp64 reference, the
// timing statistics and sizes, request checks, the reference itself on cases
// with a known answer, and the worker binary on a machine without a driver
// (this build machine has none; there those tests skip).
#include <dlfcn.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/attention_params.cuh"
#include "common/attention_tma_params.cuh"
#include "eval/attention_reference.hpp"
#include "eval/evaluator.hpp"
#include "eval/gpu_reference.hpp"
#include "eval/worker_service.hpp"
#include "scratch_dir.hpp"

extern char** environ;

namespace flashcore::eval {
namespace {

using test_support::ScratchDir;

// ---- Row sampling ----

TEST(SampleRows, ZeroOrEnoughCountMeansEveryRow) {
  std::mt19937_64 rng(1);
  for (int count : {0, 17, 100}) {
    const auto rows = sample_rows(17, count, 64, rng);
    ASSERT_EQ(rows.size(), 17u) << "count " << count;
    for (int i = 0; i < 17; ++i) EXPECT_EQ(rows[i], i);
  }
}

TEST(SampleRows, AlwaysHoldsFirstLastAndTailTileRows) {
  // (seq_q, block_m) -> first row of the last query tile, worked out by hand.
  struct Case {
    int seq_q, block_m, tail_start;
  };
  for (const Case& c : {Case{1000, 128, 896}, Case{256, 128, 128}, Case{17, 64, 0},
                        Case{129, 64, 128}, Case{5000, 64, 4992}}) {
    for (int count : {1, 3, 8, 16}) {
      for (uint64_t seed : {1u, 2u, 3u}) {
        std::mt19937_64 rng(seed);
        const auto rows = sample_rows(c.seq_q, count, c.block_m, rng);
        const std::set<int> unique(rows.begin(), rows.end());
        SCOPED_TRACE("seq_q " + std::to_string(c.seq_q) + " count " + std::to_string(count));
        EXPECT_EQ(unique.size(), rows.size()) << "duplicate rows";
        EXPECT_TRUE(std::is_sorted(rows.begin(), rows.end()));
        EXPECT_TRUE(unique.count(0));
        EXPECT_TRUE(unique.count(c.seq_q - 1));
        EXPECT_TRUE(unique.count(c.tail_start));
        EXPECT_GE(rows.front(), 0);
        EXPECT_LT(rows.back(), c.seq_q);
        const std::set<int> required = {0, c.seq_q - 1, c.tail_start};
        EXPECT_EQ(rows.size(), std::max<size_t>(count, required.size()));
      }
    }
  }
}

TEST(SampleRows, ReproducibleFromTheGeneratorAndSpreadOut) {
  std::mt19937_64 a(42), b(42), c(43);
  const auto first = sample_rows(100000, 64, 128, a);
  EXPECT_EQ(first, sample_rows(100000, 64, 128, b));
  EXPECT_NE(first, sample_rows(100000, 64, 128, c));
  ASSERT_EQ(first.size(), 64u);
  // Random rows land across the range, not only at the fixed ones.
  const int middle = static_cast<int>(
      std::count_if(first.begin(), first.end(), [](int r) { return r > 1000 && r < 99000; }));
  EXPECT_GT(middle, 32);
}

// ---- The GPU fp64 reference: what can be checked without a GPU ----

TEST(GpuReference, CompilesWithNvrtcForHopperAndAmpereWithoutSpillsOrStack) {
  for (const char* arch : {"sm_90a", "sm_80"}) {
    auto built = compile_reference_cubin(arch);
    ASSERT_TRUE(built.ok()) << arch << ": " << built.error().message << "\n" << built.error().detail;
    EXPECT_GT(built->cubin.size(), 1000u) << arch;
    // ptxas -v: "0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads".
    EXPECT_NE(built->log.find("0 bytes stack frame"), std::string::npos) << built->log;
    EXPECT_NE(built->log.find("0 bytes spill stores"), std::string::npos) << built->log;
  }
  auto unknown = compile_reference_cubin("sm_5");
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.error().code, ErrorCode::failed_precondition);
  EXPECT_NE(unknown.error().message.find("sm_5"), std::string::npos) << unknown.error().message;
}

TEST(GpuReference, CostCountsTheKeysEachRowSees) {
  AttentionShape shape;
  shape.batch = 2;
  shape.heads = 3;
  shape.seq_q = 100;
  shape.seq_k = 40;
  shape.head_dim = 64;
  EXPECT_DOUBLE_EQ(reference_cost(shape), 2.0 * 100 * 40 * 64 * 6);
  shape.causal = true;  // rows 0..39 see i + 1 keys, rows 40..99 all 40
  EXPECT_DOUBLE_EQ(reference_cost(shape), 2.0 * (40 * 41 / 2 + 60 * 40) * 64 * 6);
  shape.seq_k = 1000;  // every row sees i + 1 keys
  EXPECT_DOUBLE_EQ(reference_cost(shape), 2.0 * (100 * 101 / 2) * 64 * 6);
}

// ---- Timing arithmetic ----

TEST(AttentionFlops, FourBHSqSkDHalvedWhenCausal) {
  v1::Problem p;
  p.set_batch(2);
  p.set_heads(4);
  p.set_seq_q(128);
  p.set_seq_k(256);
  p.set_head_dim(64);
  EXPECT_DOUBLE_EQ(attention_flops(p), 67108864.0);  // 4*2*4*128*256*64
  p.set_causal(true);
  EXPECT_DOUBLE_EQ(attention_flops(p), 33554432.0);
  p.set_causal(false);
  p.set_seq_k(0);  // 0 means seq_q
  EXPECT_DOUBLE_EQ(attention_flops(p), 33554432.0);
}

TEST(Percentile, InterpolatesBetweenClosestRanks) {
  const std::vector<double> v = {1, 2, 3, 4, 5};
  EXPECT_DOUBLE_EQ(percentile(v, 0.5), 3);
  EXPECT_DOUBLE_EQ(percentile(v, 0.0), 1);
  EXPECT_DOUBLE_EQ(percentile(v, 1.0), 5);
  EXPECT_DOUBLE_EQ(percentile(v, 0.25), 2);
  EXPECT_DOUBLE_EQ(percentile(v, 0.1), 1.4);
  EXPECT_DOUBLE_EQ(percentile({7}, 0.9), 7);
  EXPECT_DOUBLE_EQ(percentile({1, 2}, 0.5), 1.5);  // even count: mean of the middle two
}

TEST(SummarizeTiming, OrderStatisticsAndTflopsAtTheMedian) {
  v1::Problem p;
  p.set_batch(1);
  p.set_heads(1);
  p.set_seq_q(1000);
  p.set_head_dim(64);
  // 4 * 1000 * 1000 * 64 = 256e6 flops; at 20 us that is 12.8 TFLOP/s.
  const auto t = summarize_timing({30, 10, 20, 50, 40}, p);
  EXPECT_DOUBLE_EQ(t.median_us(), 30);
  EXPECT_DOUBLE_EQ(t.min_us(), 10);
  EXPECT_DOUBLE_EQ(t.max_us(), 50);
  EXPECT_DOUBLE_EQ(t.p10_us(), 14);
  EXPECT_DOUBLE_EQ(t.p90_us(), 46);
  EXPECT_EQ(t.samples(), 5);
  EXPECT_NEAR(t.tflops(), 256e6 / 30e-6 / 1e12, 1e-9);
  EXPECT_LE(t.p10_us(), t.median_us());
  EXPECT_LE(t.median_us(), t.p90_us());
  EXPECT_NEAR(summarize_timing({20}, p).tflops(), 12.8, 1e-9);
}

TEST(InputSets, TogetherExceedTwiceL2AndNoMoreThanNeeded) {
  v1::Problem p;
  p.set_batch(1);
  p.set_heads(2);
  p.set_seq_q(128);
  p.set_head_dim(64);
  // Q, K, V, O: 2*128*64 fp16 each; LSE: 2*128 fp32.
  EXPECT_EQ(input_set_bytes(p), 4 * 16384 * 2 + 256 * 4);
  p.set_kv_heads(1);
  p.set_seq_k(512);
  // K and V: 1*512*64 fp16 each.
  EXPECT_EQ(input_set_bytes(p), (2 * 16384 + 2 * 32768) * 2 + 256 * 4);

  const int64_t l2 = 50 << 20;
  for (int64_t set : {int64_t{1000}, int64_t{132096}, int64_t{7} << 20, int64_t{60} << 20,
                      int64_t{3} << 30}) {
    const int sets = input_sets_for(set, l2, int64_t{80} << 30);
    SCOPED_TRACE("set bytes " + std::to_string(set));
    EXPECT_GE(sets, 2) << "a set must never follow itself";
    EXPECT_GT(sets * set, 2 * l2);
    if (sets > 2) {
      EXPECT_LE((sets - 1) * set, 2 * l2) << "more sets than needed";
    }
  }
  // The memory budget caps the count; a set bigger than the budget gets one.
  EXPECT_EQ(input_sets_for(1 << 20, l2, 10 << 20), 10);
  EXPECT_EQ(input_sets_for(int64_t{1} << 30, l2, 1 << 20), 1);
}

TEST(InterleavedOrder, RoundZeroInOrderThenRotatedSoEveryKernelTakesEveryPlace) {
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(eval::interleaved_kernel(0, i, 4), i);
  EXPECT_EQ(eval::interleaved_kernel(1, 0, 4), 1u);  // round 1 starts one kernel later
  EXPECT_EQ(eval::interleaved_kernel(3, 0, 4), 3u);
  for (size_t n : {1u, 2u, 3u, 5u}) {
    // Every round times each kernel once; over n rounds each kernel is at
    // each place once.
    std::vector<std::vector<int>> at(n, std::vector<int>(n, 0));
    for (int round = 0; round < static_cast<int>(n); ++round) {
      std::vector<int> seen(n, 0);
      for (size_t step = 0; step < n; ++step) {
        const size_t k = eval::interleaved_kernel(round, step, n);
        ASSERT_LT(k, n);
        ++seen[k];
        ++at[k][step];
      }
      for (int c : seen) EXPECT_EQ(c, 1) << "n " << n << " round " << round;
    }
    for (const auto& places : at)
      for (int c : places) EXPECT_EQ(c, 1) << "n " << n;
  }
}

TEST(OutputDigest, IsSha256OfTheBytes) {
  // FIPS 180-2 test vector.
  EXPECT_EQ(output_digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  std::string a(4096, '\x3c'), b = a;
  b[4095] = '\x3d';
  EXPECT_NE(output_digest(a), output_digest(b));
}

// ---- Request checks ----

v1::EvaluateRequest valid_request() {
  v1::EvaluateRequest r;
  r.set_validate(true);
  v1::EvalKernel* k = r.mutable_kernel();
  k->set_key(std::string(64, 'a'));
  k->set_lowered_name("_ZN9flashcore13attention_fwd");
  k->set_cubin(std::string(128, '\x7f'));
  k->mutable_config()->set_block_m(128);
  k->set_block_threads(128);
  k->set_dynamic_smem_bytes(49152);
  k->set_abi_version(FLASHCORE_ATTENTION_ABI_VERSION);
  v1::Problem* p = r.mutable_problem();
  p->set_dtype(v1::DTYPE_FP16);
  p->set_head_dim(64);
  p->set_batch(2);
  p->set_heads(4);
  p->set_seq_q(300);
  return r;
}

void expect_rejected(const v1::EvaluateRequest& r, const std::string& field) {
  const auto error = request_error(r);
  ASSERT_TRUE(error.has_value()) << "accepted; expected a complaint about " << field;
  EXPECT_EQ(error->rfind(field + ":", 0), 0u) << *error;
}

TEST(RequestError, AcceptsAWellFormedRequest) {
  EXPECT_EQ(request_error(valid_request()), std::nullopt);
  auto timed = valid_request();
  timed.set_validate(false);
  timed.set_time(true);
  EXPECT_EQ(request_error(timed), std::nullopt);
}

TEST(RequestError, NamesTheOffendingField) {
  auto r = valid_request();
  r.set_validate(false);
  expect_rejected(r, "request");

  r = valid_request();
  r.mutable_kernel()->clear_cubin();
  expect_rejected(r, "kernel.cubin");
  r = valid_request();
  r.mutable_kernel()->clear_lowered_name();
  expect_rejected(r, "kernel.lowered_name");
  r = valid_request();
  r.mutable_kernel()->mutable_config()->set_block_m(0);
  expect_rejected(r, "kernel.config.block_m");
  r = valid_request();
  r.mutable_kernel()->set_block_threads(2048);
  expect_rejected(r, "kernel.block_threads");
  r = valid_request();
  r.mutable_kernel()->set_abi_version(99);  // no family's (1, 2 and 3 are taken)
  expect_rejected(r, "kernel.abi_version");
  r = valid_request();
  *r.mutable_reference() = r.kernel();
  r.mutable_reference()->clear_cubin();
  expect_rejected(r, "reference.cubin");

  r = valid_request();
  r.mutable_problem()->set_dtype(v1::DTYPE_UNSPECIFIED);
  expect_rejected(r, "problem.dtype");
  r = valid_request();
  r.mutable_problem()->set_head_dim(48);
  expect_rejected(r, "problem.head_dim");
  r = valid_request();
  r.mutable_problem()->set_kv_heads(3);
  expect_rejected(r, "problem.kv_heads");
  r = valid_request();
  r.mutable_problem()->set_seq_q(0);
  expect_rejected(r, "problem.seq_q");
  r = valid_request();
  r.mutable_problem()->set_layout(static_cast<v1::Layout>(7));
  expect_rejected(r, "problem.layout");
  r = valid_request();
  r.mutable_problem()->set_batch(4096);
  r.mutable_problem()->set_heads(64);
  r.mutable_problem()->set_seq_q(8192);
  r.mutable_problem()->set_head_dim(256);  // 2^39 elements
  expect_rejected(r, "problem");

  r = valid_request();
  r.mutable_validation()->set_determinism_runs(-1);
  expect_rejected(r, "validation.determinism_runs");
  r = valid_request();
  r.mutable_validation()->set_rel_tolerance(std::nan(""));
  expect_rejected(r, "validation.rel_tolerance");
  r = valid_request();
  r.mutable_validation()->set_reference_rows(-4);
  expect_rejected(r, "validation.reference_rows");
  r = valid_request();
  r.mutable_timing()->set_repetitions(-1);
  expect_rejected(r, "timing.repetitions");
  r = valid_request();
  r.mutable_timing()->set_target_loop_ms(1e9);
  expect_rejected(r, "timing.target_loop_ms");
}

// Several kernels timed together: `kernels` instead of `kernel`, times only.
v1::EvaluateRequest timed_kernels_request(int n) {
  v1::EvaluateRequest r = valid_request();
  const v1::EvalKernel kernel = r.kernel();
  r.clear_kernel();
  r.set_validate(false);
  r.set_time(true);
  for (int i = 0; i < n; ++i) {
    v1::EvalKernel* k = r.add_kernels();
    *k = kernel;
    k->set_key(std::string(64, static_cast<char>('a' + i)));
  }
  return r;
}

TEST(RequestError, AcceptsSeveralKernelsToTimeTogether) {
  for (int n : {1, 3, kMaxTimedKernels}) {
    EXPECT_EQ(request_error(timed_kernels_request(n)), std::nullopt) << n << " kernels";
  }
  auto r = timed_kernels_request(3);
  r.set_rounds(kMaxTimingRounds);
  EXPECT_EQ(request_error(r), std::nullopt);
  EXPECT_EQ(request_kernels_label(r),
            "3 kernels (" + std::string(16, 'a') + ", " + std::string(16, 'b') + ", " +
                std::string(16, 'c') + ")");
  EXPECT_EQ(request_kernels_label(valid_request()), std::string(16, 'a'));
}

TEST(RequestError, SeveralKernelsNameTheOffendingField) {
  // Zero kernels: the single-kernel request then, which has none.
  auto r = timed_kernels_request(0);
  expect_rejected(r, "kernel");
  r.set_rounds(3);  // rounds without kernels
  expect_rejected(r, "rounds");

  expect_rejected(timed_kernels_request(kMaxTimedKernels + 1), "kernels");
  r = timed_kernels_request(2);
  *r.mutable_kernel() = r.kernels(0);  // both forms at once
  expect_rejected(r, "kernel");
  r = timed_kernels_request(2);
  r.set_time(false);
  expect_rejected(r, "time");
  r = timed_kernels_request(2);
  r.set_validate(true);
  expect_rejected(r, "validate");
  r = timed_kernels_request(2);
  *r.mutable_reference() = r.kernels(0);
  expect_rejected(r, "reference");
  r = timed_kernels_request(2);
  r.set_sanitizer_tool("memcheck");
  expect_rejected(r, "sanitizer_tool");
  r = timed_kernels_request(2);
  r.set_rounds(-1);
  expect_rejected(r, "rounds");
  r.set_rounds(kMaxTimingRounds + 1);
  expect_rejected(r, "rounds");
  // Each kernel is checked as `kernel` is, named by its index.
  r = timed_kernels_request(3);
  r.mutable_kernels(2)->clear_cubin();
  expect_rejected(r, "kernels[2].cubin");
  r = timed_kernels_request(3);
  r.mutable_kernels(1)->set_block_threads(0);
  expect_rejected(r, "kernels[1].block_threads");
  // One problem for all: kernels of two families (the ABI fills the params).
  r = timed_kernels_request(3);
  r.mutable_kernels(1)->set_abi_version(FLASHCORE_ATTENTION_TMA_ABI_VERSION);
  expect_rejected(r, "kernels[1].abi_version");
  // The shared problem and timing options are checked as for one kernel.
  r = timed_kernels_request(2);
  r.mutable_problem()->set_head_dim(48);
  expect_rejected(r, "problem.head_dim");
  r = timed_kernels_request(2);
  r.mutable_timing()->set_warmup(-2);
  expect_rejected(r, "timing.warmup");
}

TEST(EvalKernelFromHandle, CarriesWhatTheWorkerLaunchesWith) {
  v1::KernelHandle h;
  h.set_key(std::string(64, 'b'));
  h.set_lowered_name("_Z3foov");
  h.set_cubin("cubin bytes");
  h.mutable_config()->set_block_m(64);
  h.mutable_config()->set_warps(4);
  h.mutable_launch()->mutable_block()->set_x(128);
  h.mutable_launch()->mutable_block()->set_y(1);
  h.mutable_launch()->mutable_block()->set_z(1);
  h.mutable_launch()->set_dynamic_smem_bytes(40960);
  h.mutable_abi()->set_abi_version(1);
  h.mutable_resources()->set_registers(168);
  h.mutable_resources()->set_spill_store_bytes(8);
  const v1::EvalKernel k = eval_kernel_from_handle(h);
  EXPECT_EQ(k.key(), h.key());
  EXPECT_EQ(k.lowered_name(), "_Z3foov");
  EXPECT_EQ(k.cubin(), "cubin bytes");
  EXPECT_EQ(k.config().block_m(), 64);
  EXPECT_EQ(k.block_threads(), 128u);
  EXPECT_EQ(k.dynamic_smem_bytes(), 40960u);
  EXPECT_EQ(k.abi_version(), 1u);
  ASSERT_TRUE(k.has_resources());
  EXPECT_EQ(k.resources().registers(), 168);
  EXPECT_EQ(k.resources().spill_store_bytes(), 8);
}

TEST(DefaultTolerance, Fp16TighterThanBf16) {
  EXPECT_DOUBLE_EQ(default_tolerance(DType::fp16), 2e-3);
  EXPECT_DOUBLE_EQ(default_tolerance(DType::bf16), 1e-2);
}

// ---- The fp64 reference and its inputs ----

TEST(Reference, SixteenBitConversionsMatchTheFormats) {
  EXPECT_EQ(float_to_fp16(1.0f), 0x3c00);
  EXPECT_EQ(float_to_fp16(-2.0f), 0xc000);
  EXPECT_EQ(float_to_fp16(65504.0f), 0x7bff);     // largest finite half
  EXPECT_EQ(float_to_fp16(65520.0f), 0x7c00);     // rounds up to infinity
  EXPECT_EQ(float_to_fp16(1.0f + 1.0f / 2048), 0x3c00);  // tie to even
  EXPECT_EQ(fp16_to_float(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(bf16_to_float(0xc040), -3.0f);
  EXPECT_TRUE(std::isnan(fp16_to_float(0xffff)));  // the poison pattern is NaN
  EXPECT_TRUE(std::isnan(bf16_to_float(0xffff)));
}

TEST(Reference, RandomTensorIsStandardNormalAndExactlyRepresentable) {
  for (DType dtype : {DType::fp16, DType::bf16}) {
    std::mt19937_64 rng(7);
    std::vector<uint16_t> bits;
    std::vector<float> values;
    random_tensor(100000, dtype, rng, bits, values);
    ASSERT_EQ(bits.size(), 100000u);
    double sum = 0, sum_sq = 0;
    for (size_t i = 0; i < values.size(); ++i) {
      ASSERT_EQ(values[i], element_to_float(dtype, bits[i])) << i;
      sum += values[i];
      sum_sq += double(values[i]) * values[i];
    }
    const double mean = sum / values.size();
    EXPECT_NEAR(mean, 0.0, 0.02);
    EXPECT_NEAR(std::sqrt(sum_sq / values.size() - mean * mean), 1.0, 0.02);
  }
}

TEST(Reference, OneKeyRowGivesItsValueRow) {
  // softmax over a single key is 1: the output is V's row, the LSE the score.
  AttentionShape shape;
  shape.batch = 1;
  shape.heads = 2;
  shape.kv_heads = 1;
  shape.seq_q = 3;
  shape.seq_k = 1;
  shape.head_dim = 4;
  std::vector<float> q(2 * 3 * 4), k = {1, 0, 2, 0}, v = {0.5f, -1, 3, 8};
  for (size_t i = 0; i < q.size(); ++i) q[i] = 0.25f * static_cast<float>(i % 5);
  const auto ref = reference_attention(shape, q, k, v, 0.5, 2);
  for (int h = 0; h < 2; ++h)
    for (int i = 0; i < 3; ++i) {
      const int64_t r = h * 3 + i;
      for (int d = 0; d < 4; ++d) EXPECT_DOUBLE_EQ(ref.out[r * 4 + d], v[d]);
      const double score =
          0.5 * (q[tensor_offset(shape, 2, 3, 0, h, i, 0)] * 1.0 +
                 q[tensor_offset(shape, 2, 3, 0, h, i, 2)] * 2.0);
      EXPECT_DOUBLE_EQ(ref.lse[r], score);
    }
}

TEST(Reference, CausalFirstRowSeesOnlyTheFirstKey) {
  AttentionShape shape;
  shape.seq_q = shape.seq_k = 4;
  shape.head_dim = 8;
  shape.causal = true;
  std::mt19937_64 rng(3);
  std::vector<uint16_t> bits;
  std::vector<float> q, k, v;
  random_tensor(32, DType::fp16, rng, bits, q);
  random_tensor(32, DType::fp16, rng, bits, k);
  random_tensor(32, DType::fp16, rng, bits, v);
  const auto ref = reference_attention(shape, q, k, v, 1.0, 1);
  for (int d = 0; d < 8; ++d) EXPECT_DOUBLE_EQ(ref.out[d], v[d]);
}

TEST(Reference, SampledRowsEqualTheFullReferenceOnThoseRows) {
  for (bool bhsd : {false, true}) {
    AttentionShape shape;
    shape.batch = 2;
    shape.heads = 4;
    shape.kv_heads = 2;
    shape.seq_q = 37;
    shape.seq_k = 53;
    shape.head_dim = 16;
    shape.causal = true;
    shape.bhsd = bhsd;
    std::mt19937_64 rng(11);
    std::vector<uint16_t> bits;
    std::vector<float> q, k, v;
    random_tensor(size_t(2) * 4 * 37 * 16, DType::bf16, rng, bits, q);
    random_tensor(size_t(2) * 2 * 53 * 16, DType::bf16, rng, bits, k);
    random_tensor(size_t(2) * 2 * 53 * 16, DType::bf16, rng, bits, v);
    const auto full = reference_attention(shape, q, k, v, 0.25, 3);
    std::vector<QueryRow> rows;
    for (int b = 0; b < 2; ++b)
      for (int h = 0; h < 4; ++h)
        for (int i : sample_rows(37, 5, 16, rng)) rows.push_back({b, h, i});
    const auto sampled = reference_attention_rows(shape, q, k, v, 0.25, rows, 3);
    ASSERT_EQ(sampled.out.size(), rows.size() * 16);
    for (size_t n = 0; n < rows.size(); ++n) {
      const int64_t r = (int64_t(rows[n].batch) * 4 + rows[n].head) * 37 + rows[n].row;
      EXPECT_EQ(sampled.lse[n], full.lse[r]);
      for (int d = 0; d < 16; ++d) EXPECT_EQ(sampled.out[n * 16 + d], full.out[r * 16 + d]);
    }

    // An output in memory layout equal to the reference compares as exact;
    // one wrong element on a sampled row is seen, NaN counted apart.
    std::vector<float> out(q.size());
    for (int b = 0; b < 2; ++b)
      for (int h = 0; h < 4; ++h)
        for (int i = 0; i < 37; ++i)
          for (int d = 0; d < 16; ++d)
            out[tensor_offset(shape, 4, 37, b, h, i, d)] =
                static_cast<float>(full.out[((int64_t(b) * 4 + h) * 37 + i) * 16 + d]);
    auto stats = compare_rows(shape, out, rows, sampled.out);
    EXPECT_LT(stats.rel_error, 1e-6);
    EXPECT_EQ(stats.non_finite, 0);
    out[tensor_offset(shape, 4, 37, rows[3].batch, rows[3].head, rows[3].row, 5)] += 1.0f;
    out[tensor_offset(shape, 4, 37, rows[4].batch, rows[4].head, rows[4].row, 0)] = std::nanf("");
    stats = compare_rows(shape, out, rows, sampled.out);
    EXPECT_NEAR(stats.max_abs_error, 1.0, 1e-6);
    EXPECT_GT(stats.rel_error, 1e-3);
    EXPECT_EQ(stats.non_finite, 1);
    // The max-abs gate's scale: the largest |ref| compared (the NaN's row
    // skipped), the same from the full comparison.
    double ref_max = 0;
    for (size_t n = 0; n < rows.size(); ++n)
      if (n != 4)
        for (int d = 0; d < 16; ++d) ref_max = std::max(ref_max, std::abs(sampled.out[n * 16 + d]));
    EXPECT_GT(ref_max, 0);
    EXPECT_LE(stats.ref_max_abs, ref_max + 1e-12);
    EXPECT_GE(stats.ref_max_abs, ref_max * 0.5);
    double full_max = 0;
    for (double x : full.out) full_max = std::max(full_max, std::abs(x));
    const double compared_max = compare_output(shape, out, full.out).ref_max_abs;
    EXPECT_LE(compared_max, full_max);
    EXPECT_GE(compared_max, full_max * 0.5);
  }
}

// ---- Stop latch ----

TEST(StopLatch, FirstReasonWinsAndWakesTheWaiter) {
  StopLatch latch;
  EXPECT_FALSE(latch.reason().has_value());
  std::thread setter([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    latch.set(StopReason::context_lost);
    latch.set(StopReason::requested);
  });
  EXPECT_EQ(latch.wait(), StopReason::context_lost);
  setter.join();
  EXPECT_EQ(latch.reason(), StopReason::context_lost);
}

// ---- The worker binary without a driver ----

bool libcuda_present() {
  void* handle = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (handle != nullptr) dlclose(handle);
  return handle != nullptr;
}

struct Exit {
  int code = -1;  // -1: killed by a signal or timed out
  std::string err;
};

// Runs the worker with `args`, stderr to a file, and waits up to 30 s.
Exit run_worker(const ScratchDir& dir, const std::vector<std::string>& args) {
  std::vector<std::string> argv = {FLASHCORE_WORKER_PATH};
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<char*> raw;
  for (auto& a : argv) raw.push_back(a.data());
  raw.push_back(nullptr);
  const std::string err_path = (dir / "stderr").string(), out_path = (dir / "stdout").string();
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_addopen(&actions, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  pid_t pid = -1;
  const int spawned = posix_spawn(&pid, raw[0], &actions, nullptr, raw.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  Exit exit;
  if (spawned != 0) {
    exit.err = "posix_spawn failed";
    return exit;
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  int status = 0;
  while (waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      exit.err = "timed out";
      return exit;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (WIFEXITED(status)) exit.code = WEXITSTATUS(status);
  exit.err = test_support::read_file(err_path) + test_support::read_file(out_path);
  return exit;
}

TEST(WorkerBinary, WithoutADriverExitsTwoNamingLibcuda) {
  if (libcuda_present()) GTEST_SKIP() << "libcuda.so.1 is present: the no-driver path cannot run here";
  ScratchDir dir;
  const auto socket = dir / "gpu0.sock";
  const Exit exit = run_worker(dir, {"--socket", socket.string(), "--gpu", "0"});
  EXPECT_EQ(exit.code, 2) << exit.err;
  EXPECT_NE(exit.err.find("libcuda.so.1"), std::string::npos) << exit.err;
  // One line: the daemon logs it as the reason the GPU has no worker.
  EXPECT_EQ(std::count(exit.err.begin(), exit.err.end(), '\n'), 1) << exit.err;
  EXPECT_FALSE(std::filesystem::exists(socket)) << "no GPU, so nothing may listen";
}

TEST(WorkerBinary, EvaluatorCreateWithoutADriverIsFailedPrecondition) {
  if (libcuda_present()) GTEST_SKIP() << "libcuda.so.1 is present: the no-driver path cannot run here";
  auto evaluator = Evaluator::create(0);
  ASSERT_FALSE(evaluator.ok());
  EXPECT_EQ(evaluator.error().code, ErrorCode::failed_precondition);
  EXPECT_NE(evaluator.error().message.find("libcuda.so.1"), std::string::npos);
}

TEST(WorkerBinary, UsageErrorsExitOneAndHelpExitsZero) {
  ScratchDir dir;
  Exit exit = run_worker(dir, {"--gpu", "0"});  // no --socket
  EXPECT_EQ(exit.code, 1) << exit.err;
  EXPECT_NE(exit.err.find("--socket"), std::string::npos) << exit.err;
  exit = run_worker(dir, {"--socket", (dir / "s").string(), "--log-level", "loud"});
  EXPECT_EQ(exit.code, 1) << exit.err;
  exit = run_worker(dir, {"--help"});
  EXPECT_EQ(exit.code, 0) << exit.err;
  EXPECT_NE(exit.err.find("--socket"), std::string::npos) << exit.err;
}

}  // namespace
}  // namespace flashcore::eval
