#include "gpu_environment.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include "eval/attention_reference.hpp"

namespace flashcore::testing {

GpuEnvironment& gpu_environment() {
  static GpuEnvironment* env = [] {
    auto* e = new GpuEnvironment;  // lives for the process
    auto devices = cuda::probe_devices();
    if (!devices.ok()) {
      e->skip_reason = "no CUDA device: " + devices.error().message;
      return e;
    }
    std::string address;
    if (const char* external = std::getenv("FLASHCORE_ADDRESS"); external && *external) {
      address = external;
    } else {
      e->cache_dir = std::filesystem::temp_directory_path() /
                     ("flashcore-gpu-test-" + std::to_string(::getpid()));
      DaemonConfig config;
      config.listen_address = "127.0.0.1:0";
      config.cache_dir = e->cache_dir;
      auto daemon = Daemon::start(config);
      if (!daemon.ok()) {
        e->skip_reason = "cannot start daemon: " + daemon.error().message;
        return e;
      }
      e->daemon = std::move(daemon.value());
      address = e->daemon->address();
    }
    client::ConnectOptions options;
    options.address = address;
    auto connected = client::Client::connect(options);
    if (!connected.ok()) {
      e->skip_reason = "cannot reach daemon: " + connected.error().message;
      return e;
    }
    e->client = std::make_unique<client::Client>(std::move(connected.value()));
    auto launcher = client::KernelLauncher::create(0);
    if (!launcher.ok()) {
      e->skip_reason = "no launcher: " + launcher.error().message;
      return e;
    }
    e->launcher = std::make_unique<client::KernelLauncher>(std::move(launcher.value()));
    auto stream = cuda::Stream::create();
    if (!stream.ok()) {
      e->skip_reason = "no stream: " + stream.error().message;
      return e;
    }
    e->stream = std::make_unique<cuda::Stream>(std::move(stream.value()));
    std::printf("[ gpu      ] device %s (%s), daemon at %s\n", devices->front().name.c_str(),
                devices->front().arch.c_str(), address.c_str());
    return e;
  }();
  return *env;
}

// The worker's own input generator (eval/attention_reference), so the GPU
// tests and the evaluation worker draw inputs the same way.
void random_tensor(size_t count, v1::DType dtype, std::mt19937_64& rng,
                   std::vector<uint16_t>& bits, std::vector<float>& values) {
  eval::random_tensor(count, dtype == v1::DTYPE_FP16 ? DType::fp16 : DType::bf16, rng, bits,
                      values);
}

cuda::DeviceBuffer upload_bits(const std::vector<uint16_t>& host) {
  auto buffer = cuda::DeviceBuffer::allocate(host.size() * sizeof(uint16_t));
  EXPECT_TRUE(buffer.ok()) << buffer.error().message;
  auto status = buffer->upload(host.data(), host.size() * sizeof(uint16_t));
  EXPECT_TRUE(status.ok()) << status.error().message;
  return std::move(buffer.value());
}

}  // namespace flashcore::testing
