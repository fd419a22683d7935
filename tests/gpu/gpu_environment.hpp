// What every GPU test shares: one daemon connection, one launcher and one
// stream per process (or the reason to skip), and random 16-bit inputs.
#pragma once

#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "app/daemon.hpp"
#include "cuda/driver_api.hpp"
#include "flashcore/client.hpp"

namespace flashcore::testing {

struct GpuEnvironment {
  std::string skip_reason;         // non-empty: no device, daemon or launcher
  std::unique_ptr<Daemon> daemon;  // only when $FLASHCORE_ADDRESS is not set
  std::filesystem::path cache_dir;
  std::unique_ptr<client::Client> client;
  std::unique_ptr<client::KernelLauncher> launcher;
  std::unique_ptr<cuda::Stream> stream;
};

// The daemon at $FLASHCORE_ADDRESS when set, else an in-process one on a
// loopback port; created on first use.
GpuEnvironment& gpu_environment();

// N(0, 1) samples rounded to the dtype (`bits`) and their exact values.
void random_tensor(size_t count, v1::DType dtype, std::mt19937_64& rng, std::vector<uint16_t>& bits,
                   std::vector<float>& values);

cuda::DeviceBuffer upload_bits(const std::vector<uint16_t>& host);

}  // namespace flashcore::testing
