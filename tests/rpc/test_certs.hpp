// Certificates made with the openssl command at test time: a CA, a server
// certificate for localhost / 127.0.0.1 signed by it, a client certificate
// signed by it, and a second, unrelated CA.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <string>

namespace flashcore::rpc_testing {

struct TestCerts {
  std::filesystem::path ca, server_cert, server_key, client_cert, client_key, other_ca;
  bool ok = false;
  std::string error;
};

inline TestCerts make_test_certs(const std::filesystem::path& dir) {
  TestCerts certs;
  const std::string d = dir.string();
  certs.ca = dir / "ca.pem";
  certs.server_cert = dir / "server.pem";
  certs.server_key = dir / "server.key";
  certs.client_cert = dir / "client.pem";
  certs.client_key = dir / "client.key";
  certs.other_ca = dir / "other-ca.pem";
  const std::string q = " 2>>" + d + "/openssl.log";
  const std::string script =
      "set -e; cd '" + d + "'; "
      "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > server.ext; "
      "printf 'extendedKeyUsage=clientAuth\\n' > client.ext; "
      "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 "
      "-subj /CN=flashcore-test-ca" + q + "; "
      "openssl req -x509 -newkey rsa:2048 -nodes -keyout other-ca.key -out other-ca.pem -days 2 "
      "-subj /CN=another-ca" + q + "; "
      "openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr "
      "-subj /CN=localhost" + q + "; "
      "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
      "-out server.pem -days 2 -extfile server.ext" + q + "; "
      "openssl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr "
      "-subj /CN=flashcore-test-client" + q + "; "
      "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
      "-out client.pem -days 2 -extfile client.ext" + q;
  const std::string command = "bash -c \"" + [&] {
    std::string escaped;
    for (char c : script) {
      if (c == '"' || c == '\\' || c == '$' || c == '`') escaped += '\\';
      escaped += c;
    }
    return escaped;
  }() + "\"";
  certs.ok = std::system(command.c_str()) == 0;
  if (!certs.ok) certs.error = "openssl failed; see " + d + "/openssl.log";
  return certs;
}

}  // namespace flashcore::rpc_testing
