#include "auth/token_file.hpp"

#include <openssl/sha.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

namespace flashcore::auth {
namespace {

Error bad_line(std::string_view origin, size_t line, const std::string& what) {
  return make_error(ErrorCode::invalid_argument,
                    std::string(origin) + ":" + std::to_string(line) + ": " + what);
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool valid_client_name(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' ||
          c == '@'))
      return false;
  return true;
}

}  // namespace

std::optional<Role> parse_role(std::string_view name) {
  if (name == "read") return Role::read;
  if (name == "compile") return Role::compile;
  if (name == "tune") return Role::tune;
  if (name == "admin") return Role::admin;
  return std::nullopt;
}

std::string_view role_name(Role role) {
  switch (role) {
    case Role::read: return "read";
    case Role::compile: return "compile";
    case Role::tune: return "tune";
    case Role::admin: return "admin";
  }
  return "read";
}

Digest sha256(std::string_view data) {
  Digest digest{};
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), digest.data());
  return digest;
}

Result<std::vector<TokenEntry>> parse_token_file(std::string_view text, std::string_view origin) {
  std::vector<TokenEntry> entries;
  std::set<std::string> names;
  std::set<Digest> digests;
  std::istringstream in{std::string(text)};
  std::string raw;
  size_t number = 0;
  while (std::getline(in, raw)) {
    ++number;
    if (const auto hash = raw.find('#'); hash != std::string::npos) raw.resize(hash);
    std::istringstream fields(raw);
    std::string name, role, hex, extra;
    if (!(fields >> name)) continue;  // blank or comment only
    if (!(fields >> role >> hex))
      return bad_line(origin, number, "expected 'NAME ROLE SHA256HEX'");
    if (fields >> extra) return bad_line(origin, number, "unexpected text after the hash");
    if (!valid_client_name(name))
      return bad_line(origin, number,
                      "client name must be 1-64 of letters, digits, '-', '_', '.', '@'");
    const auto parsed_role = parse_role(role);
    if (!parsed_role)
      return bad_line(origin, number,
                      "role '" + role.substr(0, 32) + "' is not one of read, compile, tune, admin");
    if (hex.size() != 64)
      return bad_line(origin, number,
                      "the hash must be 64 hex characters (sha256 of the token), got " +
                          std::to_string(hex.size()));
    TokenEntry entry;
    entry.client = name;
    entry.role = *parsed_role;
    for (size_t i = 0; i < 32; ++i) {
      const int hi = hex_value(hex[2 * i]), lo = hex_value(hex[2 * i + 1]);
      if (hi < 0 || lo < 0) return bad_line(origin, number, "the hash is not hexadecimal");
      entry.digest[i] = static_cast<uint8_t>(hi * 16 + lo);
    }
    if (!names.insert(name).second)
      return bad_line(origin, number, "client '" + name + "' is listed twice");
    if (!digests.insert(entry.digest).second)
      return bad_line(origin, number, "the same token hash is listed for two clients");
    entries.push_back(std::move(entry));
  }
  if (entries.empty())
    return make_error(ErrorCode::invalid_argument,
                      std::string(origin) + ": no client listed (every call would be refused)");
  return entries;
}

Result<std::vector<TokenEntry>> read_token_file(const std::filesystem::path& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file)
    return make_error(ErrorCode::invalid_argument,
                      "auth_tokens: cannot read " + path.string() + ": " + std::strerror(errno));
  std::ostringstream text;
  text << file.rdbuf();
  if (file.bad())
    return make_error(ErrorCode::invalid_argument, "auth_tokens: cannot read " + path.string());
  return parse_token_file(text.str(), path.string());
}

}  // namespace flashcore::auth
