// Kernel template sources: embedded into the binary at build time, or read
// from a directory that overrides them (for template development without a
// rebuild). Every source is handed to NVRTC as a named header, so templates
// include each other by their path under kernel_templates/.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include "common/result.hpp"

namespace flashcore {

class TemplateRegistry {
 public:
  // The sources compiled into this binary (generated from kernel_templates/).
  static std::shared_ptr<const TemplateRegistry> embedded();
  // Every *.cuh / *.cu / *.h under `root`, keyed by path relative to it.
  static Result<std::shared_ptr<const TemplateRegistry>> from_directory(
      const std::filesystem::path& root);

  explicit TemplateRegistry(std::map<std::string, std::string> sources);

  // relative path ("attention/attention_fwd.cuh") -> contents
  const std::map<std::string, std::string>& sources() const { return sources_; }
  // Hex SHA-256 over every (path, contents) pair in path order, delimited.
  const std::string& source_hash() const { return source_hash_; }
  // The header that defines a template id's kernel, or not_found.
  Result<std::string> entry_header(const std::string& template_id) const;

 private:
  std::map<std::string, std::string> sources_;
  std::string source_hash_;
};

}  // namespace flashcore
