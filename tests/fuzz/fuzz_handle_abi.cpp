// libFuzzer: the handle ABI as a client reads it (server/cuda's host side,
// shared by the C++ launcher and the worker). Any bytes that parse as a
// KernelHandle: its problem becomes the call's params, which are checked as
// the launcher checks them; a handle of the decode ABI gets its split count,
// workspace and DecodeParams, a TMA (ABI 2) handle its tensor maps' recipe
// check, all without a GPU. Nothing may crash, overflow or divide by zero.
#include <cstddef>
#include <cstdint>

#include "cuda/attention_launch.hpp"
#include "flashcore/v1/flashcore.pb.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  flashcore::v1::KernelHandle handle;
  if (!handle.ParseFromArray(data, static_cast<int>(size))) return 0;
  const auto& problem = handle.problem();
  flashcore::cuda::AttentionShape shape;
  shape.batch = problem.batch();
  shape.heads = problem.heads();
  shape.kv_heads = problem.kv_heads();
  shape.seq_q = problem.seq_q();
  shape.seq_k = problem.seq_k();
  shape.head_dim = problem.head_dim();
  shape.layout = problem.layout() == flashcore::v1::LAYOUT_BHSD ? flashcore::cuda::TensorLayout::bhsd
                                                                 : flashcore::cuda::TensorLayout::bshd;
  // Checked first, as KernelLauncher::launch does: nothing below runs on a
  // shape the launcher would refuse.
  const auto params = flashcore::cuda::make_attention_params(shape, 0x1000, 0x2000, 0x3000, 0x4000);
  if (!flashcore::cuda::attention_params_error(params)) return 0;
  if (handle.abi().abi_version() == 3) {
    flashcore::cuda::DecodeLaunchConfig decode;
    decode.head_dim = problem.head_dim();
    decode.packed_rows = static_cast<unsigned>(handle.config().block_m());
    decode.block_n = static_cast<unsigned>(handle.config().block_n());
    decode.split_threads = handle.launch().block().x();
    decode.split_smem_bytes = handle.launch().dynamic_smem_bytes();
    decode.fused_combine = handle.config().fused_combine();
    decode.splits = handle.config().splits();
    if (!flashcore::cuda::decode_launch_error(decode)) return 0;  // refused, as the launcher does
    const int splits = flashcore::cuda::decode_splits_for(decode, params, 132);
    const uint64_t bytes = flashcore::cuda::decode_workspace_for(decode, params, splits);
    (void)bytes;
    (void)flashcore::cuda::make_decode_params(params, 0x5000, decode.head_dim, splits);
  }
  return 0;
}
