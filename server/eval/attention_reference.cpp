#include "eval/attention_reference.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <thread>

namespace flashcore::eval {

uint16_t float_to_fp16(float value) {
  uint32_t x;
  std::memcpy(&x, &value, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const int32_t exponent = static_cast<int32_t>((x >> 23) & 0xff) - 127 + 15;
  uint32_t mantissa = x & 0x7fffffu;
  if (((x >> 23) & 0xff) == 0xff) return static_cast<uint16_t>(sign | 0x7c00u | (mantissa ? 0x200u : 0));
  if (exponent >= 31) return static_cast<uint16_t>(sign | 0x7c00u);
  if (exponent <= 0) {  // subnormal or zero
    if (exponent < -10) return static_cast<uint16_t>(sign);
    mantissa |= 0x800000u;
    const int shift = 14 - exponent;
    uint32_t half = mantissa >> shift;
    const uint32_t rest = mantissa & ((1u << shift) - 1);
    const uint32_t halfway = 1u << (shift - 1);
    if (rest > halfway || (rest == halfway && (half & 1))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t half = sign | (static_cast<uint32_t>(exponent) << 10) | (mantissa >> 13);
  const uint32_t rest = mantissa & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (half & 1))) ++half;  // may carry into exponent: correct
  return static_cast<uint16_t>(half);
}

float fp16_to_float(uint16_t bits) {
  const uint32_t sign = (bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1f;
  const uint32_t mantissa = bits & 0x3ffu;
  uint32_t x;
  if (exponent == 0) {
    if (mantissa == 0) {
      x = sign;
    } else {
      const float value = std::ldexp(static_cast<float>(mantissa), -24);
      std::memcpy(&x, &value, 4);
      x |= sign;
    }
  } else if (exponent == 31) {
    x = sign | 0x7f800000u | (mantissa << 13);
  } else {
    x = sign | ((exponent - 15 + 127) << 23) | (mantissa << 13);
  }
  float out;
  std::memcpy(&out, &x, 4);
  return out;
}

uint16_t float_to_bf16(float value) {
  uint32_t x;
  std::memcpy(&x, &value, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40);  // NaN
  x += 0x7fffu + ((x >> 16) & 1);
  return static_cast<uint16_t>(x >> 16);
}

float bf16_to_float(uint16_t bits) {
  const uint32_t x = static_cast<uint32_t>(bits) << 16;
  float out;
  std::memcpy(&out, &x, 4);
  return out;
}

int64_t tensor_offset(const AttentionShape& shape, int num_heads, int seq, int b, int h, int s,
                      int d) {
  const int64_t D = shape.head_dim;
  if (shape.bhsd) return ((static_cast<int64_t>(b) * num_heads + h) * seq + s) * D + d;
  return ((static_cast<int64_t>(b) * seq + s) * num_heads + h) * D + d;
}

namespace {

// Scratch space of one thread of the reference.
struct RowScratch {
  std::vector<double> scores, qrow, acc;
  explicit RowScratch(const AttentionShape& shape)
      : scores(shape.seq_k), qrow(shape.head_dim), acc(shape.head_dim) {}
};

// Query row i of (b, h) in fp64: out[0..dim) and the natural-log sum-exp.
void reference_row(const AttentionShape& shape, const std::vector<float>& q,
                   const std::vector<float>& k, const std::vector<float>& v, double softmax_scale,
                   int b, int h, int i, RowScratch& scratch, double* out, double* lse) {
  const int D = shape.head_dim;
  const int group = shape.heads / shape.kv_heads;
  const int kvh = h / group;
  auto& [scores, qrow, acc] = scratch;
  for (int d = 0; d < D; ++d) qrow[d] = q[tensor_offset(shape, shape.heads, shape.seq_q, b, h, i, d)];
  const int last = shape.causal ? std::min(i, shape.seq_k - 1) : shape.seq_k - 1;
  double max_score = -std::numeric_limits<double>::infinity();
  for (int j = 0; j <= last; ++j) {
    const float* krow = &k[tensor_offset(shape, shape.kv_heads, shape.seq_k, b, kvh, j, 0)];
    double dot = 0;
    for (int d = 0; d < D; ++d) dot += qrow[d] * krow[d];
    scores[j] = dot * softmax_scale;
    max_score = std::max(max_score, scores[j]);
  }
  double sum = 0;
  std::fill(acc.begin(), acc.end(), 0.0);
  for (int j = 0; j <= last; ++j) {
    const double weight = std::exp(scores[j] - max_score);
    sum += weight;
    const float* vrow = &v[tensor_offset(shape, shape.kv_heads, shape.seq_k, b, kvh, j, 0)];
    for (int d = 0; d < D; ++d) acc[d] += weight * vrow[d];
  }
  for (int d = 0; d < D; ++d) out[d] = acc[d] / sum;
  *lse = max_score + std::log(sum);
}

// Runs work(begin, end) over [0, count) split across `threads` threads.
template <typename Work>
void parallel_rows(int64_t count, unsigned threads, Work work) {
  threads = std::max(1u, threads);
  std::vector<std::thread> pool;
  const int64_t per = (count + threads - 1) / threads;
  for (unsigned t = 0; t < threads; ++t) {
    const int64_t begin = t * per, end = std::min(count, begin + per);
    if (begin < end) pool.emplace_back(work, begin, end);
  }
  for (auto& thread : pool) thread.join();
}

}  // namespace

AttentionReference reference_attention(const AttentionShape& shape, const std::vector<float>& q,
                                       const std::vector<float>& k, const std::vector<float>& v,
                                       double softmax_scale, unsigned threads) {
  const int D = shape.head_dim;
  AttentionReference ref;
  ref.out.assign(static_cast<size_t>(shape.batch) * shape.heads * shape.seq_q * D, 0.0);
  ref.lse.assign(static_cast<size_t>(shape.batch) * shape.heads * shape.seq_q, 0.0);
  const int64_t rows = static_cast<int64_t>(shape.batch) * shape.heads * shape.seq_q;
  parallel_rows(rows, threads, [&](int64_t begin, int64_t end) {
    RowScratch scratch(shape);
    for (int64_t r = begin; r < end; ++r) {
      const int i = static_cast<int>(r % shape.seq_q);
      const int h = static_cast<int>((r / shape.seq_q) % shape.heads);
      const int b = static_cast<int>(r / (static_cast<int64_t>(shape.seq_q) * shape.heads));
      reference_row(shape, q, k, v, softmax_scale, b, h, i, scratch, &ref.out[r * D], &ref.lse[r]);
    }
  });
  return ref;
}

AttentionReference reference_attention_rows(const AttentionShape& shape,
                                            const std::vector<float>& q,
                                            const std::vector<float>& k,
                                            const std::vector<float>& v, double softmax_scale,
                                            const std::vector<QueryRow>& rows, unsigned threads) {
  const int D = shape.head_dim;
  AttentionReference ref;
  ref.out.assign(rows.size() * D, 0.0);
  ref.lse.assign(rows.size(), 0.0);
  parallel_rows(static_cast<int64_t>(rows.size()), threads, [&](int64_t begin, int64_t end) {
    RowScratch scratch(shape);
    for (int64_t n = begin; n < end; ++n) {
      const QueryRow& row = rows[n];
      reference_row(shape, q, k, v, softmax_scale, row.batch, row.head, row.row, scratch,
                    &ref.out[n * D], &ref.lse[n]);
    }
  });
  return ref;
}

ErrorStats compare_output(const AttentionShape& shape, const std::vector<float>& out,
                          const std::vector<double>& ref) {
  ErrorStats stats;
  double diff_sq = 0, ref_sq = 0;
  const int D = shape.head_dim;
  for (int b = 0; b < shape.batch; ++b)
    for (int h = 0; h < shape.heads; ++h)
      for (int i = 0; i < shape.seq_q; ++i)
        for (int d = 0; d < D; ++d) {
          const double got = out[tensor_offset(shape, shape.heads, shape.seq_q, b, h, i, d)];
          const double want =
              ref[((static_cast<int64_t>(b) * shape.heads + h) * shape.seq_q + i) * D + d];
          if (!std::isfinite(got)) {
            ++stats.non_finite;
            continue;
          }
          diff_sq += (got - want) * (got - want);
          ref_sq += want * want;
          stats.max_abs_error = std::max(stats.max_abs_error, std::abs(got - want));
          stats.ref_max_abs = std::max(stats.ref_max_abs, std::abs(want));
        }
  stats.rel_error = ref_sq > 0 ? std::sqrt(diff_sq / ref_sq) : std::sqrt(diff_sq);
  return stats;
}

ErrorStats compare_rows(const AttentionShape& shape, const std::vector<float>& out,
                        const std::vector<QueryRow>& rows, const std::vector<double>& ref) {
  ErrorStats stats;
  double diff_sq = 0, ref_sq = 0;
  const int D = shape.head_dim;
  for (size_t n = 0; n < rows.size(); ++n)
    for (int d = 0; d < D; ++d) {
      const QueryRow& row = rows[n];
      const double got =
          out[tensor_offset(shape, shape.heads, shape.seq_q, row.batch, row.head, row.row, d)];
      const double want = ref[n * D + d];
      if (!std::isfinite(got)) {
        ++stats.non_finite;
        continue;
      }
      diff_sq += (got - want) * (got - want);
      ref_sq += want * want;
      stats.max_abs_error = std::max(stats.max_abs_error, std::abs(got - want));
      stats.ref_max_abs = std::max(stats.ref_max_abs, std::abs(want));
    }
  stats.rel_error = ref_sq > 0 ? std::sqrt(diff_sq / ref_sq) : std::sqrt(diff_sq);
  return stats;
}

std::optional<WrongElement> first_wrong_element(const AttentionShape& shape,
                                                const std::vector<float>& out,
                                                const std::vector<QueryRow>& rows,
                                                const std::vector<double>& ref, double tolerance) {
  const int D = shape.head_dim;
  double ref_sq = 0;
  for (size_t i = 0; i < rows.size() * D; ++i) ref_sq += ref[i] * ref[i];
  const double rms = rows.empty() ? 0 : std::sqrt(ref_sq / (rows.size() * D));
  for (size_t n = 0; n < rows.size(); ++n)
    for (int d = 0; d < D; ++d) {
      const QueryRow& row = rows[n];
      const double got =
          out[tensor_offset(shape, shape.heads, shape.seq_q, row.batch, row.head, row.row, d)];
      const double want = ref[n * D + d];
      if (!std::isfinite(got) || std::abs(got - want) > tolerance * (std::abs(want) + rms))
        return WrongElement{row.batch, row.head, row.row, d, got, want};
    }
  return std::nullopt;
}

float element_to_float(DType dtype, uint16_t bits) {
  return dtype == DType::fp16 ? fp16_to_float(bits) : bf16_to_float(bits);
}

void random_tensor(size_t count, DType dtype, std::mt19937_64& rng, std::vector<uint16_t>& bits,
                   std::vector<float>& values) {
  std::normal_distribution<float> normal(0.f, 1.f);
  bits.resize(count);
  values.resize(count);
  for (size_t i = 0; i < count; ++i) {
    const float x = normal(rng);
    bits[i] = dtype == DType::fp16 ? float_to_fp16(x) : float_to_bf16(x);
    values[i] = element_to_float(dtype, bits[i]);
  }
}

}  // namespace flashcore::eval
