// The Hopper family (attention_fwd_sm90) through a real daemon on loopback and
// real NVRTC (sm_90a compiles without a GPU): its default config per head
// dim, the ABI 2 handle with the tensor-map recipe, explicit configs, and
// the INVALID_ARGUMENT reasons that name the offending field.
#include <gtest/gtest.h>

#include <cstddef>
#include <functional>
#include <string>

#include "common/attention_tma_params.cuh"
#include "rpc_test_support.hpp"

namespace flashcore {
namespace {

using namespace rpc_testing;
using test_support::ScratchDir;

class HopperFamilyTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    cache_ = new ScratchDir();
    daemon_ = start_daemon(loopback_config(cache_->path())).release();
    ASSERT_NE(daemon_, nullptr);
    stub_ = v1::FlashCore::NewStub(channel_to(*daemon_)).release();
  }
  static void TearDownTestSuite() {
    delete stub_;
    delete daemon_;
    delete cache_;
  }
  static v1::KernelRequest request(int head_dim, bool causal, v1::DType dtype = v1::DTYPE_FP16) {
    v1::KernelRequest r;
    r.set_template_id("attention_fwd_sm90");
    r.set_arch("sm_90a");
    r.set_omit_cubin(true);
    v1::Problem* p = r.mutable_problem();
    p->set_dtype(dtype);
    p->set_head_dim(head_dim);
    p->set_causal(causal);
    p->set_batch(2);
    p->set_heads(16);
    p->set_kv_heads(4);
    p->set_seq_q(1000);
    p->set_seq_k(1500);
    return r;
  }
  static grpc::Status compile_it(const v1::KernelRequest& r, v1::KernelHandle* h) {
    return compile(*stub_, r, h);
  }
  static ScratchDir* cache_;
  static Daemon* daemon_;
  static v1::FlashCore::Stub* stub_;
};
ScratchDir* HopperFamilyTest::cache_ = nullptr;
Daemon* HopperFamilyTest::daemon_ = nullptr;
v1::FlashCore::Stub* HopperFamilyTest::stub_ = nullptr;

TEST_F(HopperFamilyTest, DefaultConfigCompilesToAnAbi2HandleWithTheTensorMapRecipe) {
  v1::KernelHandle h;
  const grpc::Status status = compile_it(request(128, true), &h);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_NE(h.lowered_name().find("attention_fwd_sm90"), std::string::npos) << h.lowered_name();
  EXPECT_EQ(h.resources().spill_store_bytes(), 0);
  EXPECT_EQ(h.resources().stack_frame_bytes(), 0);
  EXPECT_NE(h.resources().ptxas_log().find("sm_90a"), std::string::npos);
  EXPECT_EQ(h.resources().ptxas_log().find("Potential Performance Loss"), std::string::npos)
      << "ptxas serialized the wgmma pipeline:\n" << h.resources().ptxas_log();
  // The family's default for D 128: 128 x 128, two stages, ping-pong, own O tile, persistent.
  EXPECT_EQ(h.config().block_m(), 128);
  EXPECT_EQ(h.config().block_n(), 128);
  EXPECT_EQ(h.config().warps(), 12);
  EXPECT_TRUE(h.config().pingpong());
  EXPECT_TRUE(h.config().separate_o());
  EXPECT_TRUE(h.config().persistent());
  EXPECT_EQ(h.launch().block().x(), 384u);
  EXPECT_EQ(h.launch().grid().x(), 8u * 16 * 2);  // ceil(1000 / 128) tiles x heads x batch
  EXPECT_EQ(h.launch().grid().y(), 1u);
  EXPECT_NE(h.launch().grid_formula().find("multiprocessor_count"), std::string::npos);
  EXPECT_LE(h.launch().dynamic_smem_bytes(), 227u * 1024);

  const v1::KernelAbi& abi = h.abi();
  EXPECT_EQ(abi.abi_version(), 2u);
  EXPECT_EQ(abi.params_struct(), "flashcore::AttentionTmaParams");
  EXPECT_EQ(abi.params_size(), sizeof(AttentionTmaParams));
  ASSERT_EQ(abi.tensor_maps_size(), 4);
  const char* names[] = {"q", "k", "v", "o"};
  for (int i = 0; i < 4; ++i) {
    const v1::TensorMapRecipe& m = abi.tensor_maps(i);
    SCOPED_TRACE(names[i]);
    const bool kv = i == 1 || i == 2;
    EXPECT_EQ(m.operand(), names[i]);
    EXPECT_EQ(m.params_offset(), 128u * i);
    EXPECT_EQ(m.global_address(), std::string("attn.") + names[i]);
    EXPECT_EQ(m.data_type(), 6u);
    EXPECT_EQ(m.rank(), 4u);
    ASSERT_EQ(m.global_dims_size(), 4);
    EXPECT_EQ(m.global_dims(1), kv ? "seq_k" : "seq_q");
    EXPECT_EQ(m.global_dims(2), kv ? "kv_heads" : "heads");
    ASSERT_EQ(m.global_strides_bytes_size(), 3);
    EXPECT_EQ(m.global_strides_bytes(0), std::string("attn.") + names[i] + "_row_stride*2");
    ASSERT_EQ(m.box_dims_size(), 4);
    EXPECT_EQ(m.box_dims(0), 64u);
    EXPECT_EQ(m.box_dims(1), kv ? 128u : 64u);
    EXPECT_EQ(m.swizzle(), 3u);
  }
  bool found_seq_q = false;
  for (const auto& f : abi.fields())
    if (f.name() == "attn.seq_q") {
      found_seq_q = true;
      EXPECT_EQ(f.offset(), offsetof(AttentionTmaParams, attn) + offsetof(AttentionParams, seq_q));
      EXPECT_EQ(f.type(), "i32");
    }
  EXPECT_TRUE(found_seq_q);
}

