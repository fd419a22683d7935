// End-to-end on a GPU: kernels are compiled by a flashcored daemon, fetched
// over gRPC by key, launched in this process through the client library, and
// compared with an fp64 reference on fresh random inputs and poisoned outputs.
//
// The daemon is the one at $FLASHCORE_ADDRESS when set (the device script
// starts it from the bundle), else an in-process one on a loopback port.
// Every test skips with the reason where there is no CUDA driver or device.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "eval/attention_reference.hpp"
#include "gpu_environment.hpp"

namespace flashcore {
namespace {

namespace v1 = ::flashcore::v1;
using eval::AttentionShape;

struct AttentionCase {
  std::string template_id = "attention_fwd";  // or the Hopper family, "attention_fwd_sm90"
  v1::DType dtype = v1::DTYPE_FP16;
  int head_dim = 64;
  bool causal = false;
  int batch = 1, heads = 2, kv_heads = 0, seq_q = 128, seq_k = 0;
  bool bhsd = false;
  v1::TileConfig config;  // empty = {128, 64, 4, 2}; 8 warps for D 96/128, 64x32 for D 256 (no spills)
                          // q_placement / smem_layout UNSPECIFIED = the family's rule

  std::string name() const {
    std::ostringstream out;
    if (hopper()) out << "sm90_";
    if (decode()) out << "dec_";
    out << (dtype == v1::DTYPE_FP16 ? "fp16" : "bf16") << "_D" << head_dim
        << (causal ? "_causal" : "_full") << "_B" << batch << "H" << heads;
    if (kv_heads) out << "KV" << kv_heads;
    out << "_S" << seq_q;
    if (seq_k) out << "x" << seq_k;
    if (bhsd) out << "_bhsd";
    if (config.block_m())
      out << "_cfg" << config.block_m() << "x" << config.block_n() << "w" << config.warps()
          << "s" << config.stages();
    // config_label's suffixes, with '_' for '-' (test names allow no '-').
    if (config.q_placement() == v1::Q_PLACEMENT_REGISTERS) out << "_qreg";
    if (config.q_placement() == v1::Q_PLACEMENT_SHARED) out << "_qsmem";
    if (config.smem_layout() == v1::SMEM_LAYOUT_SWIZZLED) out << "_swz";
    if (config.smem_layout() == v1::SMEM_LAYOUT_PADDED) out << "_pad";
    if (config.pingpong()) out << "_pp";
    if (config.separate_o()) out << "_so";
    if (config.persistent()) out << "_pers";
    if (config.fused_combine()) out << "_fused";
    if (config.splits()) out << "_k" << config.splits();
    return out.str();
  }
  bool hopper() const { return template_id == "attention_fwd_sm90"; }
  bool decode() const { return template_id == "attention_decode"; }
};

std::ostream& operator<<(std::ostream& out, const AttentionCase& c) { return out << c.name(); }

class SM90_Attention : public ::testing::TestWithParam<AttentionCase> {
 protected:
  void SetUp() override {
    if (!testing::gpu_environment().skip_reason.empty())
      GTEST_SKIP() << testing::gpu_environment().skip_reason;
  }
};

TEST_P(SM90_Attention, MatchesFp64Reference) {
  const AttentionCase& c = GetParam();
  auto& env = testing::gpu_environment();

  if (c.hopper()) {
    auto devices = cuda::probe_devices();
    if (!devices || devices->empty() || (*devices)[0].cc_major != 9)
      GTEST_SKIP() << "the Hopper family needs a compute capability 9.0 GPU";
  }
  v1::KernelRequest request;
  request.set_template_id(c.template_id);
  request.set_accepts_multi_kernel(c.decode());  // this test launches through KernelLauncher
  v1::Problem* problem = request.mutable_problem();
  problem->set_dtype(c.dtype);
  problem->set_head_dim(c.head_dim);
  problem->set_causal(c.causal);
  problem->set_batch(c.batch);
  problem->set_heads(c.heads);
  problem->set_kv_heads(c.kv_heads);
  problem->set_seq_q(c.seq_q);
  problem->set_seq_k(c.seq_k);
  problem->set_layout(c.bhsd ? v1::LAYOUT_BHSD : v1::LAYOUT_BSHD);
  if (c.config.block_m()) {
    *request.mutable_config() = c.config;
  } else if (c.hopper() || c.decode()) {
    // no config: the family's default for the head dim (decode: and the shape)
  } else {
    // D 256 needs small tiles to fit registers and shared memory.
    request.mutable_config()->set_block_m(c.head_dim >= 256 ? 64 : 128);
    request.mutable_config()->set_block_n(c.head_dim >= 256 ? 32 : 64);
    request.mutable_config()->set_warps(c.head_dim == 96 || c.head_dim == 128 ? 8 : 4);
    request.mutable_config()->set_stages(2);
  }
  request.set_omit_cubin(true);

  // Compile (metadata only), then fetch the cubin by key: the served path.
  auto compiled = env.client->compile(request);
  ASSERT_TRUE(compiled.ok()) << compiled.error().message << "\n" << compiled.error().detail;
  auto handle = env.client->get_kernel(compiled->key(), false, problem);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  ASSERT_FALSE(handle->cubin().empty());
  EXPECT_EQ(handle->resources().spill_store_bytes(), 0) << "kernel spills registers";
  EXPECT_EQ(handle->resources().stack_frame_bytes(), 0) << "kernel uses local memory";
  if (c.hopper()) {
    EXPECT_EQ(handle->abi().abi_version(), 2u);
    EXPECT_EQ(handle->abi().tensor_maps_size(), 4);
  } else if (c.decode()) {
    EXPECT_EQ(handle->abi().abi_version(), 3u);
    EXPECT_GE(handle->steps_size(), 1);
  } else {
    // The kernel is the one asked for; UNSPECIFIED comes back as the rule's choice.
    EXPECT_NE(handle->config().q_placement(), v1::Q_PLACEMENT_UNSPECIFIED);
    EXPECT_NE(handle->config().smem_layout(), v1::SMEM_LAYOUT_UNSPECIFIED);
  }
  if (c.config.q_placement() != v1::Q_PLACEMENT_UNSPECIFIED) {
    EXPECT_EQ(handle->config().q_placement(), c.config.q_placement());
  }
  if (c.config.smem_layout() != v1::SMEM_LAYOUT_UNSPECIFIED) {
    EXPECT_EQ(handle->config().smem_layout(), c.config.smem_layout());
  }

  AttentionShape shape;
  shape.batch = c.batch;
  shape.heads = c.heads;
  shape.kv_heads = c.kv_heads ? c.kv_heads : c.heads;
  shape.seq_q = c.seq_q;
  shape.seq_k = c.seq_k ? c.seq_k : c.seq_q;
  shape.head_dim = c.head_dim;
  shape.causal = c.causal;
  shape.bhsd = c.bhsd;

  std::mt19937_64 rng(std::random_device{}());  // fresh inputs every run
  std::vector<uint16_t> q_bits, k_bits, v_bits;
  std::vector<float> q, k, v;
  const size_t q_count = size_t(shape.batch) * shape.heads * shape.seq_q * shape.head_dim;
  const size_t kv_count = size_t(shape.batch) * shape.kv_heads * shape.seq_k * shape.head_dim;
  testing::random_tensor(q_count, c.dtype, rng, q_bits, q);
  testing::random_tensor(kv_count, c.dtype, rng, k_bits, k);
  testing::random_tensor(kv_count, c.dtype, rng, v_bits, v);

  auto q_dev = testing::upload_bits(q_bits), k_dev = testing::upload_bits(k_bits),
       v_dev = testing::upload_bits(v_bits);
  auto o_dev = cuda::DeviceBuffer::allocate(q_count * 2);
  auto lse_dev = cuda::DeviceBuffer::allocate(size_t(shape.batch) * shape.heads * shape.seq_q * 4);
  ASSERT_TRUE(o_dev.ok() && lse_dev.ok());
  // Poison: 0xFFFF is NaN in fp16 and bf16, 0xFFFFFFFF in fp32. Any output
  // the kernel fails to write stays non-finite and is counted below.
  ASSERT_TRUE(o_dev->fill_bytes(0xff).ok());
  ASSERT_TRUE(lse_dev->fill_bytes(0xff).ok());

  const AttentionParams params = client::make_attention_params(
      *problem, q_dev.get(), k_dev.get(), v_dev.get(), o_dev->get(),
      reinterpret_cast<float*>(lse_dev->get()));
  auto launched = env.launcher->launch(handle.value(), params, env.stream->get());
  ASSERT_TRUE(launched.ok()) << launched.error().message;
  auto synced = env.stream->synchronize();
  ASSERT_TRUE(synced.ok()) << synced.error().message;

  std::vector<uint16_t> o_bits(q_count);
  std::vector<float> lse_out(size_t(shape.batch) * shape.heads * shape.seq_q);
  ASSERT_TRUE(o_dev->download(o_bits.data(), o_bits.size() * 2).ok());
  ASSERT_TRUE(lse_dev->download(lse_out.data(), lse_out.size() * 4).ok());
  std::vector<float> out(q_count);
  for (size_t i = 0; i < q_count; ++i)
    out[i] = c.dtype == v1::DTYPE_FP16 ? eval::fp16_to_float(o_bits[i])
                                       : eval::bf16_to_float(o_bits[i]);

  const auto ref = eval::reference_attention(shape, q, k, v, 1.0 / std::sqrt(double(c.head_dim)),
                                                std::max(1u, std::thread::hardware_concurrency()));
  const auto stats = eval::compare_output(shape, out, ref.out);
  double lse_max_error = 0;
  int64_t lse_non_finite = 0;
  for (size_t i = 0; i < lse_out.size(); ++i) {
    if (!std::isfinite(lse_out[i])) {
      ++lse_non_finite;
      continue;
    }
    lse_max_error = std::max(lse_max_error, std::abs(double(lse_out[i]) - ref.lse[i]));
  }
  const double tolerance = c.dtype == v1::DTYPE_FP16 ? 2e-3 : 1e-2;
  std::printf("[ result   ] %-44s rel %.3e  max_abs %.3e  lse_max %.2e  regs %d\n",
              c.name().c_str(), stats.rel_error, stats.max_abs_error, lse_max_error,
              handle->resources().registers());
  RecordProperty("rel_error", std::to_string(stats.rel_error));
  RecordProperty("max_abs_error", std::to_string(stats.max_abs_error));
  EXPECT_EQ(stats.non_finite, 0) << "outputs left unwritten (still poisoned) or non-finite";
  EXPECT_LE(stats.rel_error, tolerance);
  EXPECT_EQ(lse_non_finite, 0);
  EXPECT_LE(lse_max_error, 1e-2);
}

// The Hopper family through the same path: its default config per head dim
// over ragged lengths, S = 1, seq_k != seq_q, GQA, both layouts, and the
// other structural choices (one and three consumer warpgroups, no ping-pong,
// not persistent, O through the Q tile, one and three stages).
std::vector<AttentionCase> hopper_cases() {
  std::vector<AttentionCase> all;
  AttentionCase base;
  base.template_id = "attention_fwd_sm90";
  for (auto dtype : {v1::DTYPE_FP16, v1::DTYPE_BF16})
    for (int d : {64, 128, 256})
      for (bool causal : {false, true})
        for (int s : {1, 17, 500, 2048}) {
          AttentionCase c = base;
          c.dtype = dtype;
          c.head_dim = d;
          c.causal = causal;
          c.seq_q = s;
          c.batch = s >= 2048 ? 1 : 2;
          all.push_back(c);
        }
  AttentionCase gqa = base;
  gqa.heads = 8;
  gqa.kv_heads = 2;
  gqa.seq_q = 300;
  gqa.causal = true;
  all.push_back(gqa);
  AttentionCase mqa = base;
  mqa.heads = 6;
  mqa.kv_heads = 1;
  mqa.seq_q = 129;
  mqa.bhsd = true;
  all.push_back(mqa);
  AttentionCase bhsd = base;
  bhsd.bhsd = true;
  bhsd.seq_q = 257;
  bhsd.causal = true;
  bhsd.head_dim = 128;
  all.push_back(bhsd);
  AttentionCase cross = base;
  cross.seq_q = 100;
  cross.seq_k = 333;
  all.push_back(cross);
  AttentionCase cross_causal = cross;
  cross_causal.causal = true;
  cross_causal.seq_q = 333;
  cross_causal.seq_k = 100;
  all.push_back(cross_causal);
  AttentionCase many_tiles = base;  // more tiles than multiprocessors: CTAs walk several
  many_tiles.batch = 3;
  many_tiles.heads = 16;
  many_tiles.seq_q = 1000;
  many_tiles.head_dim = 128;
  many_tiles.causal = true;
  all.push_back(many_tiles);
  struct Variant {
    int d, bm, bn, stages;
    bool pp, so, pers;
  };
  for (const Variant& v : {Variant{64, 64, 128, 2, false, true, true},
                           Variant{64, 192, 128, 2, false, true, true},
                           Variant{128, 128, 128, 2, true, false, false},
                           Variant{128, 128, 176, 2, true, false, true},
                           Variant{128, 128, 64, 1, false, true, true},
                           Variant{256, 128, 64, 2, true, false, false},
                           Variant{64, 128, 96, 3, true, true, false}}) {
    for (auto dtype : {v1::DTYPE_FP16, v1::DTYPE_BF16}) {
      AttentionCase c = base;
      c.dtype = dtype;
      c.head_dim = v.d;
      c.causal = dtype == v1::DTYPE_BF16;
      c.seq_q = 777;
      c.kv_heads = 1;
      c.config.set_block_m(v.bm);
      c.config.set_block_n(v.bn);
      c.config.set_warps(4 * (v.bm / 64 + 1));
      c.config.set_stages(v.stages);
      c.config.set_pingpong(v.pp);
      c.config.set_separate_o(v.so);
      c.config.set_persistent(v.pers);
      all.push_back(c);
    }
  }
  return all;
}

// The decode family: one to a few query rows against long, ragged KV, GQA
// 32/8 and 64/8, MQA, MHA, both layouts, fused and separate combine, a fixed
// split count, every head dim, both dtypes.
std::vector<AttentionCase> decode_cases() {
  std::vector<AttentionCase> all;
  AttentionCase base;
  base.template_id = "attention_decode";
  base.heads = 32;
  base.kv_heads = 8;
  base.seq_q = 1;
  for (auto dtype : {v1::DTYPE_FP16, v1::DTYPE_BF16})
    for (int d : {64, 128, 256})
      for (int sk : {1, 37, 1000, 8192}) {
        AttentionCase c = base;
        c.dtype = dtype;
        c.head_dim = d;
        c.seq_k = sk;
        c.batch = sk >= 8192 ? 1 : 2;
        all.push_back(c);
      }
  AttentionCase speculative = base;  // 4 rows x 4 heads per kv head
  speculative.seq_q = 4;
  speculative.seq_k = 4133;
  speculative.dtype = v1::DTYPE_BF16;
  all.push_back(speculative);
  AttentionCase wide = base;  // 64/8 x 8 rows = 64 packed rows
  wide.heads = 64;
  wide.seq_q = 8;
  wide.seq_k = 777;
  wide.head_dim = 128;
  all.push_back(wide);
  AttentionCase mqa = base;
  mqa.heads = 8;
  mqa.kv_heads = 1;
  mqa.seq_q = 5;
  mqa.seq_k = 700;
  mqa.bhsd = true;
  all.push_back(mqa);
  AttentionCase mha = base;
  mha.heads = 16;
  mha.kv_heads = 16;
  mha.seq_k = 1024;
  mha.batch = 3;
  mha.bhsd = true;
  all.push_back(mha);
  AttentionCase causal = base;  // one key: top-left causal is no mask at all
  causal.causal = true;
  causal.seq_k = 1;
  all.push_back(causal);
  for (auto [fused, splits] : {std::pair{false, 0}, std::pair{true, 7}, std::pair{false, 13}}) {
    AttentionCase c = base;
    c.seq_k = 5000;
    c.head_dim = 128;
    c.dtype = v1::DTYPE_BF16;
    c.config.set_block_m(16);
    c.config.set_block_n(64);
    c.config.set_warps(4);
    c.config.set_stages(3);
    c.config.set_fused_combine(fused);
    c.config.set_splits(splits);
    all.push_back(c);
  }
  return all;
}

std::vector<AttentionCase> cases() {
  std::vector<AttentionCase> all = hopper_cases();
  for (const AttentionCase& c : decode_cases()) all.push_back(c);
  // The matrix the serving slice promises: both dtypes, D 64/128, causal and
  // not, ragged and tile-aligned sequence lengths from 1 to 2048.
  for (auto dtype : {v1::DTYPE_FP16, v1::DTYPE_BF16})
    for (int d : {64, 128})
      for (bool causal : {false, true})
        for (int s : {1, 17, 128, 500, 2048}) {
          AttentionCase c;
          c.dtype = dtype;
          c.head_dim = d;
          c.causal = causal;
          c.seq_q = s;
          c.batch = s >= 2048 ? 1 : 2;
          all.push_back(c);
        }
  // The other head dims the template takes, ragged and multi-tile.
  for (auto dtype : {v1::DTYPE_FP16, v1::DTYPE_BF16})
    for (int d : {32, 96, 256})
      for (bool causal : {false, true})
        for (int s : {17, 500}) {
          AttentionCase c;
          c.dtype = dtype;
          c.head_dim = d;
          c.causal = causal;
          c.seq_q = s;
          c.batch = 2;
          all.push_back(c);
        }
  // Run-time shape variety on one cubin class: GQA, BHSD layout, seq_k != seq_q.
  AttentionCase gqa;
  gqa.heads = 8;
  gqa.kv_heads = 2;
  gqa.seq_q = 300;
  all.push_back(gqa);
  AttentionCase bhsd;
  bhsd.bhsd = true;
  bhsd.seq_q = 257;
  bhsd.causal = true;
  all.push_back(bhsd);
  AttentionCase cross;
  cross.seq_q = 100;
  cross.seq_k = 333;
  all.push_back(cross);
  AttentionCase cross_causal = cross;
  cross_causal.causal = true;
  cross_causal.seq_q = 333;
  cross_causal.seq_k = 100;
  all.push_back(cross_causal);
  // Other tile configs: small tiles, one stage, three stages, 8 warps.
  for (auto [bm, bn, w, st] : {std::array{64, 32, 4, 1}, std::array{64, 64, 4, 3},
                               std::array{128, 128, 8, 2}, std::array{128, 32, 8, 3}}) {
    for (int d : {64, 128}) {
      AttentionCase c;
      c.head_dim = d;
      c.causal = true;
      c.seq_q = 777;
      c.dtype = d == 64 ? v1::DTYPE_FP16 : v1::DTYPE_BF16;
      c.config.set_block_m(bm);
      c.config.set_block_n(bn);
      c.config.set_warps(w);
      c.config.set_stages(st);
      all.push_back(c);
    }
  }
  // Q in registers and in shared memory, swizzled and padded shared memory,
  // each both ways for D 64, 96 and 128: the rule's choice and the other
  // one (D 96's swizzle is its own 12-chunk permutation; D 64 and 128 are
  // swizzled by the rule, D 96 padded). 16 rows a warp at D 96/128 keep Q's
  // fragments at 24/32 registers, so registers do not spill there.
  for (int d : {64, 96, 128})
    for (auto q : {v1::Q_PLACEMENT_REGISTERS, v1::Q_PLACEMENT_SHARED})
      for (auto layout : {v1::SMEM_LAYOUT_SWIZZLED, v1::SMEM_LAYOUT_PADDED}) {
        AttentionCase c;
        c.head_dim = d;
        c.causal = q == v1::Q_PLACEMENT_SHARED;
        c.seq_q = 777;
        c.batch = 2;
        c.dtype = layout == v1::SMEM_LAYOUT_PADDED ? v1::DTYPE_BF16 : v1::DTYPE_FP16;
        c.config.set_block_m(128);
        c.config.set_block_n(64);
        c.config.set_warps(d == 64 ? 4 : 8);
        c.config.set_stages(2);
        c.config.set_q_placement(q);
        c.config.set_smem_layout(layout);
        all.push_back(c);
      }
  return all;
}

INSTANTIATE_TEST_SUITE_P(Cases, SM90_Attention, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return info.param.name(); });

}  // namespace
}  // namespace flashcore
