#include "jit/nvrtc_compiler.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <optional>
#include <regex>
#include <thread>
#include <vector>

#include "scratch_dir.hpp"
#include "test_templates.hpp"

namespace flashcore {
namespace {

using test_support::kSmallAttentionTemplate;
using test_support::ScratchDir;
using test_support::write_attention_templates;

bool is_elf(const std::string& bytes) { return bytes.size() > 4 && bytes.compare(0, 4, "\x7f" "ELF") == 0; }

std::shared_ptr<const TemplateRegistry> registry_from(const ScratchDir& dir) {
  auto registry = TemplateRegistry::from_directory(dir.path());
  EXPECT_TRUE(registry.ok()) << registry.error().message;
  return registry.ok() ? registry.value() : nullptr;
}

class NvrtcCompilerSmall : public ::testing::Test {
 protected:
  void SetUp() override {
    write_attention_templates(dir_, kSmallAttentionTemplate);
    registry_ = registry_from(dir_);
    ASSERT_NE(registry_, nullptr);
  }
  ScratchDir dir_;
  std::shared_ptr<const TemplateRegistry> registry_;
};

TEST_F(NvrtcCompilerSmall, CompilesACubinAndReadsTheLoweredName) {
  NvrtcCompiler compiler(registry_);
  KernelSpec spec;
  spec.problem = ProblemClass{DType::bf16, 64, true};
  spec.config = TileConfig{128, 64, 4, 2};
  spec.arch = "sm_90a";

  auto kernel = compiler.compile(spec);
  ASSERT_TRUE(kernel.ok()) << kernel.error().message << "\n" << kernel.error().detail;
  EXPECT_EQ(kernel->name_expression, name_expression(spec.problem, spec.config));
  EXPECT_EQ(kernel->lowered_name.rfind("_Z", 0), 0u) << kernel->lowered_name;
  // The mangled name carries the template arguments, e.g. "Li128E" for BlockM.
  EXPECT_NE(kernel->lowered_name.find("attention_fwd"), std::string::npos);
  EXPECT_NE(kernel->lowered_name.find("Li128E"), std::string::npos) << kernel->lowered_name;
  EXPECT_TRUE(is_elf(kernel->cubin));
  EXPECT_GT(kernel->resources.registers, 0) << kernel->resources.ptxas_log;
  EXPECT_EQ(kernel->resources.spill_store_bytes, 0);
  // The report is ptxas' own, about this kernel on this arch.
  EXPECT_NE(kernel->resources.ptxas_log.find(kernel->lowered_name), std::string::npos);
  EXPECT_NE(kernel->resources.ptxas_log.find("sm_90a"), std::string::npos);
  EXPECT_GT(kernel->compile_ms, 0.0);
  EXPECT_EQ(kernel->toolchain.template_source_hash, registry_->source_hash());
  EXPECT_EQ(kernel->toolchain.options, compiler.options(spec));
}

TEST_F(NvrtcCompilerSmall, DifferentArgumentsGiveDifferentKernels) {
  NvrtcCompiler compiler(registry_);
  KernelSpec a;
  a.arch = "sm_80";
  KernelSpec b = a;
  b.problem.causal = true;
  auto ka = compiler.compile(a);
  auto kb = compiler.compile(b);
  ASSERT_TRUE(ka.ok()) << ka.error().detail;
  ASSERT_TRUE(kb.ok()) << kb.error().detail;
  EXPECT_NE(ka->lowered_name, kb->lowered_name);
  EXPECT_NE(ka->cubin, kb->cubin);
  EXPECT_NE(ka->resources.ptxas_log.find("sm_80"), std::string::npos);
}

TEST_F(NvrtcCompilerSmall, SyntaxErrorIsInternalWithTheNvrtcLog) {
  ScratchDir broken;
  std::string source = kSmallAttentionTemplate;
  source.replace(source.find("unsigned sum = 0;"), 17, "unsigned sum = 0");  // drop the ';'
  write_attention_templates(broken, source);
  NvrtcCompiler compiler(registry_from(broken));
  KernelSpec spec;

  auto kernel = compiler.compile(spec);
  ASSERT_FALSE(kernel.ok());
  EXPECT_EQ(kernel.error().code, ErrorCode::internal);
  EXPECT_NE(kernel.error().message.find(name_expression(spec.problem, spec.config)),
            std::string::npos)
      << kernel.error().message;
  EXPECT_NE(kernel.error().message.find(spec.arch), std::string::npos);
  // NVRTC's diagnostic names the file and the error.
  EXPECT_NE(kernel.error().detail.find("attention/attention_fwd.cuh"), std::string::npos)
      << kernel.error().detail;
  EXPECT_NE(kernel.error().detail.find("error"), std::string::npos);
}

TEST_F(NvrtcCompilerSmall, BadSpecsAreInvalidArgumentsBeforeCompiling) {
  NvrtcCompiler compiler(registry_);
  KernelSpec spec;
  spec.arch = "sm_75";
  auto bad_arch = compiler.compile(spec);
  ASSERT_FALSE(bad_arch.ok());
  EXPECT_EQ(bad_arch.error().code, ErrorCode::invalid_argument);
  EXPECT_NE(bad_arch.error().message.find("arch"), std::string::npos);

  spec = KernelSpec{};
  spec.template_id = "gemm";
  auto bad_template = compiler.compile(spec);
  ASSERT_FALSE(bad_template.ok());
  EXPECT_EQ(bad_template.error().code, ErrorCode::invalid_argument);

  spec = KernelSpec{};
  spec.config.stages = 7;
  auto bad_config = compiler.compile(spec);
  ASSERT_FALSE(bad_config.ok());
  EXPECT_EQ(bad_config.error().code, ErrorCode::invalid_argument);
  EXPECT_NE(bad_config.error().message.find("config.stages"), std::string::npos);
}

TEST(NvrtcCompiler, RegistryWithoutTheEntryHeaderIsAPrecondition) {
  auto registry = std::make_shared<const TemplateRegistry>(
      std::map<std::string, std::string>{{"common/attention_params.cuh", "#pragma once\n"}});
  auto kernel = NvrtcCompiler(registry).compile(KernelSpec{});
  ASSERT_FALSE(kernel.ok());
  EXPECT_EQ(kernel.error().code, ErrorCode::failed_precondition);
}

TEST(NvrtcCompiler, OptionsAreSortedAndNameTheArch) {
  NvrtcCompiler compiler(TemplateRegistry::embedded());
  KernelSpec spec;
  spec.arch = "sm_90a";
  const auto options = compiler.options(spec);
  EXPECT_TRUE(std::is_sorted(options.begin(), options.end()));
  EXPECT_NE(std::find(options.begin(), options.end(), "--gpu-architecture=sm_90a"), options.end());
  EXPECT_NE(std::find(options.begin(), options.end(), "--ptxas-options=--verbose"), options.end());
  EXPECT_EQ(std::adjacent_find(options.begin(), options.end()), options.end());  // no duplicates

  KernelSpec other = spec;
  other.arch = "sm_80";
  EXPECT_NE(compiler.options(other), options);
  // The compile-time arguments travel in the name expression, not the options.
  other = spec;
  other.problem.head_dim = 128;
  EXPECT_EQ(compiler.options(other), options);
}

TEST(NvrtcCompiler, FingerprintNamesToolchainAndSources) {
  auto registry = TemplateRegistry::embedded();
  NvrtcCompiler compiler(registry);
  KernelSpec spec;
  const auto fingerprint = compiler.fingerprint(spec);
  EXPECT_TRUE(std::regex_match(fingerprint.nvrtc_version, std::regex(R"(\d+\.\d+)")))
      << fingerprint.nvrtc_version;
  EXPECT_EQ(fingerprint.nvrtc_version, NvrtcCompiler::nvrtc_version());
  EXPECT_EQ(fingerprint.template_source_hash, registry->source_hash());
  EXPECT_EQ(fingerprint.options, compiler.options(spec));

  const auto other = std::make_shared<const TemplateRegistry>(
      std::map<std::string, std::string>{{"attention/attention_fwd.cuh", "// other"}});
  EXPECT_NE(NvrtcCompiler(other).fingerprint(spec).template_source_hash,
            fingerprint.template_source_hash);
}

TEST(NvrtcCompiler, ParsesPtxasVerboseReport) {
  // As NVRTC 13.0 prints it for an sm_80 target.
  const std::string log =
      "ptxas info    : 0 bytes gmem\n"
      "ptxas info    : Compiling entry function '_Z1kILi64ELb1EEv1P' for 'sm_80'\n"
      "ptxas info    : Function properties for _Z1kILi64ELb1EEv1P\n"
      "ptxas         .     24 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads\n"
      "ptxas info    : Used 168 registers, used 1 barriers, 8192 bytes smem, 376 bytes cmem[0]\n"
      "ptxas info    : Compile time = 27.101 ms\n";
  const ResourceReport report = parse_ptxas_report(log);
  EXPECT_EQ(report.registers, 168);
  EXPECT_EQ(report.static_smem_bytes, 8192);
  EXPECT_EQ(report.constant_bytes, 376);
  EXPECT_EQ(report.stack_frame_bytes, 24);
  EXPECT_EQ(report.spill_store_bytes, 8);
  EXPECT_EQ(report.spill_load_bytes, 12);
  EXPECT_EQ(report.ptxas_log, log);

  const ResourceReport empty = parse_ptxas_report("");
  EXPECT_EQ(empty.registers, 0);
  EXPECT_EQ(empty.spill_store_bytes, 0);
}

// The real template, embedded in this binary: every dtype x head_dim x causal
// variant of the default config must compile for sm_90a.
TEST(NvrtcCompiler, RealAttentionTemplateCompilesForSm90a) {
  auto registry = TemplateRegistry::embedded();
  ASSERT_TRUE(registry->entry_header(std::string(kAttentionTemplateId)).ok())
      << "kernel_templates/attention/attention_fwd.cuh is not embedded in this build";
  const NvrtcCompiler compiler(registry);

  std::vector<KernelSpec> specs;
  for (DType dtype : {DType::fp16, DType::bf16})
    for (int head_dim : {64, 128})
      for (bool causal : {false, true}) {
        KernelSpec spec;
        spec.problem = ProblemClass{dtype, head_dim, causal};
        spec.config = TileConfig{128, 64, 4, 2};
        spec.arch = "sm_90a";
        specs.push_back(spec);
      }

  // Two threads: NVRTC is thread-safe per program, and this halves wall time.
  std::vector<std::optional<Result<CompiledKernel>>> results(specs.size());
  std::vector<std::thread> threads;
  for (size_t t = 0; t < 2; ++t)
    threads.emplace_back([&, t] {
      for (size_t i = t; i < specs.size(); i += 2) results[i].emplace(compiler.compile(specs[i]));
    });
  for (auto& thread : threads) thread.join();

  for (size_t i = 0; i < specs.size(); ++i) {
    const std::string name = name_expression(specs[i].problem, specs[i].config);
    SCOPED_TRACE(name);
    const auto& result = *results[i];
    ASSERT_TRUE(result.ok()) << result.error().message << "\n" << result.error().detail;
    const CompiledKernel& kernel = result.value();
    EXPECT_EQ(kernel.lowered_name.rfind("_Z", 0), 0u) << kernel.lowered_name;
    EXPECT_TRUE(is_elf(kernel.cubin));
    EXPECT_GT(kernel.resources.registers, 0) << kernel.resources.ptxas_log;
    // Spills are a performance finding, not a failure: record them.
    const std::string variant = std::string(dtype_name(specs[i].problem.dtype)) + "_d" +
                                std::to_string(specs[i].problem.head_dim) +
                                (specs[i].problem.causal ? "_causal" : "");
    RecordProperty(variant + "_registers", kernel.resources.registers);
    RecordProperty(variant + "_spill_bytes",
                   kernel.resources.spill_store_bytes + kernel.resources.spill_load_bytes);
    std::printf("[ variant  ] %-70s %3d regs, %4d B spill stores, %4d B spill loads, %6zu B cubin, %.0f ms\n",
                name.c_str(), kernel.resources.registers, kernel.resources.spill_store_bytes,
                kernel.resources.spill_load_bytes, kernel.cubin.size(), kernel.compile_ms);
  }
}

}  // namespace
}  // namespace flashcore
