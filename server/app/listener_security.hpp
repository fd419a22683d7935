// What the listener asks of its callers: TLS (and mutual TLS) credentials,
// and the rule that a daemon reachable beyond loopback authenticates every
// call over TLS unless told --insecure (DESIGN.md §7).
#pragma once

#include <grpcpp/security/server_credentials.h>

#include <memory>
#include <string>

#include "app/config.hpp"
#include "common/result.hpp"

namespace flashcore {

// 127.0.0.0/8, [::1], localhost and unix: sockets; anything else (0.0.0.0,
// [::], a host name or address) is reachable from elsewhere.
bool is_loopback_listen(const std::string& address);

// failed_precondition when config.listen_address is beyond loopback without
// both auth_tokens and TLS and without insecure; with insecure, logs a
// warning (at every start) and allows it.
Status check_exposure(const DaemonConfig& config);

// TLS credentials from tls_cert/tls_key (and tls_client_ca: client
// certificates required and verified); insecure ones without. A file that
// does not read is an error naming it.
Result<std::shared_ptr<grpc::ServerCredentials>> server_credentials(const DaemonConfig& config);

}  // namespace flashcore
