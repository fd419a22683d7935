#include "auth/authenticator.hpp"

#include <openssl/crypto.h>

namespace flashcore::auth {
namespace {

constexpr std::string_view kBearer = "Bearer ";
// A token longer than this is refused before it is hashed.
constexpr size_t kMaxTokenBytes = 4096;

Error unauthenticated(std::string message) {
  return make_error(ErrorCode::unauthenticated, std::move(message));
}

}  // namespace

Result<std::shared_ptr<Authenticator>> Authenticator::from_file(
    const std::filesystem::path& path) {
  auto entries = read_token_file(path);
  if (!entries) return entries.error();
  auto authenticator = from_entries(std::move(entries).value());
  authenticator->path_ = path;
  return authenticator;
}

std::shared_ptr<Authenticator> Authenticator::from_entries(std::vector<TokenEntry> entries) {
  auto authenticator = std::shared_ptr<Authenticator>(new Authenticator());
  authenticator->entries_ = std::make_shared<const Entries>(std::move(entries));
  return authenticator;
}

Status Authenticator::reload() {
  if (path_.empty()) return ok_status();
  auto entries = read_token_file(path_);
  if (!entries) return entries.error();
  auto fresh = std::make_shared<const Entries>(std::move(entries).value());
  std::lock_guard lock(mutex_);
  entries_ = std::move(fresh);
  return ok_status();
}

size_t Authenticator::clients() const {
  std::lock_guard lock(mutex_);
  return entries_->size();
}

Result<Identity> Authenticator::authenticate(std::string_view authorization) const {
  if (authorization.empty())
    return unauthenticated("no credentials: send 'authorization: Bearer <token>' "
                           "(flashcore --token or FLASHCORE_TOKEN)");
  if (authorization.substr(0, kBearer.size()) != kBearer)
    return unauthenticated("authorization metadata must be 'Bearer <token>'");
  const std::string_view token = authorization.substr(kBearer.size());
  if (token.empty() || token.size() > kMaxTokenBytes)
    return unauthenticated("the bearer token is empty or too long");

  std::shared_ptr<const Entries> entries;
  {
    std::lock_guard lock(mutex_);
    entries = entries_;
  }
  const Digest presented = sha256(token);
  // Every entry is compared, match or not; the index is picked without a branch
  // on the comparison.
  size_t found = entries->size();
  for (size_t i = 0; i < entries->size(); ++i) {
    const int differs = CRYPTO_memcmp(presented.data(), (*entries)[i].digest.data(),
                                      presented.size()) != 0;
    const size_t mask = static_cast<size_t>(differs) - 1;  // all ones on a match
    found = (i & mask) | (found & ~mask);
  }
  if (found == entries->size()) return unauthenticated("the bearer token is not known");
  const TokenEntry& entry = (*entries)[found];
  return Identity{entry.client, entry.role};
}

}  // namespace flashcore::auth
