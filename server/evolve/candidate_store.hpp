// The lineage of submitted candidates (SQLite): every candidate with its
// source, source hash, parents, owner, client generation and tags, and its
// latest verdict; promotions to served kernels. Writes are transactions (a
// generation goes in whole or not at all); every read is checked (the
// source against its hash, the stored messages against theirs), and a row
// that fails is an error for its own id and left out of lists with a
// warning. Like the tuning database, a file that is not this store's, is
// damaged or of a newer schema is refused, never recreated over.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/result.hpp"
#include "flashcore/v1/evolve.pb.h"

namespace flashcore::evolve {

class CandidateStore {
 public:
  static constexpr int kSchemaVersion = 1;

  static Result<std::unique_ptr<CandidateStore>> open(const std::filesystem::path& path);
  ~CandidateStore();
  CandidateStore(const CandidateStore&) = delete;
  CandidateStore& operator=(const CandidateStore&) = delete;

  // Stores a generation in one transaction and returns the new ids in order
  // (each candidate's id, source_sha256 and created time are set here).
  Result<std::vector<int64_t>> insert(std::vector<v1::StoredCandidate>& candidates);
  Status set_verdict(int64_t id, const v1::CandidateVerdict& verdict);
  Status add_promotion(int64_t id, const v1::Promotion& promotion);

  // nullopt: no such candidate. An error: the row failed its check.
  Result<std::optional<v1::StoredCandidate>> get(int64_t id) const;

  struct Query {
    std::string owner;  // required
    std::optional<int64_t> generation;
    std::string tag;    // "": any
    int page_size = 100;
    int64_t after_id = 0;  // from the page token
    bool include_source = false;
  };
  struct Page {
    std::vector<v1::StoredCandidate> candidates;
    int64_t next_after_id = 0;  // 0: last page
    int skipped = 0;            // rows that failed their check
  };
  Result<Page> list(const Query& query) const;

  const std::filesystem::path& path() const { return path_; }

 private:
  CandidateStore(sqlite3* db, std::filesystem::path path) : db_(db), path_(std::move(path)) {}
  Result<v1::StoredCandidate> read_row(sqlite3_stmt* row, bool include_source) const;

  sqlite3* db_;
  std::filesystem::path path_;
  mutable std::mutex mutex_;
};

}  // namespace flashcore::evolve
