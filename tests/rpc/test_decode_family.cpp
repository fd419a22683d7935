// The decode family (attention_decode) through a real daemon on loopback and
// real NVRTC: a multi-kernel handle (steps, workspace, split count, the
// DecodeParams ABI), its gate for clients that predate such handles, the
// run-time shapes a compiled config takes, and the extra kernel kept on disk.
#include <gtest/gtest.h>

#include <string>

#include "decode/decode_params.cuh"
#include "service/kernel_handle.hpp"
#include "rpc_test_support.hpp"

namespace flashcore {
namespace {

using namespace rpc_testing;
using test_support::ScratchDir;

v1::KernelRequest decode_request(bool fused = true, bool with_config = false) {
  v1::KernelRequest r;
  r.set_template_id("attention_decode");
  r.set_arch("sm_90a");
  r.set_omit_cubin(true);
  r.set_accepts_multi_kernel(true);
  v1::Problem* p = r.mutable_problem();
  p->set_dtype(v1::DTYPE_BF16);
  p->set_head_dim(128);
  p->set_batch(1);
  p->set_heads(32);
  p->set_kv_heads(8);
  p->set_seq_q(1);
  p->set_seq_k(8192);
  if (with_config) {
    v1::TileConfig* c = r.mutable_config();
    c->set_block_m(16);
    c->set_block_n(64);
    c->set_warps(4);
    c->set_stages(3);
    c->set_fused_combine(fused);
  }
  return r;
}

TEST(DecodeFamilyRpc, ServesAMultiKernelHandleAndKeepsItOnDisk) {
  ScratchDir cache;
  std::string unfused_key;
  {
    auto daemon = start_daemon(loopback_config(cache.path()));
    ASSERT_NE(daemon, nullptr);
    auto stub = v1::FlashCore::NewStub(channel_to(*daemon));

    // The family's default for the shape: fused combine, one kernel.
    v1::KernelHandle fused;
    grpc::Status status = compile(*stub, decode_request(), &fused);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(fused.template_id(), "attention_decode");
    EXPECT_EQ(fused.abi().abi_version(), 3u);
    EXPECT_EQ(fused.abi().params_struct(), "flashcore::DecodeParams");
    EXPECT_EQ(fused.abi().params_size(), sizeof(DecodeParams));
    EXPECT_TRUE(fused.config().fused_combine());
    EXPECT_EQ(fused.config().block_m(), 16);  // 4 query heads per kv head x 1 row, rounded to 16
    EXPECT_EQ(fused.resources().spill_store_bytes(), 0);
    const int splits = decode_num_splits(1, 32, 8, 1, 8192, 128, fused.config().block_n(), 132);
    EXPECT_GT(splits, 1);
    EXPECT_EQ(fused.num_splits(), splits);
    ASSERT_EQ(fused.steps_size(), 1);
    EXPECT_EQ(fused.steps(0).role(), "split");
    EXPECT_EQ(fused.steps(0).lowered_name(), fused.lowered_name());
    EXPECT_EQ(fused.steps(0).launch().grid().x(), static_cast<uint32_t>(splits));
    EXPECT_EQ(fused.steps(0).launch().grid().y(), 8u);
    EXPECT_EQ(fused.workspace().bytes(),
              static_cast<uint64_t>(decode_workspace_bytes(1, 32, 8, 1, 128, splits)));
    EXPECT_TRUE(fused.workspace().zero_before_first_use());
    bool has_counters = false;
    for (const auto& f : fused.abi().fields()) has_counters |= f.name() == "split_counters";
    EXPECT_TRUE(has_counters);

    // Unfused: the combine kernel is a second step of the same cubin.
    v1::KernelHandle unfused;
    status = compile(*stub, decode_request(/*fused=*/false, /*with_config=*/true), &unfused);
    ASSERT_TRUE(status.ok()) << status.error_message();
    ASSERT_EQ(unfused.steps_size(), 2);
    EXPECT_EQ(unfused.steps(1).role(), "combine");
    EXPECT_EQ(unfused.steps(1).when(), "num_splits > 1");
    EXPECT_EQ(unfused.steps(1).lowered_name().rfind("_Z", 0), 0u);
    EXPECT_NE(unfused.steps(1).lowered_name().find("combine"), std::string::npos);
    EXPECT_GT(unfused.steps(1).launch().grid().x(), 0u);
    EXPECT_FALSE(unfused.workspace().zero_before_first_use());
    EXPECT_NE(unfused.key(), fused.key());
    unfused_key = unfused.key();
    // What the evaluation worker gets: both kernels' symbols and the decode ABI.
    v1::EvalKernel eval;
    service::fill_eval_kernel(unfused, &eval);
    EXPECT_EQ(eval.abi_version(), 3u);
    EXPECT_EQ(eval.lowered_name(), unfused.steps(0).lowered_name());
    EXPECT_EQ(eval.combine_lowered_name(), unfused.steps(1).lowered_name());
    EXPECT_FALSE(eval.config().fused_combine());

    // The handle for another shape of the same kernel: more keys, more splits or the same.
    v1::GetKernelRequest get;
    get.set_key(unfused_key);
    get.set_omit_cubin(true);
    *get.mutable_problem() = decode_request().problem();
    get.mutable_problem()->set_batch(64);
    get.mutable_problem()->set_seq_k(1024);
    v1::KernelHandle big_batch;
    ASSERT_TRUE(get_kernel(*stub, get, &big_batch).ok());
    EXPECT_EQ(big_batch.num_splits(), 1);  // 512 (batch, kv head) pairs fill the GPU
    EXPECT_EQ(big_batch.workspace().bytes(), 0u);
    // A shape whose packed rows exceed the kernel's is refused, naming the field.
    get.mutable_problem()->set_seq_q(8);  // 4 x 8 = 32 rows > 16
    const grpc::Status too_many = get_kernel(*stub, get, &big_batch);
    EXPECT_EQ(too_many.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(too_many.error_message().find("problem.seq_q"), std::string::npos)
        << too_many.error_message();
  }
  // A new daemon on the folder serves both kernels of the entry from disk.
  auto daemon = start_daemon(loopback_config(cache.path()));
  ASSERT_NE(daemon, nullptr);
  auto stub = v1::FlashCore::NewStub(channel_to(*daemon));
  v1::GetKernelRequest get;
  get.set_key(unfused_key);
  v1::KernelHandle from_disk;
  ASSERT_TRUE(get_kernel(*stub, get, &from_disk).ok());
  EXPECT_EQ(from_disk.tier(), v1::CACHE_TIER_DISK);
  ASSERT_EQ(from_disk.steps_size(), 2);
  EXPECT_NE(from_disk.steps(1).lowered_name().find("combine"), std::string::npos);
  EXPECT_FALSE(from_disk.config().fused_combine());
}

TEST(DecodeFamilyRpc, RefusesClientsWithoutMultiKernelSupportAndShapesItCannotTake) {
  ScratchDir cache;
  auto daemon = start_daemon(loopback_config(cache.path()));
  ASSERT_NE(daemon, nullptr);
  auto stub = v1::FlashCore::NewStub(channel_to(*daemon));
  v1::KernelHandle h;

  v1::KernelRequest old_client = decode_request();
  old_client.set_accepts_multi_kernel(false);
  grpc::Status status = compile(*stub, old_client, &h);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(status.error_message().find("accepts_multi_kernel"), std::string::npos);

  // Top-left causal masks even one query row (it sees key 0 only): refused
  // with one row as with several.
  for (int64_t rows : {1, 2}) {
    v1::KernelRequest causal = decode_request();
    causal.mutable_problem()->set_causal(true);
    causal.mutable_problem()->set_seq_q(rows);
    status = compile(*stub, causal, &h);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << rows;
    EXPECT_NE(status.error_message().find("problem.causal"), std::string::npos) << rows;
  }

  v1::KernelRequest too_many = decode_request(true, /*with_config=*/true);  // 16 packed rows
  too_many.mutable_problem()->set_seq_q(5);                               // 4 x 5 = 20
  status = compile(*stub, too_many, &h);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("problem.seq_q"), std::string::npos);

  v1::KernelRequest bad_rows = decode_request(true, true);
  bad_rows.mutable_config()->set_block_m(24);
  status = compile(*stub, bad_rows, &h);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message().rfind("config.block_m", 0), 0u) << status.error_message();

