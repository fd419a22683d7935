// Shared by the jit tests: a scratch template directory and a small kernel
// with the real attention template's parameter list, so NVRTC tests run in
// well under a second without depending on the real template.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "jit/template_registry.hpp"

namespace flashcore::testing {

// A fresh directory under the system temp dir, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "flashcore_jit_XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) ADD_FAILURE() << "mkdtemp failed for " << pattern;
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }

  void write(const std::string& relative, const std::string& contents) const {
    const auto file = path_ / relative;
    std::filesystem::create_directories(file.parent_path());
    std::ofstream(file, std::ios::binary) << contents;
  }

 private:
  std::filesystem::path path_;
};

// A real (tiny) kernel: copies each query row to the output, so ptxas has
// registers to allocate. Same template parameters and params struct as
// kernel_templates/attention/attention_fwd.cuh.
inline const char* const kSmallAttentionTemplate = R"(#pragma once
#include "common/attention_params.cuh"

namespace flashcore {

struct fp16_t { unsigned short bits; };
struct bf16_t { unsigned short bits; };

template <typename Element, int HeadDim, bool Causal, int BlockM, int BlockN, int Warps, int Stages>
__global__ void __launch_bounds__(Warps * 32) attention_fwd(const __grid_constant__ AttentionParams p) {
  static_assert(sizeof(Element) == 2, "16-bit elements");
  for (int r = threadIdx.x; r < BlockM; r += Warps * 32) {
    const int row = blockIdx.x * BlockM + r;
    if (row >= p.seq_q) return;
    const Element* q = static_cast<const Element*>(p.q) + blockIdx.z * p.q_batch_stride +
                       blockIdx.y * p.q_head_stride + row * p.q_row_stride;
    Element* o = static_cast<Element*>(p.o) + blockIdx.z * p.o_batch_stride +
                 blockIdx.y * p.o_head_stride + row * p.o_row_stride;
    for (int d = 0; d < HeadDim; ++d) {
      Element e = q[d];
      if (Causal) e.bits ^= static_cast<unsigned short>(BlockN + Stages);
      o[d] = e;
    }
  }
}

}  // namespace flashcore
)";

// Writes the real ABI header plus `attention_source` as the entry header.
inline void write_attention_templates(const TempDir& dir, const std::string& attention_source) {
  const auto& embedded = TemplateRegistry::embedded()->sources();
  const auto params = embedded.find("common/attention_params.cuh");
  ASSERT_NE(params, embedded.end()) << "embedded registry lacks common/attention_params.cuh";
  dir.write("common/attention_params.cuh", params->second);
  dir.write("attention/attention_fwd.cuh", attention_source);
}

}  // namespace flashcore::testing
