// libFuzzer: the TOML config (app/config). Any bytes as the file named by
// --config: load_config either refuses with a message or returns a config
// whose every value is in its range.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>

#include "app/config.hpp"

namespace {

std::string config_path() {
  static const std::string path = [] {
    std::string p = "/tmp/flashcore_fuzz_config_" + std::to_string(::getpid()) + ".toml";
    return p;
  }();
  return path;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = config_path();
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  const char* argv[] = {"flashcored", "--config", path.c_str()};
  auto config = flashcore::load_config(3, argv);
  if (!config) {
    if (config.error().message.empty()) std::abort();
    return 0;
  }
  if (config->listen_address.empty() || config->memory_cache_bytes == 0 ||
      config->max_concurrent_rpcs == 0 || config->max_message_bytes == 0 ||
      config->tls_cert.empty() != config->tls_key.empty())
    std::abort();
  return 0;
}
