#include "cache/atomic_file.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>
#include <vector>

#include "scratch_dir.hpp"

namespace flashcore {
namespace {

namespace fs = std::filesystem;
using test_support::read_file;
using test_support::ScratchDir;

std::vector<std::string> names_in(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::recursive_directory_iterator(dir))
    names.push_back(fs::relative(entry.path(), dir).string());
  std::sort(names.begin(), names.end());
  return names;
}

TEST(AtomicFile, WritesBinaryContents) {
  ScratchDir dir;
  const fs::path path = dir.path() / "entry.bin";
  const std::string contents("head\0\xff\x01tail", 11);
  ASSERT_TRUE(write_file_atomically(path, contents).ok());
  EXPECT_EQ(read_file(path), contents);
  EXPECT_EQ(fs::file_size(path), 11u);
}

TEST(AtomicFile, OverwritesAnExistingFileCompletely) {
  ScratchDir dir;
  const fs::path path = dir.path() / "entry.bin";
  ASSERT_TRUE(write_file_atomically(path, std::string(4096, 'a')).ok());
  ASSERT_TRUE(write_file_atomically(path, "short").ok());
  EXPECT_EQ(read_file(path), "short");
  ASSERT_TRUE(write_file_atomically(path, "").ok());
  EXPECT_TRUE(fs::exists(path));
  EXPECT_EQ(fs::file_size(path), 0u);
}

TEST(AtomicFile, CreatesParentFolders) {
  ScratchDir dir;
  const fs::path path = dir.path() / "a" / "b" / "c" / "entry.bin";
  ASSERT_TRUE(write_file_atomically(path, "deep").ok());
  EXPECT_EQ(read_file(path), "deep");
}

TEST(AtomicFile, LeavesNoTempFilesBehind) {
  ScratchDir dir;
  std::vector<std::thread> writers;
  // Several writers on one target: each uses its own temp file.
  for (int t = 0; t < 4; ++t) {
    writers.emplace_back([&dir, t] {
      for (int i = 0; i < 10; ++i) {
        const std::string text(1000 + t, static_cast<char>('a' + t));
        EXPECT_TRUE(write_file_atomically(dir.path() / "x" / "shared.bin", text).ok());
        EXPECT_TRUE(
            write_file_atomically(dir.path() / "x" / ("own" + std::to_string(t)), text).ok());
      }
    });
  }
  for (auto& writer : writers) writer.join();
  EXPECT_EQ(names_in(dir.path()),
            (std::vector<std::string>{"x", "x/own0", "x/own1", "x/own2", "x/own3", "x/shared.bin"}));
  // Whichever writer won, the file is one writer's whole contents.
  const std::string shared = read_file(dir.path() / "x" / "shared.bin");
  ASSERT_GE(shared.size(), 1000u);
  EXPECT_EQ(shared, std::string(shared.size(), shared[0]));
  EXPECT_EQ(shared.size(), 1000u + (shared[0] - 'a'));
}

TEST(AtomicFile, FailsWhenTheTargetIsAFolderAndCleansUp) {
  ScratchDir dir;
  const fs::path target = dir.path() / "taken";
  fs::create_directories(target / "inside");
  Status written = write_file_atomically(target, "data");
  ASSERT_FALSE(written.ok());
  EXPECT_EQ(written.error().code, ErrorCode::internal);
  EXPECT_NE(written.error().message.find(target.string()), std::string::npos)
      << written.error().message;
  EXPECT_EQ(names_in(dir.path()), (std::vector<std::string>{"taken", "taken/inside"}));
}

TEST(AtomicFile, FailsWhenAParentIsAFile) {
  ScratchDir dir;
  std::ofstream(dir.path() / "plain") << "not a folder";
  Status written = write_file_atomically(dir.path() / "plain" / "entry.bin", "data");
  ASSERT_FALSE(written.ok());
  EXPECT_FALSE(written.error().message.empty());
}

TEST(AtomicFile, FailsInAnUnwritableFolder) {
  ScratchDir dir;
  const fs::path locked = dir.path() / "locked";
  fs::create_directories(locked);
  ASSERT_EQ(::chmod(locked.c_str(), 0500), 0);
  // Root (CAP_DAC_OVERRIDE) writes regardless of the mode bits; probe it.
  if (::access(locked.c_str(), W_OK) == 0) {
    ::chmod(locked.c_str(), 0700);
    GTEST_SKIP() << "running with permission to write into a 0500 folder (root?); "
                    "the unwritable-folder case cannot be produced here";
  }
  Status written = write_file_atomically(locked / "entry.bin", "data");
  ::chmod(locked.c_str(), 0700);
  ASSERT_FALSE(written.ok());
  EXPECT_NE(written.error().message.find("Permission denied"), std::string::npos)
      << written.error().message;
  EXPECT_TRUE(fs::is_empty(locked));
}

}  // namespace
}  // namespace flashcore
