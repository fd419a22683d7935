// Shared by the unit and RPC tests: attention templates with the real
// kernel's name, template parameters and params struct, but small enough
// that NVRTC compiles them in a fraction of a second (or, on request, as
// slowly as a test needs), and the ways to hand them to the code under test.
#pragma once

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>

#include "jit/template_registry.hpp"
#include "scratch_dir.hpp"

namespace flashcore::test_support {

// The signature of kernel_templates/attention/attention_fwd.cuh, so specs,
// name expressions and lowered names are those of the real template.
inline constexpr const char* kAttentionKernelSignature =
    "template <typename Element, int HeadDim, bool Causal, int BlockM, int BlockN, int Warps, int Stages,\n"
    "          bool QInRegisters, bool SwizzledSmem>\n"
    "__global__ void __launch_bounds__(Warps * 32) attention_fwd(const __grid_constant__ AttentionParams p)";

// `code` inside namespace flashcore, after the real ABI header and stand-ins
// for the 16-bit element types (only their size matters to these kernels).
inline std::string attention_template_source(const std::string& code) {
  return R"(#pragma once
#include "common/attention_params.cuh"

namespace flashcore {

struct fp16_t { unsigned short bits; };
struct bf16_t { unsigned short bits; };

)" + code + "\n}  // namespace flashcore\n";
}

// Sums each query row into its output row, salted by every template
// parameter: real loads and stores, so ptxas allocates registers, and each
// spec is its own code.
inline const std::string kSmallAttentionTemplate =
    attention_template_source(std::string(kAttentionKernelSignature) + R"( {
  const int row = blockIdx.x * BlockM + threadIdx.x;
  if (threadIdx.x >= BlockM || row >= p.seq_q) return;
  const Element* q = static_cast<const Element*>(p.q) + blockIdx.z * p.q_batch_stride +
                     blockIdx.y * p.q_head_stride + row * p.q_row_stride;
  Element* o = static_cast<Element*>(p.o) + blockIdx.z * p.o_batch_stride +
               blockIdx.y * p.o_head_stride + row * p.o_row_stride;
  unsigned sum = 0;
  for (int d = 0; d < HeadDim; ++d) sum += q[d].bits;
  const int visible = Causal ? (row + 1 < p.seq_k ? row + 1 : p.seq_k) : p.seq_k;
  const unsigned salt = static_cast<unsigned>(visible * (BlockN + Warps * 8 + Stages + (QInRegisters ? 16 : 0) + (SwizzledSmem ? 32 : 0)));
  for (int d = 0; d < HeadDim; ++d) o[d].bits = static_cast<unsigned short>(sum + salt + d);
  if (p.lse != nullptr)
    p.lse[(blockIdx.z * p.heads + blockIdx.y) * p.seq_q + row] = p.softmax_scale * visible;
}
)");

// Compiles as slowly as `steps` asks (about 0.3 s per 100 on this box's
// NVRTC): a balanced tree of inlined steps, so template depth stays small
// while ptxas gets `steps` blocks of straight-line code. For tests that need
// a compile to be in flight for a while.
inline std::string slow_attention_template(int steps) {
  return attention_template_source(R"(template <int Lo, int Hi>
struct Steps {
  __device__ __forceinline__ static float run(float acc, const float* in) {
    if constexpr (Hi - Lo == 1) {
      return acc * in[(Lo * 7) % 256] + __sinf(acc + Lo);
    } else {
      acc = Steps<Lo, (Lo + Hi) / 2>::run(acc, in);
      return Steps<(Lo + Hi) / 2, Hi>::run(acc, in);
    }
  }
};

)" + std::string(kAttentionKernelSignature) + R"( {
  const float* in = static_cast<const float*>(p.q);
  static_cast<float*>(p.o)[threadIdx.x] = Steps<0, )" +
                                   std::to_string(steps) + R"(>::run(in[threadIdx.x], in);
}
)");
}

// The files a templates_dir needs: the real ABI header (as embedded in this
// binary) and `attention_source` as the attention template.
inline std::map<std::string, std::string> attention_template_files(
    const std::string& attention_source) {
  const auto& embedded = TemplateRegistry::embedded()->sources();
  const auto params = embedded.find("common/attention_params.cuh");
  if (params == embedded.end()) {
    ADD_FAILURE() << "embedded templates lack common/attention_params.cuh";
    return {{"attention/attention_fwd.cuh", attention_source}};
  }
  return {{"common/attention_params.cuh", params->second},
          {"attention/attention_fwd.cuh", attention_source}};
}

inline void write_attention_templates(const ScratchDir& dir, const std::string& attention_source) {
  for (const auto& [relative, contents] : attention_template_files(attention_source))
    dir.write(relative, contents);
}

// The small template in memory, for tests that need no templates_dir.
inline std::shared_ptr<const TemplateRegistry> small_template_registry() {
  return std::make_shared<const TemplateRegistry>(attention_template_files(kSmallAttentionTemplate));
}

}  // namespace flashcore::test_support
