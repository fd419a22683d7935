// Shared by the RPC tests: scratch folders, a small template with the real
// attention template's parameter list (NVRTC compiles it in well under a
// second), an in-process daemon on a loopback port and request builders.
#pragma once

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <spdlog/spdlog.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "app/daemon.hpp"
#include "flashcore/v1/flashcore.grpc.pb.h"
#include "jit/template_registry.hpp"

namespace flashcore::rpc_testing {

// A fresh folder under the system temp dir, removed with its contents.
class ScratchDir {
 public:
  ScratchDir() {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "flashcore_rpc_XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) ADD_FAILURE() << "mkdtemp failed for " << pattern;
    path_ = pattern;
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& relative) const { return path_ / relative; }

  void write(const std::string& relative, const std::string& contents) const {
    const auto file = path_ / relative;
    std::filesystem::create_directories(file.parent_path());
    std::ofstream(file, std::ios::binary) << contents;
  }

 private:
  std::filesystem::path path_;
};

// Scales each query row into the output: real loads, stores and arithmetic,
// so ptxas reports registers, yet it compiles in a fraction of a second.
inline const char* const kQuickAttentionTemplate = R"(#pragma once
#include "common/attention_params.cuh"

namespace flashcore {

struct fp16_t { unsigned short bits; };
struct bf16_t { unsigned short bits; };

template <typename Element, int HeadDim, bool Causal, int BlockM, int BlockN, int Warps, int Stages>
__global__ void __launch_bounds__(Warps * 32) attention_fwd(const __grid_constant__ AttentionParams p) {
  extern __shared__ unsigned char smem[];
  const int row = blockIdx.x * BlockM + threadIdx.x % BlockM;
  if (row >= p.seq_q) return;
  const unsigned short* q = static_cast<const unsigned short*>(p.q) + blockIdx.z * p.q_batch_stride +
                            blockIdx.y * p.q_head_stride + row * p.q_row_stride;
  unsigned short* o = static_cast<unsigned short*>(p.o) + blockIdx.z * p.o_batch_stride +
                      blockIdx.y * p.o_head_stride + row * p.o_row_stride;
  for (int d = 0; d < HeadDim; ++d) {
    float x = static_cast<float>(q[d]) * p.softmax_scale;
    if (Causal && d > row) x = 0.0f;
    smem[threadIdx.x] = static_cast<unsigned char>(x);
    o[d] = static_cast<unsigned short>(x + BlockN * Stages);
  }
}

}  // namespace flashcore
)";

// Compiles as slowly as `steps` asks (about 0.3 s per 100 on this box's
// NVRTC): a balanced tree of inlined steps, so template depth stays small
// while ptxas gets `steps` blocks of straight-line code. For tests that need
// a compile to be in flight for a while.
inline std::string slow_attention_template(int steps) {
  return R"(#pragma once
#include "common/attention_params.cuh"

namespace flashcore {

struct fp16_t { unsigned short bits; };
struct bf16_t { unsigned short bits; };

template <int Lo, int Hi>
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

template <typename Element, int HeadDim, bool Causal, int BlockM, int BlockN, int Warps, int Stages>
__global__ void attention_fwd(const __grid_constant__ AttentionParams p) {
  const float* in = static_cast<const float*>(p.q);
  static_cast<float*>(p.o)[threadIdx.x] = Steps<0, )" +
         std::to_string(steps) + R"(>::run(in[threadIdx.x], in);
}

}  // namespace flashcore
)";
}

// A templates_dir with the real ABI header and `attention_source` as the
// attention template.
inline void write_templates(const ScratchDir& dir, const std::string& attention_source) {
  const auto& embedded = TemplateRegistry::embedded()->sources();
  const auto params = embedded.find("common/attention_params.cuh");
  ASSERT_NE(params, embedded.end()) << "embedded templates lack common/attention_params.cuh";
  dir.write("common/attention_params.cuh", params->second);
  dir.write("attention/attention_fwd.cuh", attention_source);
}

inline DaemonConfig loopback_config(const std::filesystem::path& cache_dir) {
  DaemonConfig config;
  config.listen_address = "127.0.0.1:0";
  config.cache_dir = cache_dir;
  config.compile_threads = 2;
  config.drain_timeout = std::chrono::milliseconds(5000);
  config.log_level = "warn";
  return config;
}

inline std::unique_ptr<Daemon> start_daemon(const DaemonConfig& config) {
  spdlog::set_level(spdlog::level::from_str(config.log_level));  // main() does this for flashcored
  auto daemon = Daemon::start(config);
  if (!daemon) {
    ADD_FAILURE() << "Daemon::start: " << daemon.error().message;
    return nullptr;
  }
  return std::move(daemon).value();
}

inline std::shared_ptr<grpc::Channel> channel_to(const Daemon& daemon) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  return grpc::CreateCustomChannel(daemon.address(), grpc::InsecureChannelCredentials(), args);
}

// A request the quick template compiles: fp16, head_dim 64, 2 x 8 heads,
// 500 query rows, the default tile, on sm_80.
inline v1::KernelRequest quick_request() {
  v1::KernelRequest request;
  request.set_template_id("attention_fwd");
  v1::Problem* problem = request.mutable_problem();
  problem->set_dtype(v1::DTYPE_FP16);
  problem->set_head_dim(64);
  problem->set_batch(2);
  problem->set_heads(8);
  problem->set_seq_q(500);
  v1::TileConfig* config = request.mutable_config();
  config->set_block_m(128);
  config->set_block_n(64);
  config->set_warps(4);
  config->set_stages(2);
  request.set_arch("sm_80");
  return request;
}

inline grpc::Status compile(v1::FlashCore::Stub& stub, const v1::KernelRequest& request,
                            v1::KernelHandle* handle, int deadline_s = 120) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(deadline_s));
  return stub.Compile(&context, request, handle);
}

inline grpc::Status get_kernel(v1::FlashCore::Stub& stub, const v1::GetKernelRequest& request,
                               v1::KernelHandle* handle) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  return stub.GetKernel(&context, request, handle);
}

inline grpc::Status list_kernels(v1::FlashCore::Stub& stub, int page_size, const std::string& token,
                                 v1::ListKernelsResponse* response) {
  v1::ListKernelsRequest request;
  request.set_page_size(page_size);
  request.set_page_token(token);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  return stub.ListKernels(&context, request, response);
}

inline grpc::Status server_info(v1::FlashCore::Stub& stub, v1::ServerInfo* info) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  return stub.GetServerInfo(&context, v1::GetServerInfoRequest{}, info);
}

inline bool is_lower_hex(const std::string& s) {
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

}  // namespace flashcore::rpc_testing
