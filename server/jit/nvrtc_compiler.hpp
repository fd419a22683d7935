// Compiles one KernelSpec to a cubin with NVRTC: instantiates the template
// through a name expression, reads the lowered (mangled) name back, and
// parses ptxas' resource report from the log. Thread-safe: each call makes
// its own nvrtcProgram.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "common/result.hpp"
#include "jit/kernel_spec.hpp"
#include "jit/template_registry.hpp"

namespace flashcore {

class NvrtcCompiler {
 public:
  explicit NvrtcCompiler(std::shared_ptr<const TemplateRegistry> templates);

  // Canonical, sorted NVRTC options for a spec (arch included).
  std::vector<std::string> options(const KernelSpec& spec) const;
  // What identifies the output besides the spec itself; goes into the key.
  ToolchainFingerprint fingerprint(const KernelSpec& spec) const;

  // INVALID_ARGUMENT for an unknown template or arch; INTERNAL with the NVRTC
  // log as detail when the source fails to compile.
  Result<CompiledKernel> compile(const KernelSpec& spec) const;

  const TemplateRegistry& templates() const { return *templates_; }
  static std::string nvrtc_version();  // "13.0"

 private:
  std::shared_ptr<const TemplateRegistry> templates_;
};

// Parses lines such as "ptxas info    : Used 168 registers, used 1 barriers,
// 16 bytes stack frame, ..." and "... bytes spill stores, ... bytes spill loads".
ResourceReport parse_ptxas_report(const std::string& log);

}  // namespace flashcore
