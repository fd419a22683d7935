#include "tuning/shape_bucket.hpp"

#include <algorithm>
#include <bit>
#include <charconv>
#include <cstdlib>

namespace flashcore {
namespace {

// floor(log2(v)); exact for the powers of two that buckets hold.
int log2_floor(int64_t v) {
  return static_cast<int>(std::bit_width(static_cast<uint64_t>(std::max<int64_t>(v, 1)))) - 1;
}

bool is_power_of_two(int64_t v) { return v > 0 && std::has_single_bit(static_cast<uint64_t>(v)); }

int64_t seq_bucket(int64_t seq, int64_t min_bucket = kMinSeqBucket) {
  return std::clamp(next_power_of_two(seq), min_bucket, kMaxSeqBucket);
}

// Reads "<name>=<decimal>;" from the front of `text`, consuming it.
std::optional<int64_t> take_field(std::string_view& text, std::string_view name) {
  if (text.substr(0, name.size()) != name || text.size() <= name.size() || text[name.size()] != '=')
    return std::nullopt;
  text.remove_prefix(name.size() + 1);
  int64_t value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end == text.data() || end == text.data() + text.size() || *end != ';')
    return std::nullopt;
  text.remove_prefix(static_cast<size_t>(end - text.data()) + 1);
  return value;
}

}  // namespace

int64_t next_power_of_two(int64_t value) {
  if (value <= 1) return 1;
  // Shapes are validated to 2^30 per dimension and batch*heads < 2^32, so
  // this never approaches the sign bit; the clamp keeps bit_ceil defined.
  const auto v = static_cast<uint64_t>(std::min<int64_t>(value, int64_t{1} << 62));
  return static_cast<int64_t>(std::bit_ceil(v));
}

std::string_view qkv_layout_name(QkvLayout layout) {
  return layout == QkvLayout::bhsd ? "bhsd" : "bshd";
}

std::optional<QkvLayout> parse_qkv_layout(std::string_view name) {
  if (name == "bshd") return QkvLayout::bshd;
  if (name == "bhsd") return QkvLayout::bhsd;
  return std::nullopt;
}

ShapeBucket bucket_of(const RuntimeShape& shape, QkvLayout layout) {
  ShapeBucket bucket;
  bucket.seq_q = seq_bucket(shape.seq_q, kMinQueryBucket);
  bucket.seq_k = seq_bucket(shape.effective_seq_k());
  bucket.batch_heads =
      next_power_of_two(std::max<int64_t>(shape.batch, 1) * std::max<int64_t>(shape.heads, 1));
  const int64_t heads = std::max<int64_t>(shape.heads, 1);
  const int64_t kv_heads = std::clamp<int64_t>(shape.effective_kv_heads(), 1, heads);
  bucket.gqa_ratio = next_power_of_two((heads + kv_heads - 1) / kv_heads);
  bucket.layout = layout;
  return bucket;
}

std::string canonical_bucket(const ShapeBucket& bucket) {
  return "seq_q=" + std::to_string(bucket.seq_q) + ";seq_k=" + std::to_string(bucket.seq_k) +
         ";batch_heads=" + std::to_string(bucket.batch_heads) +
         ";gqa=" + std::to_string(bucket.gqa_ratio) + ";layout=" +
         std::string(qkv_layout_name(bucket.layout)) + ";";
}

std::optional<ShapeBucket> parse_bucket(std::string_view text) {
  const auto seq_q = take_field(text, "seq_q");
  if (!seq_q) return std::nullopt;
  const auto seq_k = take_field(text, "seq_k");
  if (!seq_k) return std::nullopt;
  const auto batch_heads = take_field(text, "batch_heads");
  if (!batch_heads) return std::nullopt;
  const auto gqa = take_field(text, "gqa");
  if (!gqa) return std::nullopt;
  constexpr std::string_view kLayout = "layout=";
  if (text.substr(0, kLayout.size()) != kLayout || text.empty() || text.back() != ';')
    return std::nullopt;
  const auto layout = parse_qkv_layout(text.substr(kLayout.size(), text.size() - kLayout.size() - 1));
  if (!layout) return std::nullopt;
  if (!is_power_of_two(*seq_q) || *seq_q < kMinQueryBucket || *seq_q > kMaxSeqBucket)
    return std::nullopt;
  if (!is_power_of_two(*seq_k) || *seq_k < kMinSeqBucket || *seq_k > kMaxSeqBucket)
    return std::nullopt;
  if (!is_power_of_two(*batch_heads) || !is_power_of_two(*gqa)) return std::nullopt;
  return ShapeBucket{*seq_q, *seq_k, *batch_heads, *gqa, *layout};
}

int bucket_distance(const ShapeBucket& a, const ShapeBucket& b) {
  return std::abs(log2_floor(a.seq_q) - log2_floor(b.seq_q)) +
         std::abs(log2_floor(a.seq_k) - log2_floor(b.seq_k)) +
         std::abs(log2_floor(a.batch_heads) - log2_floor(b.batch_heads)) +
         std::abs(log2_floor(a.gqa_ratio) - log2_floor(b.gqa_ratio)) +
         (a.layout == b.layout ? 0 : 1);
}

}  // namespace flashcore
