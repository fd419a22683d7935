#include "common/digest.hpp"

#include <openssl/evp.h>

#include <array>
#include <new>
#include <stdexcept>

namespace flashcore {
namespace {

// Written between a field's name, its length and its bytes. NUL cannot occur
// in a path or in a decimal length, so name and length never run together.
constexpr std::string_view kDelimiter{"\0", 1};

EVP_MD_CTX* new_sha256_context() {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  if (ctx == nullptr) throw std::bad_alloc();
  if (EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr) != 1) {
    EVP_MD_CTX_free(ctx);
    throw std::runtime_error("EVP_DigestInit_ex(sha256) failed");
  }
  return ctx;
}

std::string finish_hex(EVP_MD_CTX* ctx) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
  unsigned int size = 0;
  if (EVP_DigestFinal_ex(ctx, digest.data(), &size) != 1)
    throw std::runtime_error("EVP_DigestFinal_ex failed");
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(size * 2);
  for (unsigned int i = 0; i < size; ++i) {
    hex.push_back(kHex[digest[i] >> 4]);
    hex.push_back(kHex[digest[i] & 0xf]);
  }
  return hex;
}

void update(EVP_MD_CTX* ctx, std::string_view bytes) {
  if (bytes.empty()) return;
  if (EVP_DigestUpdate(ctx, bytes.data(), bytes.size()) != 1)
    throw std::runtime_error("EVP_DigestUpdate failed");
}

}  // namespace

std::string sha256_hex(std::string_view data) {
  EVP_MD_CTX* ctx = new_sha256_context();
  try {
    update(ctx, data);
    std::string hex = finish_hex(ctx);
    EVP_MD_CTX_free(ctx);
    return hex;
  } catch (...) {
    EVP_MD_CTX_free(ctx);
    throw;
  }
}

FieldHasher::FieldHasher() : ctx_(new_sha256_context()) {}

FieldHasher::~FieldHasher() { EVP_MD_CTX_free(static_cast<EVP_MD_CTX*>(ctx_)); }

FieldHasher& FieldHasher::field(std::string_view name, std::string_view value) {
  raw(name);
  raw(kDelimiter);
  raw(std::to_string(value.size()));
  raw(kDelimiter);
  raw(value);
  return *this;
}

std::string FieldHasher::hex_digest() { return finish_hex(static_cast<EVP_MD_CTX*>(ctx_)); }

void FieldHasher::raw(std::string_view bytes) { update(static_cast<EVP_MD_CTX*>(ctx_), bytes); }

}  // namespace flashcore
