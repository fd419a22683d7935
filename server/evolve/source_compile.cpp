#include "evolve/source_compile.hpp"

#include <nvrtc.h>

#include <chrono>
#include <vector>

namespace flashcore::evolve {
namespace {

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

std::string program_log(nvrtcProgram program) {
  size_t size = 0;
  if (nvrtcGetProgramLogSize(program, &size) != NVRTC_SUCCESS || size == 0) return {};
  std::string log(size, '\0');
  if (nvrtcGetProgramLog(program, log.data()) != NVRTC_SUCCESS) return {};
  while (!log.empty() && log.back() == '\0') log.pop_back();
  return log;
}

}  // namespace

v1::SourceCompileResponse compile_source(const v1::SourceCompileRequest& request) {
  const auto start = std::chrono::steady_clock::now();
  v1::SourceCompileResponse response;
  auto fail = [&](std::string error) {
    response.set_ok(false);
    response.set_error(std::move(error));
    response.set_compile_ms(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
            .count());
    return response;
  };
  if (request.header_names_size() != request.header_sources_size())
    return fail("header_names and header_sources differ in length");
  std::vector<const char*> names, sources;
  for (int i = 0; i < request.header_names_size(); ++i) {
    names.push_back(request.header_names(i).c_str());
    sources.push_back(request.header_sources(i).c_str());
  }
  Program program;
  if (auto r = nvrtcCreateProgram(program.out(), request.source().c_str(),
                                  request.program_name().c_str(), static_cast<int>(names.size()),
                                  sources.data(), names.data());
      r != NVRTC_SUCCESS)
    return fail(std::string("nvrtcCreateProgram: ") + nvrtcGetErrorString(r));
  for (const auto& expression : request.name_expressions())
    if (auto r = nvrtcAddNameExpression(program.get(), expression.c_str()); r != NVRTC_SUCCESS)
      return fail("nvrtcAddNameExpression(" + expression + "): " + nvrtcGetErrorString(r));
  std::vector<const char*> options;
  for (const auto& option : request.options()) options.push_back(option.c_str());
  const nvrtcResult compiled =
      nvrtcCompileProgram(program.get(), static_cast<int>(options.size()), options.data());
  response.set_log(program_log(program.get()));
  if (compiled != NVRTC_SUCCESS)
    return fail(std::string("NVRTC failed to compile the candidate: ") +
                nvrtcGetErrorString(compiled));
  for (const auto& expression : request.name_expressions()) {
    const char* lowered = nullptr;
    if (auto r = nvrtcGetLoweredName(program.get(), expression.c_str(), &lowered);
        r != NVRTC_SUCCESS || lowered == nullptr)
      return fail("the kernel " + expression + " is not defined by the source (" +
                  nvrtcGetErrorString(r) + ")");
    response.add_lowered_names(lowered);
  }
  size_t size = 0;
  if (auto r = nvrtcGetCUBINSize(program.get(), &size); r != NVRTC_SUCCESS || size == 0)
    return fail(std::string("NVRTC produced no cubin (use a real sm_XX arch): ") +
                nvrtcGetErrorString(r));
  std::string cubin(size, '\0');
  if (auto r = nvrtcGetCUBIN(program.get(), cubin.data()); r != NVRTC_SUCCESS)
    return fail(std::string("nvrtcGetCUBIN: ") + nvrtcGetErrorString(r));
  response.set_cubin(std::move(cubin));
  response.set_ok(true);
  response.set_compile_ms(
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  return response;
}

}  // namespace flashcore::evolve
