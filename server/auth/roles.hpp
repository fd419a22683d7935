// Who a caller is and what it may do (DESIGN.md §7). Roles are ordered: each
// one may do everything the ones below it may.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace flashcore::auth {

enum class Role {
  read = 0,     // GetKernel, List*, GetServerInfo, GetTuningResult, its own tune jobs
  compile = 1,  // plus Compile, Validate
  tune = 2,     // plus Tune, cancelling its own tune jobs
  admin = 3,    // plus every client's tune jobs
};

std::optional<Role> parse_role(std::string_view name);
std::string_view role_name(Role role);

// With authentication off every caller is this one client, with every role.
inline constexpr std::string_view kAnonymous = "anonymous";

struct Identity {
  std::string client;
  Role role = Role::read;
  bool may(Role needed) const { return static_cast<int>(role) >= static_cast<int>(needed); }
};

}  // namespace flashcore::auth
