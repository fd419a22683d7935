#include "jit/template_registry.hpp"

#include <gtest/gtest.h>

#include "family/template_catalog.hpp"
#include "scratch_dir.hpp"

namespace flashcore {
namespace {

using test_support::ScratchDir;
using Sources = std::map<std::string, std::string>;

TEST(TemplateRegistry, EmbeddedHoldsTheAbiHeader) {
  const auto registry = TemplateRegistry::embedded();
  const auto& sources = registry->sources();
  const auto params = sources.find("common/attention_params.cuh");
  ASSERT_NE(params, sources.end());
  EXPECT_NE(params->second.find("struct AttentionParams"), std::string::npos);
  EXPECT_EQ(registry->source_hash().size(), 64u);
  EXPECT_EQ(TemplateRegistry::embedded(), registry);  // built once
}

TEST(TemplateRegistry, EmbeddedMatchesTheSourceTree) {
  // The generated sources must be byte-identical to kernel_templates/.
  auto from_tree = TemplateRegistry::from_directory(FLASHCORE_TEMPLATE_DIR);
  ASSERT_TRUE(from_tree.ok()) << from_tree.error().message;
  EXPECT_EQ(from_tree.value()->sources(), TemplateRegistry::embedded()->sources());
  EXPECT_EQ(from_tree.value()->source_hash(), TemplateRegistry::embedded()->source_hash());
}

TEST(TemplateRegistry, FromDirectoryReadsTemplateFilesRecursively) {
  ScratchDir dir;
  dir.write("common/a.cuh", "// a\n");
  dir.write("attention/deep/b.cu", "// b\n");
  dir.write("c.h", "// c\n");
  dir.write("README.md", "not a template");
  dir.write("attention/notes.txt", "not a template");

  auto registry = TemplateRegistry::from_directory(dir.path());
  ASSERT_TRUE(registry.ok()) << registry.error().message;
  const auto& sources = registry.value()->sources();
  ASSERT_EQ(sources.size(), 3u);
  EXPECT_EQ(sources.at("common/a.cuh"), "// a\n");
  EXPECT_EQ(sources.at("attention/deep/b.cu"), "// b\n");
  EXPECT_EQ(sources.at("c.h"), "// c\n");
}

TEST(TemplateRegistry, HashChangesWhenOneByteChanges) {
  ScratchDir dir;
  dir.write("common/a.cuh", "int a = 1;\n");
  dir.write("attention/b.cuh", "int b = 2;\n");
  auto before = TemplateRegistry::from_directory(dir.path());
  auto same = TemplateRegistry::from_directory(dir.path());
  dir.write("attention/b.cuh", "int b = 3;\n");
  auto after = TemplateRegistry::from_directory(dir.path());
  ASSERT_TRUE(before.ok() && same.ok() && after.ok());
  EXPECT_EQ(before.value()->source_hash(), same.value()->source_hash());
  EXPECT_NE(before.value()->source_hash(), after.value()->source_hash());
}

TEST(TemplateRegistry, HashCoversPathsNotOnlyContents) {
  const TemplateRegistry a(Sources{{"x.cuh", "same"}});
  const TemplateRegistry b(Sources{{"y.cuh", "same"}});
  const TemplateRegistry split1(Sources{{"a.cuh", "bc"}, {"d.cuh", ""}});
  const TemplateRegistry split2(Sources{{"a.cuh", "b"}, {"d.cuh", "c"}});
  EXPECT_NE(a.source_hash(), b.source_hash());
  EXPECT_NE(split1.source_hash(), split2.source_hash());
}

TEST(TemplateRegistry, MissingOrEmptyDirectoryIsAnError) {
  ScratchDir dir;
  auto missing = TemplateRegistry::from_directory(dir.path() / "nope");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, ErrorCode::not_found);
  EXPECT_NE(missing.error().message.find("nope"), std::string::npos);

  dir.write("only.txt", "no templates here");
  auto empty = TemplateRegistry::from_directory(dir.path());
  ASSERT_FALSE(empty.ok());
  EXPECT_EQ(empty.error().code, ErrorCode::not_found);

  auto file = TemplateRegistry::from_directory(dir.path() / "only.txt");
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.error().code, ErrorCode::invalid_argument);
}

TEST(TemplateRegistry, EntryHeaderForKnownAndUnknownIds) {
  const TemplateRegistry with(Sources{{"attention/attention_fwd.cuh", "// kernel"}});
  auto header = with.entry_header("attention_fwd");
  ASSERT_TRUE(header.ok()) << header.error().message;
  EXPECT_EQ(header.value(), "attention/attention_fwd.cuh");

  auto unknown = with.entry_header("gemm");
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.error().code, ErrorCode::not_found);

  // Known id, but this registry (a directory override, say) lacks its header.
  const TemplateRegistry without(Sources{{"common/attention_params.cuh", "// abi"}});
  auto absent = without.entry_header("attention_fwd");
  ASSERT_FALSE(absent.ok());
  EXPECT_EQ(absent.error().code, ErrorCode::not_found);
}

TEST(TemplateRegistry, EveryCatalogEntryIsInTheEmbeddedRegistry) {
  for (const auto& info : template_catalog()) {
    auto header = TemplateRegistry::embedded()->entry_header(std::string(info.id));
    EXPECT_TRUE(header.ok()) << info.id << ": " << header.error().message;
  }
}

}  // namespace
}  // namespace flashcore
