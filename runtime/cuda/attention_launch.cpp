#include "cuda/attention_launch.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "cuda/driver_api.hpp"

namespace flashcore::cuda {
namespace {

constexpr double kLog2e = 1.4426950408889634;
constexpr long long kStrideGranule = 8;  // elements per 16-byte vector load of fp16/bf16
constexpr long long kMaxGridYZ = 65535;

Error invalid(const std::string& message) {
  return make_error(ErrorCode::invalid_argument, message);
}

struct Strides {
  long long batch, head, row;
};

// a * b * c, or -1 where it overflows (no tensor is that large; the stride
// check of attention_params_error then refuses it). Found by fuzz_handle_abi:
// a shape of 2^40 rows made the plain product undefined.
long long product(long long a, long long b, long long c = 1) {
  long long ab = 0, abc = 0;
  if (__builtin_mul_overflow(a, b, &ab) || __builtin_mul_overflow(ab, c, &abc)) return -1;
  return abc;
}

// Dense strides of a [batch, heads, seq, head_dim] tensor stored in `layout`.
Strides dense_strides(TensorLayout layout, long long heads, long long seq, long long head_dim) {
  if (layout == TensorLayout::bhsd)
    return {product(heads, seq, head_dim), product(seq, head_dim), head_dim};
  return {product(seq, heads, head_dim), head_dim, product(heads, head_dim)};
}

}  // namespace

AttentionParams make_attention_params(const AttentionShape& shape, CUdeviceptr q, CUdeviceptr k,
                                      CUdeviceptr v, CUdeviceptr o, float* lse) {
  const long long heads = shape.heads;
  const long long kv_heads = shape.kv_heads == 0 ? shape.heads : shape.kv_heads;
  const long long seq_q = shape.seq_q;
  const long long seq_k = shape.seq_k == 0 ? shape.seq_q : shape.seq_k;
  const long long d = shape.head_dim;

  AttentionParams p{};
  p.q = reinterpret_cast<const void*>(static_cast<uintptr_t>(q));
  p.k = reinterpret_cast<const void*>(static_cast<uintptr_t>(k));
  p.v = reinterpret_cast<const void*>(static_cast<uintptr_t>(v));
  p.o = reinterpret_cast<void*>(static_cast<uintptr_t>(o));
  p.lse = lse;

  const Strides qo = dense_strides(shape.layout, heads, seq_q, d);
  const Strides kv = dense_strides(shape.layout, kv_heads, seq_k, d);
  p.q_batch_stride = p.o_batch_stride = qo.batch;
  p.q_head_stride = p.o_head_stride = qo.head;
  p.q_row_stride = p.o_row_stride = qo.row;
  p.k_batch_stride = p.v_batch_stride = kv.batch;
  p.k_head_stride = p.v_head_stride = kv.head;
  p.k_row_stride = p.v_row_stride = kv.row;

  p.batch = static_cast<int>(shape.batch);
  p.heads = static_cast<int>(heads);
  p.kv_heads = static_cast<int>(kv_heads);
  p.seq_q = static_cast<int>(seq_q);
  p.seq_k = static_cast<int>(seq_k);

  const double scale = d > 0 ? 1.0 / std::sqrt(static_cast<double>(d)) : 0.0;
  p.softmax_scale = static_cast<float>(scale);
  p.softmax_scale_log2 = static_cast<float>(scale * kLog2e);
  return p;
}

Status attention_params_error(const AttentionParams& p) {
  const std::pair<const void*, const char*> pointers[] = {
      {p.q, "q"}, {p.k, "k"}, {p.v, "v"}, {p.o, "o"}};
  for (const auto& [ptr, name] : pointers)
    if (ptr == nullptr) return invalid(std::string("params.") + name + ": null pointer");

  const std::pair<int, const char*> counts[] = {{p.batch, "batch"}, {p.heads, "heads"},
                                                {p.kv_heads, "kv_heads"}, {p.seq_q, "seq_q"},
                                                {p.seq_k, "seq_k"}};
  for (const auto& [value, name] : counts)
    if (value < 1)
      return invalid(std::string("params.") + name + ": " + std::to_string(value) +
                     " must be >= 1");
  if (p.heads % p.kv_heads != 0)
    return invalid("params.kv_heads: " + std::to_string(p.kv_heads) + " does not divide heads " +
                   std::to_string(p.heads));
  if (p.heads > kMaxGridYZ)
    return invalid("params.heads: " + std::to_string(p.heads) + " exceeds the grid limit 65535");
  if (p.batch > kMaxGridYZ)
    return invalid("params.batch: " + std::to_string(p.batch) + " exceeds the grid limit 65535");

  const std::pair<long long, const char*> strides[] = {
      {p.q_batch_stride, "q_batch_stride"}, {p.q_head_stride, "q_head_stride"},
      {p.q_row_stride, "q_row_stride"},     {p.k_batch_stride, "k_batch_stride"},
      {p.k_head_stride, "k_head_stride"},   {p.k_row_stride, "k_row_stride"},
      {p.v_batch_stride, "v_batch_stride"}, {p.v_head_stride, "v_head_stride"},
      {p.v_row_stride, "v_row_stride"},     {p.o_batch_stride, "o_batch_stride"},
      {p.o_head_stride, "o_head_stride"},   {p.o_row_stride, "o_row_stride"}};
  for (const auto& [value, name] : strides)
    if (value % kStrideGranule != 0)
      return invalid(std::string("params.") + name + ": " + std::to_string(value) +
                     " is not a multiple of 8 elements");
  return ok_status();
}

Status set_max_dynamic_smem(CUfunction function, unsigned bytes) {
  auto api = driver();
  if (!api) return api.error();
  return check((*api)->cuFuncSetAttribute(function, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                          static_cast<int>(bytes)),
               "cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)");
}

Result<AttentionTmaParams> encode_attention_tma_params(const AttentionLaunchConfig& config,
                                                       const AttentionParams& params) {
  if (config.head_dim <= 0 || config.head_dim % 64 != 0)
    return invalid("launch config: head_dim " + std::to_string(config.head_dim) +
                   " is not a multiple of 64 (the Hopper family's tensor-map boxes)");
  if (config.block_n == 0 || config.block_n > 256)
    return invalid("launch config: block_n " + std::to_string(config.block_n) +
                   " must be in [1, 256] (a tensor-map box dimension)");
  auto api = driver();
  if (!api) return api.error();
  AttentionTmaParams out{};
  out.attn = params;
  struct Operand {
    const char* name;
    const void* base;
    long long seq, heads, row, head, batch;
    unsigned rows;
    TmaDescriptor* map;
  };
  const Operand operands[] = {
      {"q", params.q, params.seq_q, params.heads, params.q_row_stride, params.q_head_stride,
       params.q_batch_stride, 64, &out.q},
      {"k", params.k, params.seq_k, params.kv_heads, params.k_row_stride, params.k_head_stride,
       params.k_batch_stride, config.block_n, &out.k},
      {"v", params.v, params.seq_k, params.kv_heads, params.v_row_stride, params.v_head_stride,
       params.v_batch_stride, config.block_n, &out.v},
      {"o", params.o, params.seq_q, params.heads, params.o_row_stride, params.o_head_stride,
       params.o_batch_stride, 64, &out.o}};
  for (const Operand& op : operands) {
    if (reinterpret_cast<uintptr_t>(op.base) % 16 != 0)
      return invalid(std::string("params.") + op.name +
                     ": not 16-byte aligned (the tensor memory accelerator needs it)");
    const cuuint64_t dims[4] = {static_cast<cuuint64_t>(config.head_dim),
                                static_cast<cuuint64_t>(op.seq), static_cast<cuuint64_t>(op.heads),
                                static_cast<cuuint64_t>(params.batch)};
    const cuuint64_t strides[3] = {static_cast<cuuint64_t>(op.row) * 2,
                                   static_cast<cuuint64_t>(op.head) * 2,
                                   static_cast<cuuint64_t>(op.batch) * 2};
    const cuuint32_t box[4] = {64, op.rows, 1, 1};
    const cuuint32_t element_strides[4] = {1, 1, 1, 1};
    static_assert(sizeof(TmaDescriptor) == sizeof(CUtensorMap), "TmaDescriptor mirrors CUtensorMap");
    const CUresult r = (*api)->cuTensorMapEncodeTiled(
        reinterpret_cast<CUtensorMap*>(op.map),
        config.bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 4,
        const_cast<void*>(op.base), dims, strides, box, element_strides,
        CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
        CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) {
      Status s = check(r, "cuTensorMapEncodeTiled");
      Error e = s.error();
      e.message = std::string("params.") + op.name + ": " + e.message;
      return e;
    }
  }
  return out;
}

Result<int> current_device_multiprocessors() {
  auto api = driver();
  if (!api) return api.error();
  CUdevice device = 0;
  int sms = 0;
  if (auto s = check((*api)->cuCtxGetDevice(&device), "cuCtxGetDevice"); !s) return s.error();
  if (auto s = check((*api)->cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
                                                  device),
                     "cuDeviceGetAttribute(MULTIPROCESSOR_COUNT)");
      !s)
    return s.error();
  return sms;
}

