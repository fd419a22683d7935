#include <google/protobuf/util/json_util.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include "cli.hpp"

namespace flashcore::cli {

// The message stays on one line whatever the server sent; anything after the
// first line moves to the detail.
int fail(const Globals& globals, const fc::Error& error) {
  std::string message = error.message;
  std::string detail = error.detail;
  if (auto newline = message.find('\n'); newline != std::string::npos) {
    std::string rest = message.substr(newline + 1);
    message.resize(newline);
    detail = detail.empty() ? rest : rest + "\n" + detail;
  }
  std::cerr << "flashcore: " << message << "\n";
  if (globals.verbose && !detail.empty()) {
    std::cerr << detail;
    if (detail.back() != '\n') std::cerr << "\n";
  }
  return 1;
}

int fail(const Globals& globals, const std::string& message) {
  return fail(globals, fc::make_error(fc::ErrorCode::internal, message));
}

fc::Result<fc::client::Client> connect(const Globals& globals) {
  fc::client::ConnectOptions options;
  options.address = globals.address;
  options.call_timeout = std::chrono::milliseconds(globals.timeout_ms);
  options.connect_timeout = std::min(options.connect_timeout, options.call_timeout);
  options.token = globals.token;
  options.tls_ca_file = globals.tls_ca;
  options.tls_cert_file = globals.tls_cert;
  options.tls_key_file = globals.tls_key;
  options.tls_server_name = globals.tls_server_name;
  return fc::client::Client::connect(options);
}

std::string to_json(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;  // a 0 (no spills) is information too
  std::string out;
  if (!google::protobuf::util::MessageToJsonString(message, &out, options).ok())
    return "{}\n";
  return out;
}

fc::Status write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (out) out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (out) out.close();
  if (!out)
    return fc::make_error(fc::ErrorCode::internal,
                          "cannot write " + path + ": " + std::strerror(errno));
  return fc::ok_status();
}

int print_handle(const Globals& globals, v1::KernelHandle handle, const std::string& output,
                 bool include_cubin) {
  if (!output.empty()) {
    if (handle.cubin().empty())
      return fail(globals, "the server sent no cubin for " + handle.key());
    if (auto s = write_file(output, handle.cubin()); !s) return fail(globals, s.error());
  }
  if (globals.json) {
    if (!include_cubin) handle.clear_cubin();
    std::cout << to_json(handle);
  } else {
    std::cout << fc::client::describe(handle);
  }
  if (!output.empty()) {
    // In JSON mode stdout carries the document only.
    (globals.json ? std::cerr : std::cout)
        << "wrote " << handle.cubin_size() << " bytes to " << output << "\n";
  }
  return 0;
}

std::string config_label(const v1::TileConfig& c) {
  std::string label = std::to_string(c.block_m()) + "x" + std::to_string(c.block_n()) + " w" +
                      std::to_string(c.warps()) + " s" + std::to_string(c.stages());
  if (c.q_placement() == v1::Q_PLACEMENT_REGISTERS) label += " qreg";
  if (c.q_placement() == v1::Q_PLACEMENT_SHARED) label += " qsmem";
  if (c.smem_layout() == v1::SMEM_LAYOUT_SWIZZLED) label += " swz";
  if (c.smem_layout() == v1::SMEM_LAYOUT_PADDED) label += " pad";
  return label;
}

}  // namespace flashcore::cli
