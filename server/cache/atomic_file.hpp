// Write-then-rename: readers see the old file or the whole new one, never a
// torn write, even across a crash (temp file fsync'd before the rename, the
// folder fsync'd after).
#pragma once

#include <filesystem>
#include <string_view>

#include "common/result.hpp"

namespace flashcore {

Status write_file_atomically(const std::filesystem::path& path, std::string_view contents);

}  // namespace flashcore