namespace {
Status launch_attention_tma(CUfunction function, const AttentionLaunchConfig& config,
                            const AttentionParams& params, CUstream stream) {
  auto tma = encode_attention_tma_params(config, params);
  if (!tma) return tma.error();
  auto api = driver();
  if (!api) return api.error();
  long long grid = (static_cast<long long>(params.seq_q) + config.block_m - 1) / config.block_m *
                   params.heads * params.batch;
  if (config.persistent) {
    int sms = config.multiprocessors;
    if (sms <= 0) {
      auto queried = current_device_multiprocessors();
      if (!queried) return queried.error();
      sms = *queried;
    }
    grid = std::min<long long>(grid, sms);
  }
  if (grid > 0x7fffffffLL)
    return invalid("params: " + std::to_string(grid) + " tiles exceed the grid limit 2^31-1");
  void* args[] = {&tma.value()};
  return check((*api)->cuLaunchKernel(function, static_cast<unsigned>(grid), 1, 1, config.block_x,
                                      1, 1, config.dynamic_smem_bytes, stream, args, nullptr),
               "cuLaunchKernel");
}
}  // namespace

Status launch_attention(CUfunction function, const AttentionLaunchConfig& config,
                        const AttentionParams& params, CUstream stream) {
  if (auto s = attention_params_error(params); !s) return s;
  if (config.block_m == 0 || config.block_x == 0)
    return make_error(ErrorCode::failed_precondition,
                      "launch config: block_m and block size must be set (from the handle)");
  if (function == nullptr)
    return make_error(ErrorCode::failed_precondition, "launch: no kernel function");
  if (config.abi_version == FLASHCORE_ATTENTION_TMA_ABI_VERSION)
    return launch_attention_tma(function, config, params, stream);
  if (config.abi_version != FLASHCORE_ATTENTION_ABI_VERSION)
    return make_error(ErrorCode::failed_precondition,
                      "launch config: unknown ABI version " + std::to_string(config.abi_version));

  const unsigned grid_x =
      static_cast<unsigned>((static_cast<long long>(params.seq_q) + config.block_m - 1) /
                            config.block_m);
  auto api = driver();
  if (!api) return api.error();
  // The kernel takes the struct by value (__grid_constant__): one argument,
  // whose address the driver copies the bytes from.
  void* args[] = {const_cast<AttentionParams*>(&params)};
  return check((*api)->cuLaunchKernel(function, grid_x, static_cast<unsigned>(params.heads),
                                      static_cast<unsigned>(params.batch), config.block_x,
                                      config.block_y == 0 ? 1 : config.block_y,
                                      config.block_z == 0 ? 1 : config.block_z,
                                      config.dynamic_smem_bytes, stream, args, nullptr),
               "cuLaunchKernel");
}