  // Several query rows of GQA 8: the default packs them (8 x 4 = 32 rows).
  v1::KernelRequest speculative = decode_request();
  speculative.mutable_problem()->set_heads(64);
  speculative.mutable_problem()->set_seq_q(4);
  status = compile(*stub, speculative, &h);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(h.config().block_m(), 32);
}

// A request that names no family gets the one its shape and arch call for;
// the handle's template_id says which.
TEST(DecodeFamilyRpc, WithoutATemplateIdTheShapeChoosesTheFamily) {
  ScratchDir cache;
  auto daemon = start_daemon(loopback_config(cache.path()));
  ASSERT_NE(daemon, nullptr);
  auto stub = v1::FlashCore::NewStub(channel_to(*daemon));
  auto chosen = [&](v1::KernelRequest r) {
    r.clear_template_id();
    v1::KernelHandle h;
    const grpc::Status status = compile(*stub, r, &h);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return h.template_id();
  };
  v1::KernelRequest decode = decode_request();
  EXPECT_EQ(chosen(decode), "attention_decode");
  decode.set_accepts_multi_kernel(false);  // an older client: never a multi-kernel handle
  EXPECT_EQ(chosen(decode), "attention_fwd_sm90");
  v1::KernelRequest prefill = decode_request();
  prefill.mutable_problem()->set_seq_q(2048);
  EXPECT_EQ(chosen(prefill), "attention_fwd_sm90");
  prefill.set_arch("sm_80");
  EXPECT_EQ(chosen(prefill), "attention_fwd");
  prefill.set_arch("sm_90a");
  prefill.mutable_problem()->set_head_dim(96);  // not a Hopper-family head dim
  EXPECT_EQ(chosen(prefill), "attention_fwd");
}

}  // namespace
}  // namespace flashcore
