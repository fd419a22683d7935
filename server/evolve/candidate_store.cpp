#include "evolve/candidate_store.hpp"

#include <spdlog/spdlog.h>

#include <chrono>

#include "common/digest.hpp"

namespace flashcore::evolve {
namespace {

// "FCEV": the store's SQLite application_id, so another application's
// database (or the tuning database) is never taken for it.
constexpr int kApplicationId = 0x46434556;

class Statement {
 public:
  Statement(sqlite3* db, const char* sql) { ok_ = sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr) == SQLITE_OK; }
  ~Statement() { sqlite3_finalize(stmt_); }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;
  bool ok() const { return ok_; }
  sqlite3_stmt* get() const { return stmt_; }
  void text(int i, const std::string& s) { sqlite3_bind_text(stmt_, i, s.data(), static_cast<int>(s.size()), SQLITE_TRANSIENT); }
  void blob(int i, const std::string& s) { sqlite3_bind_blob(stmt_, i, s.data(), static_cast<int>(s.size()), SQLITE_TRANSIENT); }
  void integer(int i, int64_t v) { sqlite3_bind_int64(stmt_, i, v); }

 private:
  sqlite3_stmt* stmt_ = nullptr;
  bool ok_ = false;
};

std::string column(sqlite3_stmt* s, int i) {
  const void* data = sqlite3_column_blob(s, i);
  const int size = sqlite3_column_bytes(s, i);
  return data == nullptr ? std::string() : std::string(static_cast<const char*>(data), size);
}

Error db_error(sqlite3* db, const std::string& what) {
  return make_error(ErrorCode::internal, "candidate store: " + what + ": " + sqlite3_errmsg(db));
}

Status exec(sqlite3* db, const char* sql) {
  char* message = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &message) != SQLITE_OK) {
    std::string text = message ? message : "unknown error";
    sqlite3_free(message);
    return make_error(ErrorCode::internal, std::string("candidate store: ") + text);
  }
  return ok_status();
}

Result<int64_t> scalar(sqlite3* db, const char* sql) {
  Statement s(db, sql);
  if (!s.ok() || sqlite3_step(s.get()) != SQLITE_ROW) return db_error(db, sql);
  return sqlite3_column_int64(s.get(), 0);
}

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// The digest a stored message is checked against.
std::string digest(const std::string& bytes) { return sha256_hex(bytes); }

constexpr const char* kSchema = R"sql(
CREATE TABLE candidates (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  owner TEXT NOT NULL,
  generation INTEGER NOT NULL,
  name TEXT NOT NULL,
  source TEXT NOT NULL,
  source_sha256 TEXT NOT NULL,
  spec BLOB NOT NULL,
  spec_sha256 TEXT NOT NULL,
  verdict BLOB,
  verdict_sha256 TEXT,
  created_unix_ms INTEGER NOT NULL
);
CREATE INDEX candidates_by_owner ON candidates(owner, generation, id);
CREATE TABLE candidate_tags (
  candidate_id INTEGER NOT NULL REFERENCES candidates(id),
  tag TEXT NOT NULL,
  PRIMARY KEY (candidate_id, tag)
);
CREATE INDEX candidate_tags_by_tag ON candidate_tags(tag, candidate_id);
CREATE TABLE promotions (
  candidate_id INTEGER NOT NULL REFERENCES candidates(id),
  record BLOB NOT NULL,
  record_sha256 TEXT NOT NULL
);
)sql";

}  // namespace

