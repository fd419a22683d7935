// What the jit compiles (KernelSpec) and what it produces (CompiledKernel).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "family/tile_config.hpp"

namespace flashcore {

// The compile-time request: everything that selects a cubin, nothing else.
struct KernelSpec {
  std::string template_id{kAttentionTemplateId};
  ProblemClass problem;
  TileConfig config;
  std::string arch = "sm_90a";
  // -lineinfo: opt-in (KernelRequest.line_info); it quadruples the cubin. In
  // the key through the NVRTC options.
  bool line_info = false;
};

// Parsed from ptxas' verbose output in the NVRTC log.
struct ResourceReport {
  int registers = 0;
  int static_smem_bytes = 0;
  int spill_store_bytes = 0;
  int spill_load_bytes = 0;
  int stack_frame_bytes = 0;
  int constant_bytes = 0;
  std::string ptxas_log;
};

// Identifies the toolchain and sources that produced a cubin; part of the key,
// so a new NVRTC or an edited template never serves a stale kernel.
struct ToolchainFingerprint {
  std::string nvrtc_version;          // "13.0"
  std::string template_source_hash;   // hex SHA-256 over all template sources
  std::vector<std::string> options;   // canonical NVRTC options, sorted
};

struct CompiledKernel {
  std::string name_expression;
  std::string lowered_name;
  // Further kernels of the same program (a multi-kernel family: the decode
  // family's combine), as (name expression, lowered name), in launch order.
  std::vector<std::pair<std::string, std::string>> extra_kernels;
  std::string cubin;  // raw bytes
  ResourceReport resources;
  double compile_ms = 0.0;
  ToolchainFingerprint toolchain;
};

}  // namespace flashcore