Status decode_launch_error(const DecodeLaunchConfig& config) {
  const auto bad = [](const std::string& what) {
    return make_error(ErrorCode::invalid_argument, "decode handle: " + what);
  };
  // The split rule and the launch take these as int: a value past 1024 (a
  // CUDA block's limit, and 16x the family's largest tile) would come out
  // negative there (a handle's int32 -1 reads as 4294967295) and divide by 0.
  constexpr unsigned kMax = 1024;
  if (config.packed_rows == 0 || config.packed_rows > kMax)
    return bad("config.block_m (packed rows) must be in [1, 1024], not " +
               std::to_string(config.packed_rows));
  if (config.block_n == 0 || config.block_n > kMax)
    return bad("config.block_n must be in [1, 1024], not " + std::to_string(config.block_n));
  if (config.split_threads == 0 || config.split_threads > kMax)
    return bad("launch.block.x must be in [1, 1024], not " + std::to_string(config.split_threads));
  if (config.head_dim <= 0 || config.head_dim > 256)
    return bad("problem.head_dim " + std::to_string(config.head_dim) + " is not in (0, 256]");
  if (config.splits < 0) return bad("config.splits must be >= 0");
  return ok_status();
}

int decode_splits_for(const DecodeLaunchConfig& config, const AttentionParams& p, int sm_count) {
  const int bn = static_cast<int>(config.block_n);
  if (config.splits > 0) return decode_effective_splits(p.seq_k, bn, config.splits);
  return decode_num_splits(p.batch, p.heads, p.kv_heads, p.seq_q, p.seq_k, config.head_dim, bn,
                           sm_count > 0 ? sm_count : 1);
}

