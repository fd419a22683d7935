// The handle a client launches from, built from a cache entry: the messages
// of flashcore.v1 (protobuf values, no transport) that both the answers and
// the evaluation workers' requests carry. The service builds the workers'
// kernels from it; rpc builds its answers from it.
#pragma once

#include "cache/cached_kernel.hpp"
#include "flashcore/v1/flashcore.pb.h"
#include "flashcore/v1/worker.pb.h"
#include "jit/kernel_spec.hpp"

namespace flashcore::service {

// Fills every handle field; the launch geometry is for `shape`.
void fill_handle(const CachedKernel& kernel, CacheTier tier, const RuntimeShape& shape,
                 v1::Layout layout, bool omit_cubin, v1::KernelHandle* handle);
void fill_summary(const CachedKernel& kernel, v1::KernelSummary* summary);
void fill_problem(const ProblemClass& problem, const RuntimeShape& shape, v1::Layout layout,
                  v1::Problem* out);
void fill_config(const TileConfig& config, v1::TileConfig* out);
// The params struct's layout, from offsetof over the one ABI header.
void fill_abi(v1::KernelAbi* abi);
// The Hopper family's params struct and the recipe of each tensor map in it.
void fill_tma_abi(const KernelSpec& spec, v1::KernelAbi* abi);
// The decode family's params struct, its kernels in launch order with their
// geometry for `shape`, the split count and the workspace.
void fill_decode_launch(const CachedKernel& kernel, const RuntimeShape& shape,
                        v1::KernelHandle* handle);

// What an evaluation worker needs to launch the handle's kernel (the handle
// must carry its cubin).
void fill_eval_kernel(const v1::KernelHandle& handle, v1::EvalKernel* kernel);

v1::DType to_proto(DType dtype);
v1::CacheTier to_proto(CacheTier tier);

}  // namespace flashcore::service
