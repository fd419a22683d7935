#include "common/digest.hpp"

#include <gtest/gtest.h>

#include <string>

namespace flashcore {
namespace {

TEST(Digest, Sha256MatchesFipsTestVectors) {
  // FIPS 180-2, appendix B.1 and B.2.
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(Digest, FieldBoundariesAreUnambiguous) {
  FieldHasher a, b;
  a.field("x", "ab").field("y", "c");
  b.field("x", "a").field("y", "bc");
  EXPECT_NE(a.hex_digest(), b.hex_digest());
}

TEST(Digest, NameAndValueBoundaryIsUnambiguous) {
  FieldHasher a, b;
  a.field("ab", "c");
  b.field("a", "bc");
  EXPECT_NE(a.hex_digest(), b.hex_digest());
}

TEST(Digest, FieldHasherIsDeterministicAndOrderSensitive) {
  FieldHasher a, b, c;
  a.field("path", "x").field("source", "y");
  b.field("path", "x").field("source", "y");
  c.field("source", "y").field("path", "x");
  const std::string digest = a.hex_digest();
  EXPECT_EQ(digest, b.hex_digest());
  EXPECT_NE(digest, c.hex_digest());
  EXPECT_EQ(digest.size(), 64u);
  EXPECT_EQ(digest.find_first_not_of("0123456789abcdef"), std::string::npos);
}

TEST(Digest, BinaryValuesWithNulBytesHashFully) {
  const std::string with_nul("a\0b", 3);
  const std::string other("a\0c", 3);
  EXPECT_NE(sha256_hex(with_nul), sha256_hex(other));
  FieldHasher a, b;
  a.field("cubin", with_nul);
  b.field("cubin", other);
  EXPECT_NE(a.hex_digest(), b.hex_digest());
}

}  // namespace
}  // namespace flashcore