uint64_t decode_workspace_for(const DecodeLaunchConfig& config, const AttentionParams& p,
                              int num_splits) {
  return static_cast<uint64_t>(decode_workspace_bytes(p.batch, p.heads, p.kv_heads, p.seq_q,
                                                      config.head_dim, num_splits));
}

Result<CUdeviceptr> DecodeWorkspace::prepare(const DecodeLaunchConfig& config,
                                             const AttentionParams& params, int num_splits,
                                             CUstream stream) {
  const uint64_t bytes = decode_workspace_for(config, params, num_splits);
  if (bytes == 0) return CUdeviceptr{0};
  const auto counters = static_cast<uint64_t>(decode_counter_bytes(params.batch, params.kv_heads));
  if (buffer_.bytes() < bytes || counters > zero_counter_bytes_) {
    // Earlier launches on the stream may still read the old buffer.
    if (buffer_.get() != 0) {
      auto api = driver();
      if (!api) return api.error();
      if (auto s = check((*api)->cuStreamSynchronize(stream), "cuStreamSynchronize"); !s)
        return s.error();
    }
    if (buffer_.bytes() < bytes) {
      buffer_ = DeviceBuffer();
      auto grown = DeviceBuffer::allocate(static_cast<size_t>(bytes));
      if (!grown) return grown.error();
      buffer_ = std::move(grown).value();
    }
    if (auto s = buffer_.fill_bytes(0); !s) return s.error();
    zero_counter_bytes_ = counters;
  }
  return buffer_.get();
}

