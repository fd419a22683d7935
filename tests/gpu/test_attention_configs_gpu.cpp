// Every valid tile config of the sweep, for every head_dim the template takes,
// causal and not: compiled by the daemon, fetched over gRPC, launched, and
// compared with one fp64 reference per class on a ragged shape. A config the
// validity check accepts must compute the right answer, spills or not. The
// sweep is the tuner's default SearchSpace, so it covers every field the
// tuner searches (q_placement and smem_layout included) and follows the
// space when an axis is added.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <future>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "eval/attention_reference.hpp"
#include "gpu_environment.hpp"
#include "tuning/search_space.hpp"
#include "family/tile_config.hpp"

namespace flashcore {
namespace {

struct ConfigClass {
  v1::DType dtype;
  int head_dim;
  bool causal;
};

std::string class_name(const ConfigClass& c) {
  std::ostringstream out;
  out << (c.dtype == v1::DTYPE_FP16 ? "fp16" : "bf16") << "_D" << c.head_dim
      << (c.causal ? "_causal" : "_full");
  return out.str();
}

class SM90_AttentionConfigs : public ::testing::TestWithParam<ConfigClass> {
 protected:
  void SetUp() override {
    if (!testing::gpu_environment().skip_reason.empty())
      GTEST_SKIP() << testing::gpu_environment().skip_reason;
  }
};

TEST_P(SM90_AttentionConfigs, EveryValidConfigMatchesFp64Reference) {
  const ConfigClass& cls = GetParam();
  auto& env = testing::gpu_environment();
  const auto arch = *find_arch("sm_90a");
  ProblemClass problem_class;
  problem_class.dtype = cls.dtype == v1::DTYPE_FP16 ? DType::fp16 : DType::bf16;
  problem_class.head_dim = cls.head_dim;
  problem_class.causal = cls.causal;

  auto space = SearchSpace::create(problem_class, arch);
  ASSERT_TRUE(space.ok()) << space.error().message;
  const std::vector<TileConfig>& configs = space->configs();
  ASSERT_FALSE(configs.empty());

  // Ragged on purpose: 300 is a multiple of no tile size in the sweep.
  v1::Problem problem;
  problem.set_dtype(cls.dtype);
  problem.set_head_dim(cls.head_dim);
  problem.set_causal(cls.causal);
  problem.set_batch(1);
  problem.set_heads(2);
  problem.set_seq_q(300);
  problem.set_layout(v1::LAYOUT_BSHD);
  eval::AttentionShape shape;
  shape.heads = shape.kv_heads = 2;
  shape.seq_q = shape.seq_k = 300;
  shape.head_dim = cls.head_dim;
  shape.causal = cls.causal;

  std::mt19937_64 rng(std::random_device{}());
  const size_t count = size_t(shape.heads) * shape.seq_q * shape.head_dim;
  std::vector<uint16_t> q_bits, k_bits, v_bits;
  std::vector<float> q, k, v;
  testing::random_tensor(count, cls.dtype, rng, q_bits, q);
  testing::random_tensor(count, cls.dtype, rng, k_bits, k);
  testing::random_tensor(count, cls.dtype, rng, v_bits, v);
  const auto ref = eval::reference_attention(shape, q, k, v, 1.0 / std::sqrt(double(cls.head_dim)),
                                                std::max(1u, std::thread::hardware_concurrency()));
  auto q_dev = testing::upload_bits(q_bits), k_dev = testing::upload_bits(k_bits),
       v_dev = testing::upload_bits(v_bits);
  auto o_dev = cuda::DeviceBuffer::allocate(count * 2);
  ASSERT_TRUE(o_dev.ok());
  const AttentionParams params = client::make_attention_params(problem, q_dev.get(), k_dev.get(),
                                                               v_dev.get(), o_dev->get());

  // Compiles run ahead of the launches, in parallel in the daemon's pool, but
  // at most kInFlight at once: a class has up to 180 configs, past the
  // daemon's default compile queue (64), which would refuse the rest.
  constexpr size_t kInFlight = 32;
  std::vector<std::future<Result<v1::KernelHandle>>> handles(configs.size());
  auto start_compile = [&](size_t i) {
    const TileConfig& c = configs[i];
    v1::KernelRequest request;
    request.set_template_id("attention_fwd");
    *request.mutable_problem() = problem;
    request.mutable_config()->set_block_m(c.block_m);
    request.mutable_config()->set_block_n(c.block_n);
    request.mutable_config()->set_warps(c.warps);
    request.mutable_config()->set_stages(c.stages);
    // Space members are concrete: each enum field named, never left to the rule.
    request.mutable_config()->set_q_placement(c.q_placement == QPlacement::registers
                                                  ? v1::Q_PLACEMENT_REGISTERS
                                                  : v1::Q_PLACEMENT_SHARED);
    request.mutable_config()->set_smem_layout(c.smem_layout == SmemLayout::swizzled
                                                  ? v1::SMEM_LAYOUT_SWIZZLED
                                                  : v1::SMEM_LAYOUT_PADDED);
    handles[i] = std::async(std::launch::async, [&env, request] { return env.client->compile(request); });
  };
  for (size_t i = 0; i < std::min(kInFlight, configs.size()); ++i) start_compile(i);

  const double tolerance = cls.dtype == v1::DTYPE_FP16 ? 2e-3 : 1e-2;
  int spilling = 0;
  double worst = 0;
  std::vector<uint16_t> o_bits(count);
  std::vector<float> out(count);
  for (size_t i = 0; i < configs.size(); ++i) {
    const auto& c = configs[i];
    const std::string label = config_label(c);
    auto handle = handles[i].get();
    if (i + kInFlight < configs.size()) start_compile(i + kInFlight);
    ASSERT_TRUE(handle.ok()) << label << ": " << handle.error().message << "\n" << handle.error().detail;
    EXPECT_EQ(handle->name_expression(), name_expression(problem_class, c)) << label;
    spilling += handle->resources().spill_store_bytes() > 0 ? 1 : 0;
    ASSERT_TRUE(o_dev->fill_bytes(0xff).ok());  // poison: NaN in fp16 and bf16
    auto launched = env.launcher->launch(handle.value(), params, env.stream->get());
    ASSERT_TRUE(launched.ok()) << label << ": " << launched.error().message;
    ASSERT_TRUE(env.stream->synchronize().ok()) << label;
    ASSERT_TRUE(o_dev->download(o_bits.data(), count * 2).ok());
    for (size_t j = 0; j < count; ++j)
      out[j] = cls.dtype == v1::DTYPE_FP16 ? eval::fp16_to_float(o_bits[j])
                                           : eval::bf16_to_float(o_bits[j]);
    const auto stats = eval::compare_output(shape, out, ref.out);
    EXPECT_EQ(stats.non_finite, 0) << label << " left outputs unwritten";
    EXPECT_LE(stats.rel_error, tolerance) << label;
    worst = std::max(worst, stats.rel_error);
  }
  std::printf("[ configs  ] %-16s %3zu valid configs correct, worst rel %.3e, %d spill\n",
              class_name(cls).c_str(), configs.size(), worst, spilling);
}

std::vector<ConfigClass> classes() {
  std::vector<ConfigClass> all;
  for (int d : kSupportedHeadDims)
    for (bool causal : {false, true})
      for (auto dtype : {v1::DTYPE_FP16, v1::DTYPE_BF16}) all.push_back({dtype, d, causal});
  return all;
}

INSTANTIATE_TEST_SUITE_P(Classes, SM90_AttentionConfigs, ::testing::ValuesIn(classes()),
                         [](const auto& info) { return class_name(info.param); });

}  // namespace
}  // namespace flashcore
