// Shared by the cache tests: scratch folders, synthetic entries, a file
// helper, and a registry with a tiny real kernel so NVRTC compiles stay fast.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <string>

#include "cache/cached_kernel.hpp"
#include "common/digest.hpp"
#include "jit/template_registry.hpp"

#ifndef FLASHCORE_TEMPLATE_DIR
#error "tests need FLASHCORE_TEMPLATE_DIR (set by tests/CMakeLists.txt)"
#endif

namespace flashcore::cache_testing {

// A fresh /tmp/flashcore-test-XXXXXX, removed with its contents.
class ScratchDir {
 public:
  ScratchDir() {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "flashcore-test-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) ADD_FAILURE() << "mkdtemp failed for " << pattern;
    path_ = pattern;
  }
  ~ScratchDir() {
    std::error_code ec;
    // Tests chmod folders read-only; give write access back so removal works.
    std::filesystem::permissions(path_, std::filesystem::perms::owner_all,
                                 std::filesystem::perm_options::add, ec);
    for (auto it = std::filesystem::recursive_directory_iterator(path_, ec);
         !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
      std::error_code ignored;
      if (it->is_directory(ignored))
        std::filesystem::permissions(it->path(), std::filesystem::perms::owner_all,
                                     std::filesystem::perm_options::add, ignored);
    }
    std::filesystem::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

inline std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

inline void write_file(const std::filesystem::path& path, const std::string& contents) {
  std::filesystem::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary | std::ios::trunc) << contents;
}

// A well-formed key that no real spec produces.
inline std::string test_key(const std::string& seed) { return sha256_hex("test-key:" + seed); }

// An entry with every field set to something other than its default, so a
// round trip that drops a field shows.
inline CachedKernel sample_entry(const std::string& key, std::string cubin) {
  CachedKernel entry;
  entry.key = key;
  entry.spec.problem.dtype = DType::bf16;
  entry.spec.problem.head_dim = 128;
  entry.spec.problem.causal = true;
  entry.spec.config = TileConfig{64, 32, 2, 3};
  entry.spec.arch = "sm_80";
  entry.first_shape = RuntimeShape{2, 8, 4, 1000, 777};
  entry.compiled.name_expression = "flashcore::attention_fwd<flashcore::bf16_t, 128, true, 64, 32, 2, 3>";
  entry.compiled.lowered_name = "_Z13attention_fwd_" + key.substr(0, 8);
  entry.compiled.cubin = std::move(cubin);
  entry.compiled.resources = ResourceReport{96, 1024, 8, 12, 16, 380, "ptxas info : Used 96 registers"};
  entry.compiled.compile_ms = 1234.5;
  entry.compiled.toolchain = ToolchainFingerprint{"13.0", sha256_hex("sources"),
                                                  {"--gpu-architecture=sm_80", "--std=c++17"}};
  entry.created_unix_ms = 1'700'000'000'123;
  entry.cubin_size = entry.compiled.cubin.size();
  return entry;
}

// Binary-looking cubin bytes, NULs included, so nothing treats them as text.
inline std::string sample_cubin(size_t size, unsigned seed) {
  std::string bytes(size, '\0');
  for (size_t i = 0; i < size; ++i) bytes[i] = static_cast<char>((i * 131 + seed * 17) % 256);
  return bytes;
}

// A stand-in for the real attention kernel with the same name, template
// parameters and params struct: real device code that NVRTC compiles in a
// fraction of a second.
inline constexpr const char* kTinyAttentionTemplate = R"(#pragma once
#include "common/attention_params.cuh"

namespace flashcore {

struct fp16_t { unsigned short bits; };
struct bf16_t { unsigned short bits; };

template <typename Element, int HeadDim, bool Causal, int BlockM, int BlockN, int Warps, int Stages>
__global__ void attention_fwd(const __grid_constant__ AttentionParams p) {
  const int row = blockIdx.x * BlockM + threadIdx.x;
  if (threadIdx.x >= BlockM || row >= p.seq_q) return;
  const Element* q = static_cast<const Element*>(p.q) + blockIdx.z * p.q_batch_stride +
                     blockIdx.y * p.q_head_stride + row * p.q_row_stride;
  Element* o = static_cast<Element*>(p.o) + blockIdx.z * p.o_batch_stride +
               blockIdx.y * p.o_head_stride + row * p.o_row_stride;
  unsigned sum = 0;
  for (int d = 0; d < HeadDim; ++d) sum += q[d].bits;
  const int visible = Causal ? (row + 1 < p.seq_k ? row + 1 : p.seq_k) : p.seq_k;
  const unsigned salt = static_cast<unsigned>(visible * (BlockN + Warps * 8 + Stages));
  for (int d = 0; d < HeadDim; ++d) o[d].bits = static_cast<unsigned short>(sum + salt + d);
  if (p.lse != nullptr)
    p.lse[(blockIdx.z * p.heads + blockIdx.y) * p.seq_q + row] = p.softmax_scale * visible;
}

}  // namespace flashcore
)";

// The tiny kernel plus the real ABI header from the source tree.
inline std::shared_ptr<const TemplateRegistry> tiny_registry() {
  const std::string params =
      read_file(std::filesystem::path(FLASHCORE_TEMPLATE_DIR) / "common/attention_params.cuh");
  EXPECT_FALSE(params.empty()) << "cannot read " FLASHCORE_TEMPLATE_DIR "/common/attention_params.cuh";
  return std::make_shared<const TemplateRegistry>(std::map<std::string, std::string>{
      {"attention/attention_fwd.cuh", kTinyAttentionTemplate},
      {"common/attention_params.cuh", params},
  });
}

}  // namespace flashcore::cache_testing
