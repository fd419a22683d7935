// Bearer tokens checked against the token file's hashes. The set is replaced
// whole on reload (SIGHUP); a file that no longer reads keeps the old set.
#pragma once

#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "auth/roles.hpp"
#include "auth/token_file.hpp"
#include "common/result.hpp"

namespace flashcore::auth {

class Authenticator {
 public:
  // Reads the file now; an error names the file and the line.
  static Result<std::shared_ptr<Authenticator>> from_file(const std::filesystem::path& path);
  static std::shared_ptr<Authenticator> from_entries(std::vector<TokenEntry> entries);

  // Re-reads the file. On an error the running set stays and the error is
  // returned (the caller logs it).
  Status reload();

  // `authorization` is the call's "authorization" metadata ("Bearer <token>").
  // unauthenticated when it is missing, malformed or matches no client. The
  // token's SHA-256 is compared with every entry in constant time (no early
  // exit), so timing tells nothing about which bytes matched.
  Result<Identity> authenticate(std::string_view authorization) const;

  size_t clients() const;
  const std::filesystem::path& path() const { return path_; }

 private:
  using Entries = std::vector<TokenEntry>;
  std::filesystem::path path_;
  mutable std::mutex mutex_;
  std::shared_ptr<const Entries> entries_;
};

}  // namespace flashcore::auth
