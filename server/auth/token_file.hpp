// The token file (--auth-tokens): one client a line, "NAME ROLE SHA256HEX",
// where SHA256HEX is the SHA-256 of the client's bearer token, so the file
// holds no secret. '#' starts a comment; blank lines are skipped.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "auth/roles.hpp"
#include "common/result.hpp"

namespace flashcore::auth {

using Digest = std::array<uint8_t, 32>;

struct TokenEntry {
  std::string client;
  Role role = Role::read;
  Digest digest{};
};

// Every line checked; the first bad one is an invalid_argument error naming
// `origin`, the line number and what is wrong (never the line's hash). A
// file with no entry is an error too: it would lock every caller out.
Result<std::vector<TokenEntry>> parse_token_file(std::string_view text, std::string_view origin);
Result<std::vector<TokenEntry>> read_token_file(const std::filesystem::path& path);

Digest sha256(std::string_view data);

}  // namespace flashcore::auth
