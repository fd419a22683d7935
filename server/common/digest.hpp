// SHA-256 (OpenSSL's libcrypto, which gRPC already brings in).
#pragma once

#include <string>
#include <string_view>

namespace flashcore {

std::string sha256_hex(std::string_view data);

// Incremental hashing of delimited fields: each update writes the field's
// length before its bytes, so ("ab","c") and ("a","bc") never collide.
class FieldHasher {
 public:
  FieldHasher();
  ~FieldHasher();
  FieldHasher(const FieldHasher&) = delete;
  FieldHasher& operator=(const FieldHasher&) = delete;

  FieldHasher& field(std::string_view name, std::string_view value);
  std::string hex_digest();  // finalizes; call once

 private:
  void raw(std::string_view bytes);
  void* ctx_;
};

}  // namespace flashcore
