// Host-side truth for the evaluation worker and the GPU tests: 16-bit float
// conversions, random inputs and an fp64 attention reference computed from
// the exact (rounded) inputs the kernel sees.
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <optional>
#include <vector>

#include "family/tile_config.hpp"

namespace flashcore::eval {

uint16_t float_to_fp16(float value);  // round to nearest even
float fp16_to_float(uint16_t bits);
uint16_t float_to_bf16(float value);  // round to nearest even
float bf16_to_float(uint16_t bits);
float element_to_float(DType dtype, uint16_t bits);

// N(0, 1) samples rounded to the dtype (`bits`) and the exact values those
// bits hold (`values`), so a reference sees exactly the kernel's inputs.
void random_tensor(size_t count, DType dtype, std::mt19937_64& rng, std::vector<uint16_t>& bits,
                   std::vector<float>& values);

// Logical problem: Q [batch, heads, seq_q, dim], K/V [batch, kv_heads, seq_k, dim].
struct AttentionShape {
  int batch = 1, heads = 1, kv_heads = 1, seq_q = 1, seq_k = 1, head_dim = 64;
  bool causal = false;
  bool bhsd = false;  // memory layout of all four tensors; BSHD when false
};

// Element offset of (b, h, s, d) in a tensor with `num_heads` heads of `seq` rows.
int64_t tensor_offset(const AttentionShape& shape, int num_heads, int seq, int b, int h, int s,
                      int d);

struct AttentionReference {
  std::vector<double> out;  // [batch, heads, seq_q, dim], logical order
  std::vector<double> lse;  // [batch, heads, seq_q], natural log
};

// `q`, `k`, `v` are the dequantized inputs in the shape's memory layout.
AttentionReference reference_attention(const AttentionShape& shape, const std::vector<float>& q,
                                       const std::vector<float>& k, const std::vector<float>& v,
                                       double softmax_scale, unsigned threads);

struct ErrorStats {
  double rel_error = 0;      // ||out - ref|| / ||ref||
  double max_abs_error = 0;
  int64_t non_finite = 0;    // unwritten (poisoned) or NaN/Inf outputs
  double ref_max_abs = 0;    // max |ref| over the compared elements
};

// `out` is in the shape's memory layout, `ref` in logical order.
ErrorStats compare_output(const AttentionShape& shape, const std::vector<float>& out,
                          const std::vector<double>& ref);

// One query row of one (batch, head): the unit of a sampled reference.
struct QueryRow {
  int batch = 0, head = 0, row = 0;
};

// The reference for `rows` only (large shapes, where every row would cost
// minutes on the CPU): out is [rows.size(), dim], lse [rows.size()].
AttentionReference reference_attention_rows(const AttentionShape& shape,
                                            const std::vector<float>& q,
                                            const std::vector<float>& k,
                                            const std::vector<float>& v, double softmax_scale,
                                            const std::vector<QueryRow>& rows, unsigned threads);

// compare_output over `rows` only; `ref` is reference_attention_rows' out.
ErrorStats compare_rows(const AttentionShape& shape, const std::vector<float>& out,
                        const std::vector<QueryRow>& rows, const std::vector<double>& ref);

// Where a failed comparison first goes wrong (for a kernel's author): the
// first element of `rows` (in their order, then by column) that is not
// finite or is off by more than tolerance x (|want| + rms(ref)).
struct WrongElement {
  int batch = 0, head = 0, row = 0, col = 0;
  double got = 0, want = 0;
};
std::optional<WrongElement> first_wrong_element(const AttentionShape& shape,
                                                const std::vector<float>& out,
                                                const std::vector<QueryRow>& rows,
                                                const std::vector<double>& ref, double tolerance);

}  // namespace flashcore::eval
