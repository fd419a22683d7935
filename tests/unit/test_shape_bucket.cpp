#include <gtest/gtest.h>

#include <vector>

#include "tuning/shape_bucket.hpp"

namespace flashcore {
namespace {

RuntimeShape shape(int64_t batch, int64_t heads, int64_t seq_q, int64_t seq_k = 0) {
  RuntimeShape s;
  s.batch = batch;
  s.heads = heads;
  s.seq_q = seq_q;
  s.seq_k = seq_k;
  return s;
}

ShapeBucket bucket_of(const RuntimeShape& s) { return flashcore::bucket_of(s, QkvLayout::bshd); }

TEST(ShapeBucket, SequenceRoundsUpToThePowerOfTwo) {
  EXPECT_EQ(bucket_of(shape(1, 1, 1000)).seq_q, 1024);
  EXPECT_EQ(bucket_of(shape(1, 1, 1024)).seq_q, 1024);
  EXPECT_EQ(bucket_of(shape(1, 1, 1025)).seq_q, 2048);
  EXPECT_EQ(bucket_of(shape(1, 1, 4097)).seq_q, 8192);
  EXPECT_EQ(bucket_of(shape(1, 1, int64_t{1} << 30)).seq_q, int64_t{1} << 30);
}

// Key lengths below 64 share the smallest bucket; query lengths do not:
// 1, 2, ... 32 query rows are decode shapes whose packed tiles differ.
TEST(ShapeBucket, ShortKeysShareTheSmallestBucketFewQueryRowsDoNot) {
  for (int64_t s : {1, 2, 17, 63, 64})
    EXPECT_EQ(bucket_of(shape(1, 1, 64, s)).seq_k, 64) << s;
  EXPECT_EQ(bucket_of(shape(1, 1, 64, 65)).seq_k, 128);
  for (auto [s, b] : std::vector<std::pair<int64_t, int64_t>>{
           {1, 1}, {2, 2}, {3, 4}, {17, 32}, {63, 64}, {64, 64}, {65, 128}})
    EXPECT_EQ(bucket_of(shape(1, 1, s, 4096)).seq_q, b) << s;
  EXPECT_NE(bucket_of(shape(8, 32, 1, 4096)), bucket_of(shape(8, 32, 4, 4096)));
}

TEST(ShapeBucket, SeqKIsBucketedSeparatelyAndDefaultsToSeqQ) {
  const ShapeBucket cross = bucket_of(shape(1, 1, 100, 5000));
  EXPECT_EQ(cross.seq_q, 128);
  EXPECT_EQ(cross.seq_k, 8192);
  const ShapeBucket self = bucket_of(shape(1, 1, 3000, 0));  // 0 = seq_q
  EXPECT_EQ(self.seq_q, 4096);
  EXPECT_EQ(self.seq_k, 4096);
}

TEST(ShapeBucket, BatchTimesHeadsHasItsOwnBucket) {
  EXPECT_EQ(bucket_of(shape(1, 1, 128)).batch_heads, 1);
  EXPECT_EQ(bucket_of(shape(3, 5, 128)).batch_heads, 16);   // 15
  EXPECT_EQ(bucket_of(shape(2, 8, 128)).batch_heads, 16);   // 16
  EXPECT_EQ(bucket_of(shape(17, 1, 128)).batch_heads, 32);  // 17
  // Only the product counts: 4 x 8 and 8 x 4 and 1 x 32 are one bucket.
  EXPECT_EQ(bucket_of(shape(4, 8, 512)), bucket_of(shape(8, 4, 512)));
  EXPECT_EQ(bucket_of(shape(4, 8, 512)), bucket_of(shape(1, 32, 512)));
}

TEST(ShapeBucket, GqaRatioIsPartOfTheBucketRoundedUpToAPowerOfTwo) {
  RuntimeShape mha = shape(2, 16, 512);
  EXPECT_EQ(bucket_of(mha).gqa_ratio, 1);
  mha.kv_heads = 16;  // kv_heads == heads is MHA too
  EXPECT_EQ(bucket_of(mha), bucket_of(shape(2, 16, 512)));
  for (auto [kv_heads, ratio] : std::vector<std::pair<int64_t, int64_t>>{
           {8, 2}, {4, 4}, {1, 16}, {2, 8}}) {
    RuntimeShape gqa = shape(2, 16, 512);
    gqa.kv_heads = kv_heads;
    EXPECT_EQ(bucket_of(gqa).gqa_ratio, ratio) << kv_heads;
    EXPECT_NE(bucket_of(gqa), bucket_of(shape(2, 16, 512))) << kv_heads;
  }
  // 24 query heads on 8 K/V heads (ratio 3) share the ratio-4 bucket.
  RuntimeShape three = shape(1, 24, 512);
  three.kv_heads = 8;
  EXPECT_EQ(bucket_of(three).gqa_ratio, 4);
}

TEST(ShapeBucket, LayoutIsPartOfTheBucket) {
  const ShapeBucket bshd = flashcore::bucket_of(shape(2, 8, 1000), QkvLayout::bshd);
  const ShapeBucket bhsd = flashcore::bucket_of(shape(2, 8, 1000), QkvLayout::bhsd);
  EXPECT_EQ(bhsd.layout, QkvLayout::bhsd);
  EXPECT_NE(bshd, bhsd);
  EXPECT_NE(canonical_bucket(bshd), canonical_bucket(bhsd));
  EXPECT_EQ(canonical_bucket(bhsd), "seq_q=1024;seq_k=1024;batch_heads=16;gqa=1;layout=bhsd;");
  EXPECT_EQ(parse_bucket(canonical_bucket(bhsd)), bhsd);
  EXPECT_EQ(bucket_distance(bshd, bhsd), 1);
  EXPECT_EQ(parse_qkv_layout("bhsd"), QkvLayout::bhsd);
  EXPECT_EQ(parse_qkv_layout("BHSD"), std::nullopt);
}

TEST(ShapeBucket, CanonicalTextRoundTripsAndDistinguishesDimensions) {
  const ShapeBucket b = bucket_of(shape(2, 16, 1000, 3000));
  const std::string text = canonical_bucket(b);
  EXPECT_EQ(text, "seq_q=1024;seq_k=4096;batch_heads=32;gqa=1;layout=bshd;");
  EXPECT_EQ(parse_bucket(text), b);
  // Swapping seq_q and seq_k must give another key.
  EXPECT_NE(canonical_bucket(ShapeBucket{1024, 4096, 32}),
            canonical_bucket(ShapeBucket{4096, 1024, 32}));
}

TEST(ShapeBucket, ParseRejectsTextCanonicalBucketWouldNotProduce) {
  for (const char* bad :
       {"", "seq_q=1024;seq_k=1024;", "seq_q=1000;seq_k=1024;batch_heads=32;gqa=1;layout=bshd;",
        "seq_q=1024;seq_k=32;batch_heads=32;gqa=1;layout=bshd;",
        "seq_q=0;seq_k=1024;batch_heads=32;gqa=1;layout=bshd;",
        "seq_q=3;seq_k=1024;batch_heads=32;gqa=1;layout=bshd;",
        "seq_q=1024;seq_k=1024;batch_heads=0;gqa=1;layout=bshd;",
        "seq_q=1024;seq_k=1024;batch_heads=3;gqa=1;layout=bshd;",
        "seq_k=1024;seq_q=1024;batch_heads=32;gqa=1;layout=bshd;",
        "seq_q=1024;seq_k=1024;batch_heads=32;gqa=1;layout=bshd;x=1;",
        "seq_q=1024;seq_k=1024;batch_heads=32;gqa=1;layout=bshd",
        // The key before schema 4: the database migrates it, nothing parses it.
        "seq_q=1024;seq_k=1024;batch_heads=32;",
        "seq_q=1024;seq_k=1024;batch_heads=32;gqa=3;layout=bshd;",
        "seq_q=1024;seq_k=1024;batch_heads=32;gqa=0;layout=bshd;",
        "seq_q=1024;seq_k=1024;batch_heads=32;gqa=1;layout=;",
        "seq_q=1024;seq_k=1024;batch_heads=32;gqa=1;layout=sbhd;",
        "seq_q=1024;seq_k=1024;batch_heads=32;layout=bshd;gqa=1;"}) {
    EXPECT_EQ(parse_bucket(bad), std::nullopt) << bad;
  }
}

TEST(ShapeBucket, DistanceIsZeroForEqualBucketsAndSymmetric) {
  const std::vector<ShapeBucket> buckets = {
      {64, 64, 1},           {1024, 1024, 16},      {2048, 1024, 16},
      {1024, 4096, 16},      {4096, 4096, 256},     {1024, 1024, 16, 4},
      {1024, 1024, 16, 1, QkvLayout::bhsd},         {1024, 1024, 16, 8, QkvLayout::bhsd}};
  for (const auto& a : buckets) {
    EXPECT_EQ(bucket_distance(a, a), 0);
    for (const auto& b : buckets) {
      EXPECT_EQ(bucket_distance(a, b), bucket_distance(b, a));
      if (!(a == b)) {
        EXPECT_GT(bucket_distance(a, b), 0);
      }
      // Triangle inequality: the distance is a metric, so "nearest" is well defined.
      for (const auto& c : buckets)
        EXPECT_LE(bucket_distance(a, c), bucket_distance(a, b) + bucket_distance(b, c));
    }
  }
}

TEST(ShapeBucket, DistanceCountsDoublings) {
  const ShapeBucket base{1024, 1024, 16};
  EXPECT_EQ(bucket_distance(base, {2048, 1024, 16}), 1);
  EXPECT_EQ(bucket_distance(base, {512, 1024, 16}), 1);
  EXPECT_EQ(bucket_distance(base, {1024, 1024, 64}), 2);
  EXPECT_EQ(bucket_distance(base, {4096, 256, 32}), 2 + 2 + 1);
  EXPECT_EQ(bucket_distance(base, {1024, 1024, 16, 8}), 3);
  EXPECT_EQ(bucket_distance(base, {1024, 1024, 16, 2, QkvLayout::bhsd}), 1 + 1);
  // A doubled sequence is nearer than a sequence four times as long.
  EXPECT_LT(bucket_distance(base, {2048, 2048, 16}), bucket_distance(base, {8192, 8192, 16}));
}

}  // namespace
}  // namespace flashcore