TEST_F(HopperFamilyTest, ExplicitConfigsOfEveryHeadDimCompileWithoutSpills) {
  struct Case {
    int d, bm, bn, stages;
    bool pp, so, pers;
    v1::DType dtype;
  };
  for (const Case& c : {Case{64, 192, 128, 2, false, true, true, v1::DTYPE_BF16},
                        Case{256, 128, 80, 2, true, false, true, v1::DTYPE_BF16},
                        Case{64, 64, 128, 3, false, false, false, v1::DTYPE_FP16}}) {
    SCOPED_TRACE("D" + std::to_string(c.d) + " block_m " + std::to_string(c.bm));
    v1::KernelRequest r = request(c.d, false, c.dtype);
    v1::TileConfig* t = r.mutable_config();
    t->set_block_m(c.bm);
    t->set_block_n(c.bn);
    t->set_warps(4 * (c.bm / 64 + 1));
    t->set_stages(c.stages);
    t->set_pingpong(c.pp);
    t->set_separate_o(c.so);
    t->set_persistent(c.pers);
    v1::KernelHandle h;
    const grpc::Status status = compile_it(r, &h);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(h.resources().spill_store_bytes(), 0);
    EXPECT_EQ(h.launch().block().x(), 128u * (c.bm / 64 + 1));
    EXPECT_EQ(h.abi().tensor_maps(1).box_dims(1), static_cast<uint32_t>(c.bn));
    EXPECT_EQ(h.abi().tensor_maps(0).data_type(), c.dtype == v1::DTYPE_BF16 ? 9u : 6u);
    EXPECT_EQ(h.launch().grid_formula().find("multiprocessor_count") != std::string::npos, c.pers);
  }
}

TEST_F(HopperFamilyTest, TheSameProblemHasDifferentKeysInTheTwoFamilies) {
  v1::KernelHandle hopper, sm80;
  v1::KernelRequest r = request(64, false);
  ASSERT_TRUE(compile_it(r, &hopper).ok());
  r.set_template_id("attention_fwd");
  ASSERT_TRUE(compile_it(r, &sm80).ok());
  EXPECT_NE(hopper.key(), sm80.key());
  EXPECT_EQ(sm80.abi().abi_version(), 1u);
  EXPECT_EQ(sm80.abi().tensor_maps_size(), 0);
}

TEST_F(HopperFamilyTest, BadRequestsNameTheField) {
  struct Case {
    const char* what;
    std::function<void(v1::KernelRequest&)> change;
    const char* field;
  };
  const Case cases[] = {
      {"sm_80", [](v1::KernelRequest& r) { r.set_arch("sm_80"); }, "arch"},
      {"D 96", [](v1::KernelRequest& r) { r.mutable_problem()->set_head_dim(96); },
       "problem.head_dim"},
      {"4 warps",
       [](v1::KernelRequest& r) {
         r.mutable_config()->set_block_m(128);
         r.mutable_config()->set_block_n(128);
         r.mutable_config()->set_warps(4);
         r.mutable_config()->set_stages(2);
       },
       "config.warps"},
      {"ping-pong with one consumer",
       [](v1::KernelRequest& r) {
         r.mutable_config()->set_block_m(64);
         r.mutable_config()->set_block_n(128);
         r.mutable_config()->set_warps(8);
         r.mutable_config()->set_stages(2);
         r.mutable_config()->set_pingpong(true);
       },
       "config.pingpong"},
      {"q_placement",
       [](v1::KernelRequest& r) {
         r.mutable_config()->set_block_m(128);
         r.mutable_config()->set_block_n(128);
         r.mutable_config()->set_warps(12);
         r.mutable_config()->set_stages(2);
         r.mutable_config()->set_q_placement(v1::Q_PLACEMENT_SHARED);
       },
       "config.q_placement"},
      {"spilling tile",
       [](v1::KernelRequest& r) {
         r.mutable_config()->set_block_m(128);
         r.mutable_config()->set_block_n(256);
         r.mutable_config()->set_warps(12);
         r.mutable_config()->set_stages(1);
       },
       "config.block_n"},
      {"sm80 family with a Hopper field",
       [](v1::KernelRequest& r) {
         r.set_template_id("attention_fwd");
         r.mutable_config()->set_block_m(128);
         r.mutable_config()->set_block_n(64);
         r.mutable_config()->set_warps(4);
         r.mutable_config()->set_stages(2);
         r.mutable_config()->set_persistent(true);
       },
       "config.persistent"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    v1::KernelRequest r = request(128, false);
    c.change(r);
    v1::KernelHandle h;
    const grpc::Status status = compile_it(r, &h);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
    EXPECT_NE(status.error_message().find(c.field), std::string::npos) << status.error_message();
  }
}

}  // namespace
}  // namespace flashcore
