#include "app/listener_security.hpp"

#include <grpcpp/security/server_credentials.h>
#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace flashcore {
namespace {

Result<std::string> read_pem(const char* setting, const std::filesystem::path& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file)
    return make_error(ErrorCode::failed_precondition, std::string(setting) + ": cannot read " +
                                                          path.string() + ": " +
                                                          std::strerror(errno));
  std::ostringstream text;
  text << file.rdbuf();
  if (text.str().find("-----BEGIN ") == std::string::npos)
    return make_error(ErrorCode::failed_precondition,
                      std::string(setting) + ": " + path.string() + " is not a PEM file");
  return text.str();
}

}  // namespace

bool is_loopback_listen(const std::string& address) {
  if (address.rfind("unix:", 0) == 0) return true;
  std::string host = address;
  if (host.rfind("ipv4:", 0) == 0) host = host.substr(5);
  else if (host.rfind("ipv6:", 0) == 0) host = host.substr(5);
  if (!host.empty() && host.front() == '[') {
    const auto close = host.find(']');
    host = close == std::string::npos ? host : host.substr(1, close - 1);
  } else if (const auto colon = host.rfind(':'); colon != std::string::npos) {
    host.resize(colon);
  }
  if (host == "localhost" || host == "::1") return true;
  return host.rfind("127.", 0) == 0;
}

Status check_exposure(const DaemonConfig& config) {
  if (is_loopback_listen(config.listen_address)) return ok_status();
  const bool auth = !config.auth_tokens.empty();
  const bool tls = !config.tls_cert.empty();
  if (auth && tls) return ok_status();
  std::string missing = !auth && !tls ? "authentication (--auth-tokens) and TLS (--tls-cert, "
                                        "--tls-key)"
                        : !auth       ? "authentication (--auth-tokens)"
                                      : "TLS (--tls-cert, --tls-key)";
  if (!config.insecure)
    return make_error(ErrorCode::failed_precondition,
                      "refusing to listen on " + config.listen_address +
                          ", beyond loopback, without " + missing +
                          ": anyone who reaches the port could " +
                          (auth ? "read the tokens off the wire" : "compile, tune and read") +
                          "; give them, or --insecure to accept that");
  spdlog::warn("INSECURE: listening on {} beyond loopback without {} (--insecure)",
               config.listen_address, missing);
  return ok_status();
}

Result<std::shared_ptr<grpc::ServerCredentials>> server_credentials(const DaemonConfig& config) {
  if (config.tls_cert.empty()) return grpc::InsecureServerCredentials();
  auto cert = read_pem("tls_cert", config.tls_cert);
  if (!cert) return cert.error();
  auto key = read_pem("tls_key", config.tls_key);
  if (!key) return key.error();
  grpc::SslServerCredentialsOptions options(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  options.pem_key_cert_pairs.push_back({*key, *cert});
  if (!config.tls_client_ca.empty()) {
    auto ca = read_pem("tls_client_ca", config.tls_client_ca);
    if (!ca) return ca.error();
    options.pem_root_certs = *ca;
    options.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(options);
}

}  // namespace flashcore