Result<std::unique_ptr<CandidateStore>> CandidateStore::open(const std::filesystem::path& path) {
  const std::string name = path.string();
  auto refuse = [&](const std::string& why) {
    return make_error(ErrorCode::failed_precondition,
                      "candidate store " + name + ": " + why +
                          "; move it aside (the daemon never recreates it over)");
  };
  std::error_code ec;
  const bool existed = std::filesystem::exists(path, ec);
  if (existed && std::filesystem::file_size(path, ec) == 0 && !ec)
    return refuse("the file is empty (0 bytes)");
  sqlite3* raw = nullptr;
  if (sqlite3_open_v2(name.c_str(), &raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                      nullptr) != SQLITE_OK) {
    std::string why = raw ? sqlite3_errmsg(raw) : "cannot open";
    sqlite3_close(raw);
    return refuse(why);
  }
  std::unique_ptr<CandidateStore> store(new CandidateStore(raw, path));
  sqlite3* db = store->db_;
  sqlite3_busy_timeout(db, 5000);
  auto application = scalar(db, "PRAGMA application_id");
  if (!application) return refuse("not an SQLite database");
  auto version = scalar(db, "PRAGMA user_version");
  if (!version) return refuse("not an SQLite database");
  auto tables = scalar(db, "SELECT count(*) FROM sqlite_master");
  if (!tables) return refuse("not an SQLite database");
  if (*application == 0 && *version == 0 && *tables == 0) {
    // A new file: the schema in one transaction.
    if (auto s = exec(db, "BEGIN IMMEDIATE"); !s) return s.error();
    Status made = exec(db, kSchema);
    if (made) made = exec(db, ("PRAGMA application_id = " + std::to_string(kApplicationId)).c_str());
    if (made) made = exec(db, ("PRAGMA user_version = " + std::to_string(kSchemaVersion)).c_str());
    if (!made) {
      (void)exec(db, "ROLLBACK");
      return made.error();
    }
    if (auto s = exec(db, "COMMIT"); !s) return s.error();
  } else if (*application != kApplicationId) {
    return refuse("another application's database (application_id " +
                  std::to_string(*application) + ")");
  } else if (*version > kSchemaVersion) {
    return refuse("schema " + std::to_string(*version) + " is newer than this daemon's (" +
                  std::to_string(kSchemaVersion) + ")");
  }
  {
    Statement check(db, "PRAGMA quick_check");
    if (!check.ok() || sqlite3_step(check.get()) != SQLITE_ROW ||
        column(check.get(), 0) != "ok")
      return refuse("damaged (quick_check failed)");
  }
  if (auto s = exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON"); !s)
    return refuse(s.error().message);
  return store;
}

CandidateStore::~CandidateStore() { sqlite3_close(db_); }

Result<std::vector<int64_t>> CandidateStore::insert(std::vector<v1::StoredCandidate>& candidates) {
  std::lock_guard lock(mutex_);
  if (auto s = exec(db_, "BEGIN IMMEDIATE"); !s) return s.error();
  std::vector<int64_t> ids;
  auto rollback = [&](Error error) {
    (void)exec(db_, "ROLLBACK");
    return error;
  };
  const int64_t created = now_ms();
  for (auto& candidate : candidates) {
    candidate.set_source_sha256(sha256_hex(candidate.source()));
    candidate.set_created_unix_ms(created);
    v1::StoredCandidate spec = candidate;
    spec.clear_source();
    spec.clear_verdict();
    spec.clear_promotions();
    spec.clear_id();
    const std::string spec_bytes = spec.SerializeAsString();
    Statement insert(db_,
                     "INSERT INTO candidates (owner, generation, name, source, source_sha256, spec, "
                     "spec_sha256, verdict, verdict_sha256, created_unix_ms) VALUES "
                     "(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)");
    if (!insert.ok()) return rollback(db_error(db_, "insert"));
    insert.text(1, candidate.owner());
    insert.integer(2, candidate.generation());
    insert.text(3, candidate.name());
    insert.text(4, candidate.source());
    insert.text(5, candidate.source_sha256());
    insert.blob(6, spec_bytes);
    insert.text(7, digest(spec_bytes));
    const std::string verdict = candidate.verdict().SerializeAsString();
    insert.blob(8, verdict);
    insert.text(9, digest(verdict));
    insert.integer(10, created);
    if (sqlite3_step(insert.get()) != SQLITE_DONE) return rollback(db_error(db_, "insert"));
    const int64_t id = sqlite3_last_insert_rowid(db_);
    candidate.set_id(id);
    ids.push_back(id);
    for (const auto& tag : candidate.tags()) {
      Statement t(db_, "INSERT OR IGNORE INTO candidate_tags (candidate_id, tag) VALUES (?1, ?2)");
      t.integer(1, id);
      t.text(2, tag);
      if (!t.ok() || sqlite3_step(t.get()) != SQLITE_DONE) return rollback(db_error(db_, "insert tag"));
    }
  }
  if (auto s = exec(db_, "COMMIT"); !s) return rollback(s.error());
  return ids;
}

Status CandidateStore::set_verdict(int64_t id, const v1::CandidateVerdict& verdict) {
  std::lock_guard lock(mutex_);
  const std::string bytes = verdict.SerializeAsString();
  Statement update(db_, "UPDATE candidates SET verdict = ?1, verdict_sha256 = ?2 WHERE id = ?3");
  if (!update.ok()) return db_error(db_, "update verdict");
  update.blob(1, bytes);
  update.text(2, digest(bytes));
  update.integer(3, id);
  if (sqlite3_step(update.get()) != SQLITE_DONE) return db_error(db_, "update verdict");
  if (sqlite3_changes(db_) != 1)
    return make_error(ErrorCode::not_found, "candidate " + std::to_string(id) + " is not stored");
  return ok_status();
}

Status CandidateStore::add_promotion(int64_t id, const v1::Promotion& promotion) {
  std::lock_guard lock(mutex_);
  const std::string bytes = promotion.SerializeAsString();
  Statement insert(db_, "INSERT INTO promotions (candidate_id, record, record_sha256) VALUES (?1, ?2, ?3)");
  if (!insert.ok()) return db_error(db_, "insert promotion");
  insert.integer(1, id);
  insert.blob(2, bytes);
  insert.text(3, digest(bytes));
  if (sqlite3_step(insert.get()) != SQLITE_DONE) return db_error(db_, "insert promotion");
  return ok_status();
}

// Columns: id, owner, generation, name, source, source_sha256, spec,
// spec_sha256, verdict, verdict_sha256, created_unix_ms.
Result<v1::StoredCandidate> CandidateStore::read_row(sqlite3_stmt* row, bool include_source) const {
  const int64_t id = sqlite3_column_int64(row, 0);
  auto bad = [&](const std::string& why) {
    return make_error(ErrorCode::internal,
                      "candidate " + std::to_string(id) + " failed its check: " + why);
  };
  v1::StoredCandidate candidate;
  const std::string spec = column(row, 6);
  if (digest(spec) != column(row, 7) || !candidate.ParseFromString(spec))
    return bad("its stored description does not match its digest");
  const std::string source = column(row, 4);
  if (sha256_hex(source) != column(row, 5)) return bad("its source does not match its SHA-256");
  const std::string verdict = column(row, 8);
  if (digest(verdict) != column(row, 9) || !candidate.mutable_verdict()->ParseFromString(verdict))
    return bad("its stored verdict does not match its digest");
  candidate.set_id(id);
  candidate.set_owner(column(row, 1));
  candidate.set_generation(sqlite3_column_int64(row, 2));
  candidate.set_name(column(row, 3));
  candidate.set_source_sha256(column(row, 5));
  if (candidate.owner().empty()) return bad("it has no owner");
  if (include_source) candidate.set_source(source);
  candidate.set_created_unix_ms(sqlite3_column_int64(row, 10));
  Statement promotions(db_, "SELECT record, record_sha256 FROM promotions WHERE candidate_id = ?1 ORDER BY rowid");
  promotions.integer(1, id);
  while (promotions.ok() && sqlite3_step(promotions.get()) == SQLITE_ROW) {
    const std::string record = column(promotions.get(), 0);
    if (digest(record) != column(promotions.get(), 1) ||
        !candidate.add_promotions()->ParseFromString(record))
      return bad("a promotion record does not match its digest");
  }
  return candidate;
}

Result<std::optional<v1::StoredCandidate>> CandidateStore::get(int64_t id) const {
  std::lock_guard lock(mutex_);
  Statement select(db_,
                   "SELECT id, owner, generation, name, source, source_sha256, spec, spec_sha256, "
                   "verdict, verdict_sha256, created_unix_ms FROM candidates WHERE id = ?1");
  if (!select.ok()) return db_error(db_, "select");
  select.integer(1, id);
  const int step = sqlite3_step(select.get());
  if (step == SQLITE_DONE) return std::optional<v1::StoredCandidate>();
  if (step != SQLITE_ROW) return db_error(db_, "select");
  auto row = read_row(select.get(), /*include_source=*/true);
  if (!row) return row.error();
  return std::optional<v1::StoredCandidate>(std::move(row).value());
}

Result<CandidateStore::Page> CandidateStore::list(const Query& query) const {
  std::lock_guard lock(mutex_);
  std::string sql =
      "SELECT c.id, c.owner, c.generation, c.name, c.source, c.source_sha256, c.spec, "
      "c.spec_sha256, c.verdict, c.verdict_sha256, c.created_unix_ms FROM candidates c WHERE "
      "c.owner = ?1 AND c.id > ?2";
  if (query.generation) sql += " AND c.generation = ?3";
  if (!query.tag.empty())
    sql += " AND EXISTS (SELECT 1 FROM candidate_tags t WHERE t.candidate_id = c.id AND t.tag = ?4)";
  sql += " ORDER BY c.id LIMIT ?5";
  Statement select(db_, sql.c_str());
  if (!select.ok()) return db_error(db_, "list");
  select.text(1, query.owner);
  select.integer(2, query.after_id);
  if (query.generation) select.integer(3, *query.generation);
  if (!query.tag.empty()) select.text(4, query.tag);
  select.integer(5, query.page_size + 1);
  Page page;
  int rows = 0;
  int64_t last = 0;
  while (true) {
    const int step = sqlite3_step(select.get());
    if (step == SQLITE_DONE) break;
    if (step != SQLITE_ROW) return db_error(db_, "list");
    if (rows == query.page_size) {
      page.next_after_id = last;
      break;
    }
    ++rows;
    last = sqlite3_column_int64(select.get(), 0);
    auto row = read_row(select.get(), query.include_source);
    if (!row) {
      spdlog::warn("{} (left out of ListCandidates)", row.error().message);
      ++page.skipped;
      continue;
    }
    page.candidates.push_back(std::move(row).value());
  }
  return page;
}

}  // namespace flashcore::evolve