DecodeParams make_decode_params(const AttentionParams& p, CUdeviceptr workspace, int head_dim,
                                int num_splits) {
  DecodeParams d{};
  d.q = p.q;
  d.k = p.k;
  d.v = p.v;
  d.o = p.o;
  d.lse = p.lse;
  if (num_splits > 1 && workspace != 0) {
    // decode_params.cuh's layout: counters, o_partial, lse_partial.
    const long long counter_bytes = decode_counter_bytes(p.batch, p.kv_heads);
    const long long o_bytes =
        decode_align256(4LL * p.batch * p.heads * p.seq_q * num_splits * head_dim);
    d.split_counters = reinterpret_cast<unsigned*>(static_cast<uintptr_t>(workspace));
    d.o_partial = reinterpret_cast<float*>(static_cast<uintptr_t>(workspace + counter_bytes));
    d.lse_partial =
        reinterpret_cast<float*>(static_cast<uintptr_t>(workspace + counter_bytes + o_bytes));
  }
  d.q_batch_stride = p.q_batch_stride;
  d.q_head_stride = p.q_head_stride;
  d.q_row_stride = p.q_row_stride;
  d.k_batch_stride = p.k_batch_stride;
  d.k_head_stride = p.k_head_stride;
  d.k_row_stride = p.k_row_stride;
  d.v_batch_stride = p.v_batch_stride;
  d.v_head_stride = p.v_head_stride;
  d.v_row_stride = p.v_row_stride;
  d.o_batch_stride = p.o_batch_stride;
  d.o_head_stride = p.o_head_stride;
  d.o_row_stride = p.o_row_stride;
  d.batch = p.batch;
  d.heads = p.heads;
  d.kv_heads = p.kv_heads;
  d.seq_q = p.seq_q;
  d.seq_k = p.seq_k;
  d.num_splits = num_splits;
  d.softmax_scale = p.softmax_scale;
  d.softmax_scale_log2 = p.softmax_scale_log2;
  return d;
}

Status launch_decode(CUfunction split, CUfunction combine, const DecodeLaunchConfig& config,
                     const DecodeParams& d, CUstream stream) {
  if (split == nullptr) return make_error(ErrorCode::failed_precondition, "launch: no kernel function");
  if (d.batch < 1 || d.heads < 1 || d.kv_heads < 1 || d.seq_q < 1 || d.seq_k < 1 ||
      d.heads % d.kv_heads != 0)
    return invalid("params: batch, heads, kv_heads, seq_q and seq_k must be >= 1, kv_heads "
                   "dividing heads");
  const long long rows = static_cast<long long>(d.heads / d.kv_heads) * d.seq_q;
  if (rows > config.packed_rows)
    return invalid("params.seq_q: " + std::to_string(d.heads / d.kv_heads) +
                   " query heads per kv head x seq_q " + std::to_string(d.seq_q) + " = " +
                   std::to_string(rows) + " rows, over the kernel's " +
                   std::to_string(config.packed_rows) + " packed rows");
  if (d.num_splits < 1 || d.num_splits > kDecodeMaxSplits)
    return invalid("params.num_splits: " + std::to_string(d.num_splits) + " must be in [1, " +
                   std::to_string(kDecodeMaxSplits) + "]");
  if (d.num_splits > 1 && (d.o_partial == nullptr || d.lse_partial == nullptr ||
                           (config.fused_combine && d.split_counters == nullptr)))
    return invalid("params: num_splits > 1 needs the workspace (o_partial, lse_partial, "
                   "split_counters)");
  if (d.num_splits > 1 && !config.fused_combine && combine == nullptr)
    return make_error(ErrorCode::failed_precondition, "launch: the handle has no combine kernel");
  auto api = driver();
  if (!api) return api.error();
  void* args[] = {const_cast<DecodeParams*>(&d)};
  if (auto s = check((*api)->cuLaunchKernel(split, static_cast<unsigned>(d.num_splits),
                                            static_cast<unsigned>(d.kv_heads),
                                            static_cast<unsigned>(d.batch), config.split_threads,
                                            1, 1, config.split_smem_bytes, stream, args, nullptr),
                     "cuLaunchKernel(split)");
      !s)
    return s;
  if (d.num_splits == 1 || config.fused_combine) return ok_status();
  const long long out_rows = static_cast<long long>(d.batch) * d.heads * d.seq_q;
  const int per_block = decode_combine_rows_per_block(config.head_dim);
  return check((*api)->cuLaunchKernel(combine,
                                      static_cast<unsigned>((out_rows + per_block - 1) / per_block),
                                      1, 1, kDecodeCombineThreads, 1, 1, 0, stream, args, nullptr),
               "cuLaunchKernel(combine)");
}

}  // namespace flashcore::cuda
