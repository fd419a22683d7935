#include "jit/nvrtc_compiler.hpp"

#include <nvrtc.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <regex>

#include "family/template_catalog.hpp"

namespace flashcore {
namespace {

// Owns one nvrtcProgram; every compile makes its own, which is what makes
// NvrtcCompiler safe to call from several pool threads at once.
class Program {
 public:
  Program() = default;
  ~Program() {
    if (program_ != nullptr) nvrtcDestroyProgram(&program_);
  }
  Program(const Program&) = delete;
  Program& operator=(const Program&) = delete;
  nvrtcProgram* out() { return &program_; }
  nvrtcProgram get() const { return program_; }

 private:
  nvrtcProgram program_ = nullptr;
};

Error nvrtc_error(nvrtcResult result, const char* call, const std::string& context) {
  return make_error(ErrorCode::internal, std::string(call) + " failed for " + context + ": " +
                                             nvrtcGetErrorString(result));
}

std::string program_log(nvrtcProgram program) {
  size_t size = 0;
  if (nvrtcGetProgramLogSize(program, &size) != NVRTC_SUCCESS || size == 0) return {};
  std::string log(size, '\0');
  if (nvrtcGetProgramLog(program, log.data()) != NVRTC_SUCCESS) return {};
  while (!log.empty() && log.back() == '\0') log.pop_back();  // size counts the terminator
  return log;
}

// Largest value of the number captured by `pattern` anywhere in `log`. A
// program compiles one kernel, but if ptxas ever reports several functions
// the worst one is what decides occupancy and spilling.
int max_match(const std::string& log, const std::regex& pattern) {
  int best = 0;
  for (std::sregex_iterator it(log.begin(), log.end(), pattern), end; it != end; ++it)
    best = std::max(best, std::stoi((*it)[1].str()));
  return best;
}

// The spec's template, once its arch, problem class and config are known to
// be ones the template takes (INVALID_ARGUMENT naming the field otherwise).
Result<const TemplateInfo*> checked_template(const KernelSpec& spec) {
  const TemplateInfo* info = find_template(spec.template_id);
  if (info == nullptr)
    return make_error(ErrorCode::invalid_argument,
                      "template_id: unknown template " + spec.template_id);
  const auto arch = find_arch(spec.arch);
  if (!arch) return make_error(ErrorCode::invalid_argument, "arch: unsupported arch " + spec.arch);
  if (auto error = problem_class_error(spec.problem))
    return make_error(ErrorCode::invalid_argument, *error);
  if (auto error = info->config_error(spec.config, spec.problem, *arch))
    return make_error(ErrorCode::invalid_argument, *error);
  return info;
}

// Creates the program over the registry's sources and adds the kernel's name
// expressions (a multi-kernel family's further kernels come from the same
// program; they are listed in kernel.extra_kernels).
Status create_program(Program& program, const TemplateRegistry& templates,
                      const std::string& entry_header, const KernelSpec& spec,
                      const TemplateInfo& info, CompiledKernel& kernel,
                      const std::string& context) {
  // Every registry file goes in as a header named by its relative path, so
  // the templates' #include "common/..." lines resolve without a file system.
  std::vector<const char*> header_sources, header_names;
  for (const auto& [path, contents] : templates.sources()) {
    header_names.push_back(path.c_str());
    header_sources.push_back(contents.c_str());
  }
  const std::string source = "#include \"" + entry_header + "\"\n";
  const std::string program_name = spec.template_id + ".cu";
  if (auto r = nvrtcCreateProgram(program.out(), source.c_str(), program_name.c_str(),
                                  static_cast<int>(header_sources.size()), header_sources.data(),
                                  header_names.data());
      r != NVRTC_SUCCESS)
    return nvrtc_error(r, "nvrtcCreateProgram", context);
  if (auto r = nvrtcAddNameExpression(program.get(), kernel.name_expression.c_str());
      r != NVRTC_SUCCESS)
    return nvrtc_error(r, "nvrtcAddNameExpression", context);
  if (info.extra_name_expressions != nullptr)
    for (std::string& name : info.extra_name_expressions(spec.problem, spec.config)) {
      if (auto r = nvrtcAddNameExpression(program.get(), name.c_str()); r != NVRTC_SUCCESS)
        return nvrtc_error(r, "nvrtcAddNameExpression", name);
      kernel.extra_kernels.emplace_back(std::move(name), std::string());
    }
  return ok_status();
}

// Compiles the program with `options`; its log, or the failure with the log
// as detail.
Result<std::string> compile_program(const Program& program,
                                    const std::vector<std::string>& options,
                                    const std::string& context) {
  std::vector<const char*> option_ptrs;
  for (const auto& option : options) option_ptrs.push_back(option.c_str());
  const nvrtcResult compiled = nvrtcCompileProgram(
      program.get(), static_cast<int>(option_ptrs.size()), option_ptrs.data());
  std::string log = program_log(program.get());
  if (compiled != NVRTC_SUCCESS) {
    spdlog::warn("NVRTC failed to compile {}: {}", context, nvrtcGetErrorString(compiled));
    return make_error(ErrorCode::internal, "NVRTC failed to compile " + context,
                      log.empty() ? std::string(nvrtcGetErrorString(compiled)) : log);
  }
  return log;
}

// The lowered names of the kernel and of its further kernels, copied out of
// the program (which owns them).
Status read_lowered_names(const Program& program, CompiledKernel& kernel,
                          const std::string& context) {
  const char* lowered = nullptr;
  if (auto r = nvrtcGetLoweredName(program.get(), kernel.name_expression.c_str(), &lowered);
      r != NVRTC_SUCCESS || lowered == nullptr)
    return nvrtc_error(r, "nvrtcGetLoweredName", context);
  kernel.lowered_name = lowered;
  for (auto& [name, extra_lowered] : kernel.extra_kernels) {
    const char* other = nullptr;
    if (auto r = nvrtcGetLoweredName(program.get(), name.c_str(), &other);
        r != NVRTC_SUCCESS || other == nullptr)
      return nvrtc_error(r, "nvrtcGetLoweredName", name);
    extra_lowered = other;
  }
  return ok_status();
}

Status read_cubin(const Program& program, CompiledKernel& kernel, const std::string& context,
                  const std::string& log) {
  size_t cubin_size = 0;
  if (auto r = nvrtcGetCUBINSize(program.get(), &cubin_size); r != NVRTC_SUCCESS)
    return nvrtc_error(r, "nvrtcGetCUBINSize", context);
  if (cubin_size == 0)
    return make_error(ErrorCode::internal, "NVRTC produced no cubin for " + context, log);
  kernel.cubin.resize(cubin_size);
  if (auto r = nvrtcGetCUBIN(program.get(), kernel.cubin.data()); r != NVRTC_SUCCESS)
    return nvrtc_error(r, "nvrtcGetCUBIN", context);
  return ok_status();
}

// Where a CUDA driver is installed NVRTC may answer from the driver's compute
// cache (~/.nv/ComputeCache) and then prints no ptxas report. A kernel without
// one would read as 0 registers and 0 spills, which the tuner's pruning and
// the validation matrix would take as true: refuse it. (Daemon::start turns
// that cache off, so this is a guard, not a path.)
Status check_resource_report(const std::string& log, const std::string& context) {
  if (log.find("Used ") == std::string::npos || log.find("registers") == std::string::npos)
    return make_error(ErrorCode::internal,
                      "NVRTC returned no ptxas resource report for " + context +
                          " (a CUDA driver compute-cache hit? run with CUDA_CACHE_DISABLE=1)",
                      log);
  return ok_status();
}

}  // namespace

NvrtcCompiler::NvrtcCompiler(std::shared_ptr<const TemplateRegistry> templates)
    : templates_(std::move(templates)) {}

std::string NvrtcCompiler::nvrtc_version() {
  int major = 0, minor = 0;
  if (nvrtcVersion(&major, &minor) != NVRTC_SUCCESS) return "unknown";
  return std::to_string(major) + "." + std::to_string(minor);
}

std::vector<std::string> NvrtcCompiler::options(const KernelSpec& spec) const {
  std::vector<std::string> options = {
      "--gpu-architecture=" + spec.arch,  // a real sm_XX, so NVRTC emits a cubin, not only PTX
      "--std=c++17",
      "--ptxas-options=--verbose",  // resource report in the log (parse_ptxas_report)
      "--use_fast_math",
      "-DFLASHCORE_NVRTC=1",
  };
  // Lets profilers map SASS to template lines; no effect on the code, but
  // the cubin of an attention kernel grows from ~37 KB to ~145 KB, which
  // every cache hit then carries: opt-in.
  if (spec.line_info) options.push_back("-lineinfo");
  std::sort(options.begin(), options.end());
  return options;
}

ToolchainFingerprint NvrtcCompiler::fingerprint(const KernelSpec& spec) const {
  return ToolchainFingerprint{nvrtc_version(), templates_->source_hash(), options(spec)};
}

Result<CompiledKernel> NvrtcCompiler::compile(const KernelSpec& spec) const {
  const auto start = std::chrono::steady_clock::now();
  auto info = checked_template(spec);
  if (!info) return info.error();
  auto header = templates_->entry_header(spec.template_id);
  if (!header)  // the template exists, but this registry (a directory override) lacks it
    return make_error(ErrorCode::failed_precondition, header.error().message);

  CompiledKernel kernel;
  kernel.name_expression = (*info)->name_expression(spec.problem, spec.config);
  kernel.toolchain = fingerprint(spec);
  const std::string context = kernel.name_expression + " for " + spec.arch;
  Program program;
  if (auto s = create_program(program, *templates_, header.value(), spec, **info, kernel, context);
      !s)
    return s.error();
  auto log = compile_program(program, kernel.toolchain.options, context);
  if (!log) return log.error();
  if (auto s = read_lowered_names(program, kernel, context); !s) return s.error();
  if (auto s = read_cubin(program, kernel, context, *log); !s) return s.error();
  if (auto s = check_resource_report(*log, context); !s) return s.error();

  kernel.resources = parse_ptxas_report(*log);
  kernel.compile_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  spdlog::debug("compiled {} in {:.0f} ms: {} registers, {} B spill stores, {} B cubin", context,
                kernel.compile_ms, kernel.resources.registers, kernel.resources.spill_store_bytes,
                kernel.cubin.size());
  return kernel;
}

ResourceReport parse_ptxas_report(const std::string& log) {
  // NVRTC 13.0 with --ptxas-options=--verbose writes, per entry function:
  //   ptxas info    : Function properties for _Z...
  //   ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
  //   ptxas info    : Used 72 registers, used 1 barriers, 8192 bytes smem, 376 bytes cmem[0]
  // (sm_90 targets print no cmem[0] figure for __grid_constant__ params).
  static const std::regex registers(R"(Used (\d+) registers)");
  static const std::regex smem(R"((\d+) bytes smem)");
  static const std::regex cmem(R"((\d+) bytes cmem\[0\])");
  static const std::regex stack(R"((\d+) bytes stack frame)");
  static const std::regex spill_stores(R"((\d+) bytes spill stores)");
  static const std::regex spill_loads(R"((\d+) bytes spill loads)");

  ResourceReport report;
  report.registers = max_match(log, registers);
  report.static_smem_bytes = max_match(log, smem);
  report.constant_bytes = max_match(log, cmem);
  report.stack_frame_bytes = max_match(log, stack);
  report.spill_store_bytes = max_match(log, spill_stores);
  report.spill_load_bytes = max_match(log, spill_loads);
  report.ptxas_log = log;
  return report;
}

}  // namespace flashcore
