// Shape buckets: the run-time part of a tuning key (DESIGN.md §1). Tuning is
// done per bucket, not per exact shape, so a client with S=1000 is served the
// config tuned for S=1024, and an untuned bucket is warm-started from the
// nearest tuned one (bucket_distance).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "family/tile_config.hpp"

namespace flashcore {

// Sequence lengths below this share one bucket. Below 64 tokens every tile
// config with block_m >= 64 runs a single query tile per (head, batch), the
// kernel is launch-latency bound (a few microseconds), and differences
// between configs fall inside the timing spread, so finer buckets would only
// multiply tuning jobs that cannot tell configs apart.
inline constexpr int64_t kMinSeqBucket = 64;
// Except the query length: below 64 rows every power of two is its own
// bucket. Those are decode shapes (one new token, or a few speculative ones),
// where the decode family packs the query heads of a kv head into one tile,
// so 1, 2 or 8 rows are different tiles and want different configs.
inline constexpr int64_t kMinQueryBucket = 1;
// The largest sequence runtime_shape_error() accepts is 2^30, a power of two.
inline constexpr int64_t kMaxSeqBucket = int64_t{1} << 30;

// Memory layout of Q, K, V and O as the request gives it (Problem.layout).
// The same cubin serves both, but it reads rows with other strides, so the
// fastest tile config of one layout says nothing sure about the other: each
// is tuned, stored and served on its own.
enum class QkvLayout { bshd, bhsd };
std::string_view qkv_layout_name(QkvLayout layout);  // "bshd", "bhsd"
std::optional<QkvLayout> parse_qkv_layout(std::string_view name);

struct ShapeBucket {
  int64_t seq_q = kMinSeqBucket;  // power of two in [kMinQueryBucket, kMaxSeqBucket]
  int64_t seq_k = kMinSeqBucket;  // the same, bucketed separately (cross-attention, KV cache)
  int64_t batch_heads = 1;        // batch * heads rounded up to a power of two (>= 1)
  // Query heads per K/V head (GQA), rounded up to a power of two: 1 for
  // MHA. Blocks of one K/V head share its tiles in L2, so the ratio moves
  // the memory traffic a config sees.
  int64_t gqa_ratio = 1;
  QkvLayout layout = QkvLayout::bshd;

  bool operator==(const ShapeBucket&) const = default;
};

// Smallest power of two >= value (1 for value <= 1).
int64_t next_power_of_two(int64_t value);

// Rounds each dimension of a valid shape up to its bucket. seq_k = 0 means
// seq_q (RuntimeShape::effective_seq_k), kv_heads = 0 means heads.
ShapeBucket bucket_of(const RuntimeShape& shape, QkvLayout layout);

// "seq_q=1024;seq_k=1024;batch_heads=32;gqa=1;layout=bshd;" — fixed field
// order, the text the tuning database keys on. The first three fields are
// as they were before gqa and layout joined the key (schema 4), so text
// that matched on them still does.
std::string canonical_bucket(const ShapeBucket& bucket);
// Inverse of canonical_bucket; nullopt for text it would not have produced.
std::optional<ShapeBucket> parse_bucket(std::string_view text);

// Doublings between two buckets: the sum over the four numeric dimensions
// of |log2(a) - log2(b)|, plus 1 when the layouts differ. Symmetric, zero
// only for equal buckets, and a bucket twice as long in one dimension is 1
// away. An integer, so ordering by distance is exact.
int bucket_distance(const ShapeBucket& a, const ShapeBucket& b);

}  // namespace flashcore
