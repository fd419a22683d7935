#include "tuning/tuning_db.hpp"

#include <spdlog/spdlog.h>
#include <sqlite3.h>

#include <algorithm>
#include <charconv>
#include <filesystem>
#include <chrono>
#include <cmath>
#include <tuple>
#include <utility>

namespace flashcore {
namespace {

// ceil(heads / kv_heads) rounded up to a power of two in SQL (bucket_of's
// gqa_ratio), for rows that recorded a shape; 1 where none was recorded.
std::string gqa_ratio_sql() {
  const std::string ratio = "((heads + kv_heads - 1) / kv_heads)";
  std::string sql = "CASE WHEN kv_heads <= 0 OR heads <= kv_heads THEN 1";
  for (int bit = 1; bit <= 31; ++bit)
    sql += " WHEN " + ratio + " <= " + std::to_string(int64_t{1} << bit) + " THEN " +
           std::to_string(int64_t{1} << bit);
  return sql + " ELSE 1 END";
}

// PRAGMA application_id of a FlashCore tuning database ("FCTD"), written by
// migration 4: a SQLite file of another application is refused, not migrated.
constexpr int32_t kApplicationId = 0x46435444;

// Ordered schema migrations: step i takes user_version i to i + 1. Append new
// steps; never edit a released one, since databases in the field already ran it.
// Step 1: jobs, trials, best.
constexpr const char* kMigration1Tables = R"sql(
CREATE TABLE jobs (
  id INTEGER PRIMARY KEY,
  template_id TEXT NOT NULL,
  dtype TEXT NOT NULL,
  head_dim INTEGER NOT NULL,
  causal INTEGER NOT NULL,
  bucket TEXT NOT NULL,
  seq_q_bucket INTEGER NOT NULL,
  seq_k_bucket INTEGER NOT NULL,
  batch_heads_bucket INTEGER NOT NULL,
  device_name TEXT NOT NULL,
  arch TEXT NOT NULL,
  searcher TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled')),
  started_unix_ms INTEGER NOT NULL,
  finished_unix_ms INTEGER,
  evaluations INTEGER NOT NULL DEFAULT 0,
  best_trial_id INTEGER REFERENCES trials(id),
  nvrtc_version TEXT NOT NULL,
  template_source_hash TEXT NOT NULL,
  driver_version TEXT NOT NULL
);
CREATE TABLE trials (
  id INTEGER PRIMARY KEY,
  job_id INTEGER REFERENCES jobs(id),
  template_id TEXT NOT NULL,
  dtype TEXT NOT NULL,
  head_dim INTEGER NOT NULL,
  causal INTEGER NOT NULL,
  bucket TEXT NOT NULL,
  seq_q_bucket INTEGER NOT NULL,
  seq_k_bucket INTEGER NOT NULL,
  batch_heads_bucket INTEGER NOT NULL,
  device_name TEXT NOT NULL,
  arch TEXT NOT NULL,
  batch INTEGER NOT NULL,
  heads INTEGER NOT NULL,
  kv_heads INTEGER NOT NULL,
  seq_q INTEGER NOT NULL,
  seq_k INTEGER NOT NULL,
  block_m INTEGER NOT NULL,
  block_n INTEGER NOT NULL,
  warps INTEGER NOT NULL,
  stages INTEGER NOT NULL,
  cache_key TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('ok', 'failed', 'wrong', 'skipped')),
  failure_reason TEXT NOT NULL,
  median_us REAL NOT NULL,
  p10_us REAL NOT NULL,
  p90_us REAL NOT NULL,
  samples INTEGER NOT NULL,
  tflops REAL NOT NULL,
  rel_error REAL NOT NULL,
  max_abs_error REAL NOT NULL,
  registers INTEGER NOT NULL,
  spill_store_bytes INTEGER NOT NULL,
  spill_load_bytes INTEGER NOT NULL,
  smem_bytes INTEGER NOT NULL,
  gpu_index INTEGER NOT NULL,
  nvrtc_version TEXT NOT NULL,
  template_source_hash TEXT NOT NULL,
  driver_version TEXT NOT NULL,
  created_unix_ms INTEGER NOT NULL
);
CREATE INDEX trials_by_job ON trials(job_id);
CREATE INDEX trials_by_scope
  ON trials(template_id, dtype, head_dim, causal, bucket, device_name, arch);
CREATE TABLE best (
  id INTEGER PRIMARY KEY,
  template_id TEXT NOT NULL,
  dtype TEXT NOT NULL,
  head_dim INTEGER NOT NULL,
  causal INTEGER NOT NULL,
  bucket TEXT NOT NULL,
  seq_q_bucket INTEGER NOT NULL,
  seq_k_bucket INTEGER NOT NULL,
  batch_heads_bucket INTEGER NOT NULL,
  device_name TEXT NOT NULL,
  arch TEXT NOT NULL,
  block_m INTEGER NOT NULL,
  block_n INTEGER NOT NULL,
  warps INTEGER NOT NULL,
  stages INTEGER NOT NULL,
  cache_key TEXT NOT NULL,
  median_us REAL NOT NULL,
  tflops REAL NOT NULL,
  trial_id INTEGER REFERENCES trials(id),
  evaluations INTEGER NOT NULL,
  wall_seconds REAL NOT NULL,
  searcher TEXT NOT NULL,
  nvrtc_version TEXT NOT NULL,
  template_source_hash TEXT NOT NULL,
  driver_version TEXT NOT NULL,
  updated_unix_ms INTEGER NOT NULL,
  UNIQUE (template_id, dtype, head_dim, causal, bucket, device_name, arch)
);
CREATE INDEX best_by_class ON best(template_id, dtype, head_dim, causal, device_name, arch);
)sql";

// Step 2: configs gain q_placement and smem_layout ('auto' on older rows, the
// rule of their time); a best row names the exact shape it was tuned on (0 on
// older rows: not recorded).
constexpr const char* kMigration2ConfigAndShape = R"sql(
ALTER TABLE trials ADD COLUMN q_placement TEXT NOT NULL DEFAULT 'auto';
ALTER TABLE trials ADD COLUMN smem_layout TEXT NOT NULL DEFAULT 'auto';
ALTER TABLE best ADD COLUMN q_placement TEXT NOT NULL DEFAULT 'auto';
ALTER TABLE best ADD COLUMN smem_layout TEXT NOT NULL DEFAULT 'auto';
ALTER TABLE best ADD COLUMN batch INTEGER NOT NULL DEFAULT 0;
ALTER TABLE best ADD COLUMN heads INTEGER NOT NULL DEFAULT 0;
ALTER TABLE best ADD COLUMN kv_heads INTEGER NOT NULL DEFAULT 0;
ALTER TABLE best ADD COLUMN seq_q INTEGER NOT NULL DEFAULT 0;
ALTER TABLE best ADD COLUMN seq_k INTEGER NOT NULL DEFAULT 0;
)sql";

// Step 3: the Hopper family's switches (0 on older rows: sm80 configs).
constexpr const char* kMigration3HopperSwitches = R"sql(
ALTER TABLE trials ADD COLUMN pingpong INTEGER NOT NULL DEFAULT 0;
ALTER TABLE trials ADD COLUMN separate_o INTEGER NOT NULL DEFAULT 0;
ALTER TABLE trials ADD COLUMN persistent INTEGER NOT NULL DEFAULT 0;
ALTER TABLE best ADD COLUMN pingpong INTEGER NOT NULL DEFAULT 0;
ALTER TABLE best ADD COLUMN separate_o INTEGER NOT NULL DEFAULT 0;
ALTER TABLE best ADD COLUMN persistent INTEGER NOT NULL DEFAULT 0;
)sql";

// Step 4: the layout and the GQA ratio join the key (in the bucket text, so
// the best table's UNIQUE key covers them). Every earlier row was measured in
// (B,S,H,D); its ratio comes from the shape it recorded (1 where none was:
// MHA, or a best from before schema 2), a job's from its trials. The columns,
// then the ratios (gqa_ratio_sql), then the jobs' ratios and the buckets.
constexpr const char* kMigration4Columns = R"sql(
ALTER TABLE jobs ADD COLUMN gqa_ratio INTEGER NOT NULL DEFAULT 1;
ALTER TABLE jobs ADD COLUMN layout TEXT NOT NULL DEFAULT 'bshd';
ALTER TABLE trials ADD COLUMN gqa_ratio INTEGER NOT NULL DEFAULT 1;
ALTER TABLE trials ADD COLUMN layout TEXT NOT NULL DEFAULT 'bshd';
ALTER TABLE best ADD COLUMN gqa_ratio INTEGER NOT NULL DEFAULT 1;
ALTER TABLE best ADD COLUMN layout TEXT NOT NULL DEFAULT 'bshd';
)sql";
constexpr const char* kMigration4Buckets = R"sql(
UPDATE jobs SET gqa_ratio = COALESCE(
  (SELECT gqa_ratio FROM trials WHERE trials.job_id = jobs.id ORDER BY id LIMIT 1), 1);
UPDATE trials SET bucket = bucket || 'gqa=' || gqa_ratio || ';layout=bshd;';
UPDATE best SET bucket = bucket || 'gqa=' || gqa_ratio || ';layout=bshd;';
UPDATE jobs SET bucket = bucket || 'gqa=' || gqa_ratio || ';layout=bshd;';
)sql";

std::string migration4_layout_and_gqa() {
  return std::string(kMigration4Columns) + "UPDATE trials SET gqa_ratio = " + gqa_ratio_sql() +
         ";\n" + "UPDATE best SET gqa_ratio = " + gqa_ratio_sql() + ";\n" + kMigration4Buckets +
         "PRAGMA application_id = " + std::to_string(kApplicationId) + ";\n";
}

// Step 5: a best carries its spread and whether the full validation matrix
// passed before it was stored (older rows: spread unknown, not validated).
constexpr const char* kMigration5Validation = R"sql(
ALTER TABLE best ADD COLUMN p10_us REAL NOT NULL DEFAULT 0;
ALTER TABLE best ADD COLUMN p90_us REAL NOT NULL DEFAULT 0;
ALTER TABLE best ADD COLUMN validated INTEGER NOT NULL DEFAULT 0;
ALTER TABLE best ADD COLUMN validation_detail TEXT NOT NULL DEFAULT '';
)sql";

// Step 6: the decode family's config fields (0 on older rows: other families).
constexpr const char* kMigration6Decode = R"sql(
ALTER TABLE trials ADD COLUMN fused_combine INTEGER NOT NULL DEFAULT 0;
ALTER TABLE trials ADD COLUMN splits INTEGER NOT NULL DEFAULT 0;
ALTER TABLE best ADD COLUMN fused_combine INTEGER NOT NULL DEFAULT 0;
ALTER TABLE best ADD COLUMN splits INTEGER NOT NULL DEFAULT 0;
)sql";

const std::vector<std::string>& migrations() {
  static const std::vector<std::string> steps = {
      kMigration1Tables,         kMigration2ConfigAndShape, kMigration3HopperSwitches,
      migration4_layout_and_gqa(), kMigration5Validation,     kMigration6Decode,
  };
  return steps;
}

// Column lists shared by the INSERTs and SELECTs, so a row is written and
// read in one order. A scope is written with its bucket text (the key) and
// read back from the numeric bucket fields.
constexpr std::string_view kScopeInsertCols =
    "template_id, dtype, head_dim, causal, bucket, seq_q_bucket, seq_k_bucket, "
    "batch_heads_bucket, gqa_ratio, layout, device_name, arch";
constexpr int kScopeColCount = 12;
// The bucket text is read too, and checked against the fields it was made of.
constexpr std::string_view kScopeSelectCols =
    "template_id, dtype, head_dim, causal, bucket, seq_q_bucket, seq_k_bucket, "
    "batch_heads_bucket, gqa_ratio, layout, device_name, arch";
constexpr std::string_view kScopeKeyWhere =
    "template_id = ? AND dtype = ? AND head_dim = ? AND causal = ? AND bucket = ? AND "
    "device_name = ? AND arch = ?";
constexpr std::string_view kConfigCols =
    "block_m, block_n, warps, stages, q_placement, smem_layout, pingpong, separate_o, persistent, "
    "fused_combine, splits";
constexpr int kConfigColCount = 11;
constexpr std::string_view kToolchainCols = "nvrtc_version, template_source_hash, driver_version";
constexpr std::string_view kTrialCols =
    "job_id, batch, heads, kv_heads, seq_q, seq_k, cache_key, status, failure_reason, median_us, "
    "p10_us, p90_us, samples, tflops, rel_error, max_abs_error, registers, spill_store_bytes, "
    "spill_load_bytes, smem_bytes, gpu_index, created_unix_ms";
constexpr std::string_view kBestCols =
    "cache_key, median_us, tflops, trial_id, evaluations, wall_seconds, searcher, updated_unix_ms, "
    "batch, heads, kv_heads, seq_q, seq_k, p10_us, p90_us, validated, validation_detail";
constexpr int kBestColCount = 17;
constexpr std::string_view kJobCols =
    "searcher, status, started_unix_ms, finished_unix_ms, evaluations, best_trial_id";

constexpr int kBusyTimeoutMs = 5000;
constexpr int kDefaultPageSize = 100;
constexpr int kMaxPageSize = 1000;

int64_t now_unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string cat(std::initializer_list<std::string_view> parts) {
  std::string out;
  for (auto p : parts) out += p;
  return out;
}

// "?, ?, ?" for n parameters.
std::string placeholders(int n) {
  std::string out;
  for (int i = 0; i < n; ++i) out += i == 0 ? "?" : ", ?";
  return out;
}

ErrorCode code_for(int rc) {
  switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_CANTOPEN:
    case SQLITE_IOERR:
    case SQLITE_FULL:
    case SQLITE_READONLY:
      return ErrorCode::unavailable;
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT:
      return ErrorCode::failed_precondition;
    case SQLITE_CONSTRAINT:
      return ErrorCode::invalid_argument;
    default:
      return ErrorCode::internal;
  }
}

// How to get a fresh database without losing the old one: said in every
// refusal, since the daemon never does it itself.
std::string move_aside_hint(const std::string& path) {
  return "; the daemon never recreates it over stored results: move it aside (mv " + path + " " +
         path + ".bad) to start with an empty database, or point --tuning-db elsewhere";
}

Error sqlite_error(sqlite3* db, int rc, const std::string& path, std::string_view what) {
  std::string message =
      "tuning database " + path + ": " + std::string(what) + ": " + sqlite3_errstr(rc);
  const int basic = rc & 0xff;
  if (basic == SQLITE_NOTADB || basic == SQLITE_CORRUPT)
    message += " (not a SQLite database, or damaged)" + move_aside_hint(path);
  return make_error(code_for(rc), std::move(message), db ? sqlite3_errmsg(db) : "");
}

// One prepared statement: binds in order, steps, reads columns in order.
class Statement {
 public:
  // `what` names the operation in error messages ("record trial: database is locked").
  Statement(sqlite3* db, const std::string& path, std::string_view what)
      : db_(db), path_(path), what_(what) {}
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;
  ~Statement() { sqlite3_finalize(stmt_); }

  Status prepare(std::string_view sql) {
    const int rc =
        sqlite3_prepare_v2(db_, sql.data(), static_cast<int>(sql.size()), &stmt_, nullptr);
    if (rc != SQLITE_OK) return sqlite_error(db_, rc, path_, what_);
    return ok_status();
  }

  Statement& bind(int64_t v) { return check(sqlite3_bind_int64(stmt_, next_bind_++, v)); }
  Statement& bind(int v) { return bind(static_cast<int64_t>(v)); }
  Statement& bind(bool v) { return bind(static_cast<int64_t>(v ? 1 : 0)); }
  Statement& bind(double v) { return check(sqlite3_bind_double(stmt_, next_bind_++, v)); }
  Statement& bind(std::string_view v) {
    return check(sqlite3_bind_text(stmt_, next_bind_++, v.data(), static_cast<int>(v.size()),
                                   SQLITE_TRANSIENT));
  }
  Statement& bind(const std::string& v) { return bind(std::string_view(v)); }
  Statement& bind(const char* v) { return bind(std::string_view(v)); }
  // 0 ids are stored as NULL so foreign keys accept "none".
  Statement& bind_id(int64_t id) {
    return id == 0 ? check(sqlite3_bind_null(stmt_, next_bind_++)) : bind(id);
  }

  // true: a row is ready; false: done.
  Result<bool> step() {
    if (bind_rc_ != SQLITE_OK) return sqlite_error(db_, bind_rc_, path_, what_);
    next_col_ = 0;
    row_error_.clear();  // each row is judged on its own
    const int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    return sqlite_error(db_, rc, path_, what_);
  }
  Status run() {
    auto r = step();
    if (!r) return r.error();
    return ok_status();
  }

  int64_t i64() { return sqlite3_column_int64(stmt_, next_col_++); }
  int i32() { return static_cast<int>(i64()); }
  double real() { return sqlite3_column_double(stmt_, next_col_++); }
  std::string text() {
    const int col = next_col_++;
    const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, col));
    return p ? std::string(p, static_cast<size_t>(sqlite3_column_bytes(stmt_, col))) : "";
  }

  // Enum-valued text columns; a value this build cannot read is reported
  // by row_error() rather than silently defaulted.
  template <typename T, typename Parse>
  T parsed(Parse parse, std::string_view column) {
    const std::string value = text();
    if (auto v = parse(value)) return *v;
    if (row_error_.empty()) row_error_ = std::string(column) + " '" + value + "' is not known";
    return T{};
  }
  // A value this build can read but must not trust (see read_scope).
  void row_fault(std::string message) {
    if (row_error_.empty()) row_error_ = std::move(message);
  }
  Status row_status() const {
    if (row_error_.empty()) return ok_status();
    return make_error(ErrorCode::failed_precondition,
                      "tuning database " + path_ + ": " + std::string(what_) + ": " + row_error_);
  }

 private:
  Statement& check(int rc) {
    if (rc != SQLITE_OK && bind_rc_ == SQLITE_OK) bind_rc_ = rc;
    return *this;
  }

  sqlite3* db_;
  const std::string& path_;
  std::string_view what_;
  sqlite3_stmt* stmt_ = nullptr;
  int next_bind_ = 1;
  int next_col_ = 0;
  int bind_rc_ = SQLITE_OK;
  std::string row_error_;
};

Status exec(sqlite3* db, const std::string& path, std::string_view sql, std::string_view what) {
  char* message = nullptr;
  const int rc = sqlite3_exec(db, std::string(sql).c_str(), nullptr, nullptr, &message);
  sqlite3_free(message);
  if (rc != SQLITE_OK) return sqlite_error(db, rc, path, what);
  return ok_status();
}

// BEGIN IMMEDIATE takes the write lock up front: a deferred transaction that
// reads and then writes can fail with SQLITE_BUSY in WAL mode without waiting
// on the busy timeout, when another connection wrote in between.
class Transaction {
 public:
  Transaction(sqlite3* db, const std::string& path) : db_(db), path_(path) {}
  ~Transaction() {
    // Best effort: the error that abandoned the transaction is already on its way out.
    if (open_) (void)exec(db_, path_, "ROLLBACK", "rollback");
  }
  Status begin() {
    auto s = exec(db_, path_, "BEGIN IMMEDIATE", "begin transaction");
    open_ = s.ok();
    return s;
  }
  Status commit() {
    auto s = exec(db_, path_, "COMMIT", "commit");
    if (s.ok()) open_ = false;
    return s;
  }

 private:
  sqlite3* db_;
  const std::string& path_;
  bool open_ = false;
};

void bind_scope(Statement& st, const TuningScope& scope) {
  st.bind(scope.template_id)
      .bind(dtype_name(scope.problem.dtype))
      .bind(scope.problem.head_dim)
      .bind(scope.problem.causal)
      .bind(canonical_bucket(scope.bucket))
      .bind(scope.bucket.seq_q)
      .bind(scope.bucket.seq_k)
      .bind(scope.bucket.batch_heads)
      .bind(scope.bucket.gqa_ratio)
      .bind(qkv_layout_name(scope.bucket.layout))
      .bind(scope.device_name)
      .bind(scope.arch);
}

void bind_scope_key(Statement& st, const TuningScope& scope) {
  st.bind(scope.template_id)
      .bind(dtype_name(scope.problem.dtype))
      .bind(scope.problem.head_dim)
      .bind(scope.problem.causal)
      .bind(canonical_bucket(scope.bucket))
      .bind(scope.device_name)
      .bind(scope.arch);
}

TuningScope read_scope(Statement& st) {
  TuningScope scope;
  scope.template_id = st.text();
  scope.problem.dtype = st.parsed<DType>(parse_dtype, "dtype");
  scope.problem.head_dim = st.i32();
  scope.problem.causal = st.i64() != 0;
  const std::string bucket_text = st.text();
  scope.bucket.seq_q = st.i64();
  scope.bucket.seq_k = st.i64();
  scope.bucket.batch_heads = st.i64();
  scope.bucket.gqa_ratio = st.i64();
  scope.bucket.layout = st.parsed<QkvLayout>(parse_qkv_layout, "layout");
  scope.device_name = st.text();
  scope.arch = st.text();
  // The key text and the fields must tell one story: a row edited by hand
  // or by another tool is not served under a key it does not match.
  if (const auto parsed = parse_bucket(bucket_text); !parsed || !(*parsed == scope.bucket))
    st.row_fault("bucket '" + bucket_text + "' does not match its fields (" +
                 canonical_bucket(scope.bucket) + ")");
  return scope;
}

void bind_config(Statement& st, const TileConfig& c) {
  st.bind(c.block_m).bind(c.block_n).bind(c.warps).bind(c.stages);
  st.bind(q_placement_name(c.q_placement)).bind(smem_layout_name(c.smem_layout));
  st.bind(c.pingpong ? 1 : 0).bind(c.separate_o ? 1 : 0).bind(c.persistent ? 1 : 0);
  st.bind(c.fused_combine ? 1 : 0).bind(c.splits);
}

TileConfig read_config(Statement& st) {
  TileConfig c;
  c.block_m = st.i32();
  c.block_n = st.i32();
  c.warps = st.i32();
  c.stages = st.i32();
  c.q_placement = st.parsed<QPlacement>(parse_q_placement, "q_placement");
  c.smem_layout = st.parsed<SmemLayout>(parse_smem_layout, "smem_layout");
  c.pingpong = st.i32() != 0;
  c.separate_o = st.i32() != 0;
  c.persistent = st.i32() != 0;
  c.fused_combine = st.i32() != 0;
  c.splits = st.i32();
  return c;
}

void bind_toolchain(Statement& st, const ToolchainRecord& t) {
  st.bind(t.nvrtc_version).bind(t.template_source_hash).bind(t.driver_version);
}

ToolchainRecord read_toolchain(Statement& st) {
  ToolchainRecord t;
  t.nvrtc_version = st.text();
  t.template_source_hash = st.text();
  t.driver_version = st.text();
  return t;
}

const std::string kTrialSelect = cat({"SELECT id, ", kScopeSelectCols, ", ", kConfigCols, ", ",
                                      kToolchainCols, ", ", kTrialCols, " FROM trials "});

Result<TrialRecord> read_trial(Statement& st) {
  TrialRecord t;
  t.id = st.i64();
  t.scope = read_scope(st);
  t.config = read_config(st);
  t.toolchain = read_toolchain(st);
  t.job_id = st.i64();  // NULL reads as 0
  t.shape.batch = st.i64();
  t.shape.heads = st.i64();
  t.shape.kv_heads = st.i64();
  t.shape.seq_q = st.i64();
  t.shape.seq_k = st.i64();
  t.cache_key = st.text();
  t.status = st.parsed<TrialStatus>(parse_trial_status, "trials.status");
  t.failure_reason = st.text();
  t.median_us = st.real();
  t.p10_us = st.real();
  t.p90_us = st.real();
  t.samples = st.i32();
  t.tflops = st.real();
  t.rel_error = st.real();
  t.max_abs_error = st.real();
  t.registers = st.i32();
  t.spill_store_bytes = st.i32();
  t.spill_load_bytes = st.i32();
  t.smem_bytes = st.i32();
  t.gpu_index = st.i32();
  t.created_unix_ms = st.i64();
  if (auto s = st.row_status(); !s) return s.error();
  return t;
}

const std::string kBestSelect = cat({"SELECT id, ", kScopeSelectCols, ", ", kConfigCols, ", ",
                                     kToolchainCols, ", ", kBestCols, " FROM best "});

// Also returns the row id, which list_best pages on (set even when the row
// itself does not read).
Result<BestRecord> read_best(Statement& st, int64_t* id_out = nullptr) {
  const int64_t id = st.i64();
  if (id_out) *id_out = id;
  BestRecord b;
  b.scope = read_scope(st);
  b.config = read_config(st);
  b.toolchain = read_toolchain(st);
  b.cache_key = st.text();
  b.median_us = st.real();
  b.tflops = st.real();
  b.trial_id = st.i64();
  b.evaluations = st.i64();
  b.wall_seconds = st.real();
  b.searcher = st.text();
  b.updated_unix_ms = st.i64();
  b.shape.batch = st.i64();
  b.shape.heads = st.i64();
  b.shape.kv_heads = st.i64();
  b.shape.seq_q = st.i64();
  b.shape.seq_k = st.i64();
  b.p10_us = st.real();
  b.p90_us = st.real();
  b.validated = st.i64() != 0;
  b.validation_detail = st.text();
  // A best is served as "the fastest": a time that cannot have been
  // measured, or no kernel to name, is a damaged row, not a result.
  if (!(b.median_us > 0.0) || !std::isfinite(b.median_us))
    st.row_fault("median_us " + std::to_string(b.median_us) + " is not a measured time");
  if (b.cache_key.empty()) st.row_fault("cache_key is empty");
  if (auto s = st.row_status(); !s) {
    Error e = s.error();
    e.message += " (best row " + std::to_string(id) + ")";
    return e;
  }
  return b;
}

Result<int> read_user_version(sqlite3* db, const std::string& path) {
  Statement st(db, path, "read schema version");
  if (auto s = st.prepare("PRAGMA user_version"); !s) return s.error();
  auto row = st.step();
  if (!row) return row.error();
  return *row ? st.i32() : 0;
}

Status quick_check(sqlite3* db, const std::string& path) {
  Statement st(db, path, "quick_check");
  if (auto s = st.prepare("PRAGMA quick_check(5)"); !s) return s.error();
  std::string problems;
  for (;;) {
    auto row = st.step();
    if (!row) return row.error();
    if (!*row) break;
    std::string line = st.text();
    if (line == "ok") continue;
    problems += (problems.empty() ? "" : "; ") + line;
  }
  if (problems.empty()) return ok_status();
  return make_error(ErrorCode::failed_precondition,
                    "tuning database " + path + " failed SQLite's quick_check (damaged)" +
                        move_aside_hint(path),
                    problems);
}

Status migrate(sqlite3* db, const std::string& path, int seen_version) {
  const int target = static_cast<int>(migrations().size());
  if (seen_version == target) return ok_status();  // the common case takes no write lock
  Transaction tx(db, path);
  if (auto s = tx.begin(); !s) return s;
  // Read again under the write lock: another process may have migrated it
  // between our first look and now.
  auto version = read_user_version(db, path);
  if (!version) return version.error();
  if (*version > target) {
    return make_error(ErrorCode::failed_precondition,
                      "tuning database " + path + " has schema version " +
                          std::to_string(*version) + ", newer than this build's " +
                          std::to_string(target) + "; refusing to open it (upgrade flashcored)");
  }
  for (int v = *version; v < target; ++v) {
    if (auto s = exec(db, path, migrations()[static_cast<size_t>(v)],
                      "migration to schema version " + std::to_string(v + 1));
        !s)
      return s;
  }
  if (*version < target) {
    if (auto s =
            exec(db, path, "PRAGMA user_version = " + std::to_string(target), "set schema version");
        !s)
      return s;
    if (*version == 0)
      spdlog::info("tuning database {}: created with schema version {}", path, target);
    else
      spdlog::info("tuning database {}: schema migrated from version {} to {}", path, *version,
                   target);
  }
  return tx.commit();
}

Status check_scope(const TuningScope& scope) {
  if (auto e = problem_class_error(scope.problem))
    return make_error(ErrorCode::invalid_argument, *e);
  if (scope.template_id.empty())
    return make_error(ErrorCode::invalid_argument, "template_id: must not be empty");
  if (scope.arch.empty()) return make_error(ErrorCode::invalid_argument, "arch: must not be empty");
  if (scope.device_name.empty())
    return make_error(ErrorCode::invalid_argument, "device_name: must not be empty");
  if (!parse_bucket(canonical_bucket(scope.bucket)))
    return make_error(ErrorCode::invalid_argument,
                      "bucket: " + canonical_bucket(scope.bucket) + " is not a shape bucket");
  return ok_status();
}

}  // namespace

std::string_view trial_status_name(TrialStatus status) {
  switch (status) {
    case TrialStatus::ok:
      return "ok";
    case TrialStatus::failed:
      return "failed";
    case TrialStatus::wrong:
      return "wrong";
    case TrialStatus::skipped:
      return "skipped";
  }
  return "failed";
}

std::optional<TrialStatus> parse_trial_status(std::string_view name) {
  for (auto s : {TrialStatus::ok, TrialStatus::failed, TrialStatus::wrong, TrialStatus::skipped})
    if (trial_status_name(s) == name) return s;
  return std::nullopt;
}

std::string_view job_status_name(JobStatus status) {
  switch (status) {
    case JobStatus::running:
      return "running";
    case JobStatus::succeeded:
      return "succeeded";
    case JobStatus::failed:
      return "failed";
    case JobStatus::cancelled:
      return "cancelled";
  }
  return "failed";
}

std::optional<JobStatus> parse_job_status(std::string_view name) {
  for (auto s : {JobStatus::running, JobStatus::succeeded, JobStatus::failed, JobStatus::cancelled})
    if (job_status_name(s) == name) return s;
  return std::nullopt;
}

int TuningDb::schema_version() { return static_cast<int>(migrations().size()); }

namespace {

bool is_file_path(const std::string& path) {
  return !path.empty() && path != ":memory:" && path.rfind("file:", 0) != 0;
}

// A FlashCore tuning database has our application_id (schema 4 on) or, from
// before it, 0 with our three tables; version 0 means "never written" and
// must then hold nothing at all.
Status check_ours(sqlite3* db, const std::string& path, int version) {
  Statement app(db, path, "read application id");
  if (auto s = app.prepare("PRAGMA application_id"); !s) return s;
  auto row = app.step();
  if (!row) return row.error();
  const int64_t application_id = *row ? app.i64() : 0;
  if (application_id != 0 && application_id != kApplicationId)
    return make_error(ErrorCode::failed_precondition,
                      "tuning database " + path + " is a SQLite file of another application "
                          "(application_id " + std::to_string(application_id) + ")" +
                          move_aside_hint(path));
  Statement tables(db, path, "list tables");
  if (auto s = tables.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT "
                              "LIKE 'sqlite_%' ORDER BY name");
      !s)
    return s;
  std::vector<std::string> names;
  for (;;) {
    auto next = tables.step();
    if (!next) return next.error();
    if (!*next) break;
    names.push_back(tables.text());
  }
  auto has = [&](std::string_view name) {
    return std::find(names.begin(), names.end(), name) != names.end();
  };
  std::string listed;
  for (const auto& n : names) listed += (listed.empty() ? "" : ", ") + n;
  if (version == 0 && !names.empty())
    return make_error(ErrorCode::failed_precondition,
                      "tuning database " + path +
                          " is a SQLite database but not a FlashCore tuning database (schema "
                          "version 0 with tables: " + listed + ")" + move_aside_hint(path));
  if (version > 0 && !(has("jobs") && has("trials") && has("best")))
    return make_error(ErrorCode::failed_precondition,
                      "tuning database " + path + " says schema version " +
                          std::to_string(version) + " but lacks its tables (has: " +
                          (listed.empty() ? "none" : listed) + ")" + move_aside_hint(path));
  return ok_status();
}

}  // namespace

Result<std::unique_ptr<TuningDb>> TuningDb::open(const std::string& path) {
  // SQLite treats an empty file as an empty database and would write a
  // fresh schema into it. A file this daemon made is never empty (the
  // schema is written at creation), so an empty one was truncated or
  // replaced: whatever it held is not ours to paper over.
  if (is_file_path(path)) {
    std::error_code ec;
    const auto size = std::filesystem::file_size(path, ec);
    if (!ec && size == 0)
      return make_error(ErrorCode::failed_precondition,
                        "tuning database " + path + " is an empty file (0 bytes): truncated or "
                            "replaced, its results are gone" + move_aside_hint(path));
  }
  sqlite3* raw = nullptr;
  const int rc =
      sqlite3_open_v2(path.c_str(), &raw,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  // Owns the handle until the TuningDb does; sqlite3_open_v2 may return one
  // even on failure, and it must be closed either way.
  std::unique_ptr<sqlite3, int (*)(sqlite3*)> db(raw, sqlite3_close_v2);
  if (rc != SQLITE_OK) return sqlite_error(raw, rc, path, "open");
  sqlite3_busy_timeout(raw, kBusyTimeoutMs);
  // SQLite falls back to read-only where the file is not writable; every
  // job would then fail at its first trial. Refused up front instead.
  if (sqlite3_db_readonly(raw, "main") == 1)
    return make_error(ErrorCode::failed_precondition,
                      "tuning database " + path + " is not writable (opened read-only); fix its "
                          "permissions or point --tuning-db at a writable file");

  // The version is read before anything writes: a file from a newer build is
  // left exactly as it is.
  auto version = read_user_version(raw, path);
  if (!version) return version.error();
  if (*version > schema_version()) {
    return make_error(ErrorCode::failed_precondition,
                      "tuning database " + path + " has schema version " +
                          std::to_string(*version) + ", newer than this build's " +
                          std::to_string(schema_version()) +
                          "; refusing to open it (upgrade flashcored)");
  }
  // Before anything writes (setting WAL mode rewrites the header): another
  // application's file is left exactly as it is.
  if (auto s = check_ours(raw, path, *version); !s) return s.error();
  // WAL lets readers run beside the one writer; synchronous=NORMAL is safe
  // from corruption in WAL mode and only risks the last commits on power loss,
  // which for measurements means re-measuring a few candidates.
  // (":memory:" stays in "memory" journal mode; the pragma is then a no-op.)
  if (auto s = exec(raw, path, "PRAGMA journal_mode = WAL", "set WAL mode"); !s) return s.error();
  if (auto s =
          exec(raw, path, "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON", "set pragmas");
      !s)
    return s.error();
  if (auto s = quick_check(raw, path); !s) return s.error();
  if (auto s = migrate(raw, path, *version); !s) return s.error();
  return std::unique_ptr<TuningDb>(new TuningDb(path, db.release()));
}

TuningDb::~TuningDb() { sqlite3_close_v2(db_); }

Result<int64_t> TuningDb::begin_job(const TuningScope& scope, std::string_view searcher,
                                    const ToolchainRecord& toolchain) {
  if (auto s = check_scope(scope); !s) return s.error();
  std::lock_guard lock(mutex_);
  Statement st(db_, path_, "begin job");
  const std::string sql =
      cat({"INSERT INTO jobs (", kScopeInsertCols, ", ", kToolchainCols,
           ", searcher, status, started_unix_ms) VALUES (", placeholders(kScopeColCount + 3 + 3), ")"});
  if (auto s = st.prepare(sql); !s) return s.error();
  bind_scope(st, scope);
  bind_toolchain(st, toolchain);
  st.bind(searcher).bind(job_status_name(JobStatus::running)).bind(now_unix_ms());
  if (auto s = st.run(); !s) return s.error();
  return static_cast<int64_t>(sqlite3_last_insert_rowid(db_));
}

Status TuningDb::set_trial_status(int64_t trial_id, TrialStatus status, std::string_view reason) {
  std::lock_guard lock(mutex_);
  Transaction tx(db_, path_);
  if (auto s = tx.begin(); !s) return s;
  {
    Statement st(db_, path_, "look up trial");
    if (auto s = st.prepare("SELECT jobs.status FROM trials LEFT JOIN jobs ON jobs.id = "
                            "trials.job_id WHERE trials.id = ?");
        !s)
      return s;
    st.bind(trial_id);
    auto row = st.step();
    if (!row) return row.error();
    if (!*row)
      return make_error(ErrorCode::not_found, "trial " + std::to_string(trial_id) + " not found");
    if (const std::string job = st.text(); job != job_status_name(JobStatus::running))
      return make_error(ErrorCode::failed_precondition,
                        "trial " + std::to_string(trial_id) + ": its job is " +
                            (job.empty() ? std::string("none") : job) + ", not running");
  }
  {
    Statement st(db_, path_, "set trial status");
    if (auto s = st.prepare("UPDATE trials SET status = ?, failure_reason = ? WHERE id = ?"); !s)
      return s;
    st.bind(trial_status_name(status)).bind(reason).bind(trial_id);
    if (auto s = st.run(); !s) return s;
  }
  return tx.commit();
}

Status TuningDb::finish_job(int64_t job_id, JobStatus status,
                            std::optional<int64_t> best_trial_id) {
  if (status == JobStatus::running)
    return make_error(ErrorCode::invalid_argument, "status: a job cannot finish as running");
  std::lock_guard lock(mutex_);
  Transaction tx(db_, path_);
  if (auto s = tx.begin(); !s) return s;
  {
    Statement st(db_, path_, "look up job");
    if (auto s = st.prepare("SELECT status FROM jobs WHERE id = ?"); !s) return s;
    st.bind(job_id);
    auto row = st.step();
    if (!row) return row.error();
    if (!*row)
      return make_error(ErrorCode::not_found,
                        "tuning job " + std::to_string(job_id) + " not found");
    const std::string current = st.text();
    if (current != job_status_name(JobStatus::running))
      return make_error(ErrorCode::failed_precondition, "tuning job " + std::to_string(job_id) +
                                                            " already finished (" + current + ")");
  }
  {
    Statement st(db_, path_, "finish job");
    if (auto s = st.prepare("UPDATE jobs SET status = ?, finished_unix_ms = ?, best_trial_id = "
                            "COALESCE(?, (SELECT id FROM trials WHERE job_id = ? AND status = "
                            "'ok' ORDER BY median_us, id LIMIT 1)) WHERE id = ?");
        !s)
      return s;
    st.bind(job_status_name(status)).bind(now_unix_ms());
    if (best_trial_id && *best_trial_id != 0)
      st.bind(*best_trial_id);
    else
      st.bind_id(0);
    st.bind(job_id).bind(job_id);
    if (auto s = st.run(); !s) return s;
  }
  return tx.commit();
}

namespace {

// The row id a page token names (the previous page's last); 0 for none.
Result<int64_t> page_after(std::string_view page_token, std::string_view lister) {
  int64_t after = 0;
  if (page_token.empty()) return after;
  const auto [end, ec] =
      std::from_chars(page_token.data(), page_token.data() + page_token.size(), after);
  if (ec != std::errc() || end != page_token.data() + page_token.size() || after < 0)
    return make_error(ErrorCode::invalid_argument, "page_token: '" + std::string(page_token) +
                                                       "' is not a token " + std::string(lister) +
                                                       " gave");
  return after;
}

// Steps a prepared "... WHERE id > ? ORDER BY id" listing into a page of at
// most page_size items read by `read` (row -> Result<item>, with the row's
// id). No LIMIT: rows that do not read are skipped, so how many rows make a
// page is known only while stepping (SQLite reads them lazily). One bad row
// must not hide every good one: it is left out, said in the log and counted.
template <typename Page, typename Read>
Result<Page> read_page(Statement& st, int page_size, Read read) {
  Page page;
  int64_t last_id = 0;
  for (;;) {
    auto row = st.step();
    if (!row) return row.error();
    if (!*row) break;
    if (static_cast<int>(page.items.size()) == page_size) {
      page.next_page_token = std::to_string(last_id);
      break;
    }
    auto item = read(st, &last_id);
    if (!item) {
      spdlog::warn("{}; left out of the list", item.error().message);
      ++page.skipped;
      page.skipped_reasons.push_back(item.error().message);
      continue;
    }
    page.items.push_back(std::move(item).value());
  }
  return page;
}

std::string job_select() {
  return cat({"SELECT id, ", kScopeSelectCols, ", ", kToolchainCols, ", ", kJobCols,
              " FROM jobs "});
}

// One row of job_select(), or why it does not read; `id` gets the row's id
// either way (list_jobs pages on it).
Result<JobRecord> read_job(Statement& st, int64_t* id = nullptr) {
  JobRecord j;
  j.id = st.i64();
  if (id != nullptr) *id = j.id;
  j.scope = read_scope(st);
  j.toolchain = read_toolchain(st);
  j.searcher = st.text();
  j.status = st.parsed<JobStatus>(parse_job_status, "jobs.status");
  j.started_unix_ms = st.i64();
  j.finished_unix_ms = st.i64();
  j.evaluations = st.i64();
  j.best_trial_id = st.i64();
  if (auto s = st.row_status(); !s) return s.error();
  return j;
}

}  // namespace

Result<std::optional<JobRecord>> TuningDb::job(int64_t job_id) {
  std::lock_guard lock(mutex_);
  Statement st(db_, path_, "read job");
  if (auto s = st.prepare(job_select() + "WHERE id = ?"); !s) return s.error();
  st.bind(job_id);
  auto row = st.step();
  if (!row) return row.error();
  if (!*row) return std::optional<JobRecord>{};
  auto job = read_job(st);
  if (!job) return job.error();
  return std::optional<JobRecord>(std::move(job).value());
}

Result<JobPage> TuningDb::list_jobs(int page_size, std::string_view page_token) {
  if (page_size <= 0) page_size = kDefaultPageSize;
  page_size = std::min(page_size, kMaxPageSize);
  // The token is the last job id of the previous page, as list_best's.
  auto after = page_after(page_token, "list_jobs");
  if (!after) return after.error();
  std::lock_guard lock(mutex_);
  Statement st(db_, path_, "list jobs");
  if (auto s = st.prepare(job_select() + "WHERE id > ? ORDER BY id"); !s) return s.error();
  st.bind(*after);
  return read_page<JobPage>(st, page_size,
                            [](Statement& row, int64_t* id) { return read_job(row, id); });
}

Result<int64_t> TuningDb::record_trial(const TrialRecord& trial) {
  if (auto s = check_scope(trial.scope); !s) return s.error();
  std::lock_guard lock(mutex_);
  Transaction tx(db_, path_);
  if (auto s = tx.begin(); !s) return s.error();
  if (trial.job_id != 0) {
    Statement st(db_, path_, "look up job");
    if (auto s = st.prepare("SELECT status FROM jobs WHERE id = ?"); !s) return s.error();
    st.bind(trial.job_id);
    auto row = st.step();
    if (!row) return row.error();
    if (!*row)
      return make_error(ErrorCode::not_found,
                        "tuning job " + std::to_string(trial.job_id) + " not found");
    // A finished job's best trial is settled; a late result must not change its record.
    if (const std::string status = st.text(); status != job_status_name(JobStatus::running))
      return make_error(
          ErrorCode::failed_precondition,
          "tuning job " + std::to_string(trial.job_id) + " is " + status + ", not running");
  }
  int64_t id = 0;
  {
    Statement st(db_, path_, "record trial");
    const std::string sql =
        cat({"INSERT INTO trials (", kScopeInsertCols, ", ", kConfigCols, ", ", kToolchainCols,
             ", ", kTrialCols, ") VALUES (", placeholders(kScopeColCount + kConfigColCount + 3 + 22), ")"});
    if (auto s = st.prepare(sql); !s) return s.error();
    bind_scope(st, trial.scope);
    bind_config(st, trial.config);
    bind_toolchain(st, trial.toolchain);
    st.bind_id(trial.job_id)
        .bind(trial.shape.batch)
        .bind(trial.shape.heads)
        .bind(trial.shape.kv_heads)
        .bind(trial.shape.seq_q)
        .bind(trial.shape.seq_k)
        .bind(trial.cache_key)
        .bind(trial_status_name(trial.status))
        .bind(trial.failure_reason)
        .bind(trial.median_us)
        .bind(trial.p10_us)
        .bind(trial.p90_us)
        .bind(trial.samples)
        .bind(trial.tflops)
        .bind(trial.rel_error)
        .bind(trial.max_abs_error)
        .bind(trial.registers)
        .bind(trial.spill_store_bytes)
        .bind(trial.spill_load_bytes)
        .bind(trial.smem_bytes)
        .bind(trial.gpu_index)
        .bind(trial.created_unix_ms != 0 ? trial.created_unix_ms : now_unix_ms());
    if (auto s = st.run(); !s) return s.error();
    id = sqlite3_last_insert_rowid(db_);
  }
  if (trial.job_id != 0 && trial.status != TrialStatus::skipped) {
    Statement st(db_, path_, "count job evaluation");
    if (auto s = st.prepare("UPDATE jobs SET evaluations = evaluations + 1 WHERE id = ?"); !s)
      return s.error();
    st.bind(trial.job_id);
    if (auto s = st.run(); !s) return s.error();
  }
  if (auto s = tx.commit(); !s) return s.error();
  return id;
}

Result<std::vector<TrialRecord>> TuningDb::trials_for_job(int64_t job_id) {
  std::lock_guard lock(mutex_);
  Statement st(db_, path_, "list trials");
  if (auto s = st.prepare(kTrialSelect + "WHERE job_id = ? ORDER BY id"); !s) return s.error();
  st.bind(job_id);
  std::vector<TrialRecord> out;
  for (;;) {
    auto row = st.step();
    if (!row) return row.error();
    if (!*row) break;
    auto trial = read_trial(st);
    if (!trial) return trial.error();
    out.push_back(std::move(trial).value());
  }
  return out;
}

Result<std::map<std::string, int64_t>> TuningDb::count_jobs_by_status() {
  std::lock_guard lock(mutex_);
  Statement st(db_, path_, "count jobs by status");
  if (auto s = st.prepare("SELECT status, COUNT(*) FROM jobs GROUP BY status"); !s) return s.error();
  std::map<std::string, int64_t> counts;
  for (;;) {
    auto row = st.step();
    if (!row) return row.error();
    if (!*row) break;
    std::string status = st.text();
    counts[status] = st.i64();
  }
  return counts;
}

Result<std::map<int, int64_t>> TuningDb::count_trials_by_gpu(const TrialFilter& filter) {
  std::string where = "1";
  if (filter.job_id) where += " AND job_id = ?";
  if (filter.scope) where = cat({where, " AND ", kScopeKeyWhere});
  if (filter.status) where += " AND status = ?";
  std::lock_guard lock(mutex_);
  Statement st(db_, path_, "count trials by gpu");
  if (auto s = st.prepare("SELECT gpu_index, COUNT(*) FROM trials WHERE " + where +
                          " GROUP BY gpu_index");
      !s)
    return s.error();
  if (filter.job_id) st.bind(*filter.job_id);
  if (filter.scope) bind_scope_key(st, *filter.scope);
  if (filter.status) st.bind(trial_status_name(*filter.status));
  std::map<int, int64_t> counts;
  for (;;) {
    auto row = st.step();
    if (!row) return row.error();
    if (!*row) break;
    const int gpu = st.i32();
    counts[gpu] = st.i64();
  }
  return counts;
}

Result<std::vector<TileConfig>> TuningDb::tried_configs(
    const TuningScope& scope, const std::optional<ToolchainRecord>& toolchain) {
  std::string sql = cat({"SELECT DISTINCT ", kConfigCols, " FROM trials WHERE ", kScopeKeyWhere});
  if (toolchain) sql += " AND nvrtc_version = ? AND template_source_hash = ?";
  sql += cat({" ORDER BY ", kConfigCols});
  std::lock_guard lock(mutex_);
  Statement st(db_, path_, "tried configs");
  if (auto s = st.prepare(sql); !s) return s.error();
  bind_scope_key(st, scope);
  if (toolchain) st.bind(toolchain->nvrtc_version).bind(toolchain->template_source_hash);
  std::vector<TileConfig> out;
  for (;;) {
    auto row = st.step();
    if (!row) return row.error();
    if (!*row) break;
    out.push_back(read_config(st));
    if (auto s = st.row_status(); !s) return s.error();
  }
  return out;
}

Result<bool> TuningDb::update_best_if_better(const BestRecord& candidate, BestUpdate mode) {
  if (auto s = check_scope(candidate.scope); !s) return s.error();
  // A zero or NaN time would win every comparison, or none.
  if (!(candidate.median_us > 0.0) || !std::isfinite(candidate.median_us))
    return make_error(
        ErrorCode::invalid_argument,
        "median_us: " + std::to_string(candidate.median_us) + " is not a positive time");
  // One upsert decides and writes, so no other writer can slip between the
  // comparison and the store; the transaction makes that explicit.
  const std::string sql =
      cat({"INSERT INTO best (", kScopeInsertCols, ", ", kConfigCols, ", ", kToolchainCols, ", ",
           kBestCols, ") VALUES (", placeholders(kScopeColCount + kConfigColCount + 3 + kBestColCount),
           ") ON CONFLICT (template_id, dtype, head_dim, causal, bucket, device_name, arch) "
           "DO UPDATE SET seq_q_bucket = excluded.seq_q_bucket, "
           "seq_k_bucket = excluded.seq_k_bucket, "
           "batch_heads_bucket = excluded.batch_heads_bucket, gqa_ratio = excluded.gqa_ratio, "
           "layout = excluded.layout, block_m = excluded.block_m, block_n = excluded.block_n, "
           "warps = excluded.warps, stages = excluded.stages, "
           "q_placement = excluded.q_placement, smem_layout = excluded.smem_layout, "
           "pingpong = excluded.pingpong, separate_o = excluded.separate_o, "
           "persistent = excluded.persistent, fused_combine = excluded.fused_combine, "
           "splits = excluded.splits, "
           "batch = excluded.batch, heads = excluded.heads, kv_heads = excluded.kv_heads, "
           "seq_q = excluded.seq_q, seq_k = excluded.seq_k, "
           "nvrtc_version = excluded.nvrtc_version, "
           "template_source_hash = excluded.template_source_hash, "
           "driver_version = excluded.driver_version, cache_key = excluded.cache_key, "
           "median_us = excluded.median_us, tflops = excluded.tflops, "
           "trial_id = excluded.trial_id, evaluations = excluded.evaluations, "
           "wall_seconds = excluded.wall_seconds, searcher = excluded.searcher, "
           "updated_unix_ms = excluded.updated_unix_ms, p10_us = excluded.p10_us, "
           "p90_us = excluded.p90_us, validated = excluded.validated, "
           "validation_detail = excluded.validation_detail "
           // A later job displaces the stored best only by more than the
           // larger of the two p10-p90 spreads (DESIGN 6: a win smaller than
           // the spread is not a win); rows without a spread count 0.
           "WHERE ? OR excluded.median_us < best.median_us - MAX(0, "
           "excluded.p90_us - excluded.p10_us, best.p90_us - best.p10_us) "
           "OR NOT (best.median_us > 0) "
           "OR excluded.nvrtc_version <> best.nvrtc_version "
           "OR excluded.template_source_hash <> best.template_source_hash"});
  std::lock_guard lock(mutex_);
  Transaction tx(db_, path_);
  if (auto s = tx.begin(); !s) return s.error();
  {
    Statement st(db_, path_, "update best");
    if (auto s = st.prepare(sql); !s) return s.error();
    bind_scope(st, candidate.scope);
    bind_config(st, candidate.config);
    bind_toolchain(st, candidate.toolchain);
    st.bind(candidate.cache_key)
        .bind(candidate.median_us)
        .bind(candidate.tflops)
        .bind_id(candidate.trial_id)
        .bind(candidate.evaluations)
        .bind(candidate.wall_seconds)
        .bind(candidate.searcher)
        .bind(candidate.updated_unix_ms != 0 ? candidate.updated_unix_ms : now_unix_ms())
        .bind(candidate.shape.batch)
        .bind(candidate.shape.heads)
        .bind(candidate.shape.kv_heads)
        .bind(candidate.shape.seq_q)
        .bind(candidate.shape.seq_k)
        .bind(candidate.p10_us)
        .bind(candidate.p90_us)
        .bind(candidate.validated)
        .bind(candidate.validation_detail)
        .bind(mode == BestUpdate::force);
    if (auto s = st.run(); !s) return s.error();
  }
  const bool stored = sqlite3_changes(db_) > 0;
  if (auto s = tx.commit(); !s) return s.error();
  return stored;
}

Result<std::optional<BestRecord>> TuningDb::best_for(const TuningScope& scope) {
  std::lock_guard lock(mutex_);
  Statement st(db_, path_, "read best");
  if (auto s = st.prepare(kBestSelect + cat({"WHERE ", kScopeKeyWhere})); !s) return s.error();
  bind_scope_key(st, scope);
  auto row = st.step();
  if (!row) return row.error();
  if (!*row) return std::optional<BestRecord>{};
  auto best = read_best(st);
  if (!best) return best.error();
  return std::optional<BestRecord>(std::move(best).value());
}

Result<BestPage> TuningDb::list_best(int page_size, std::string_view page_token) {
  if (page_size <= 0) page_size = kDefaultPageSize;
  page_size = std::min(page_size, kMaxPageSize);
  // The token is the last row id of the previous page: ids never change on
  // update, so paging is stable while bests improve underneath it.
  auto after = page_after(page_token, "list_best");
  if (!after) return after.error();
  std::lock_guard lock(mutex_);
  Statement st(db_, path_, "list best");
  if (auto s = st.prepare(kBestSelect + "WHERE id > ? ORDER BY id"); !s) return s.error();
  st.bind(*after);
  return read_page<BestPage>(st, page_size,
                             [](Statement& row, int64_t* id) { return read_best(row, id); });
}

Result<std::vector<NearBest>> TuningDb::nearest_best(const TuningScope& scope, int limit) {
  std::vector<NearBest> out;
  if (limit <= 0) return out;
  {
    std::lock_guard lock(mutex_);
    Statement st(db_, path_, "nearest best");
    // Distances are computed here, not in SQL, so bucket_distance stays the
    // one definition; a class/device/arch holds tens of buckets, not millions.
    if (auto s = st.prepare(kBestSelect +
                            "WHERE template_id = ? AND dtype = ? AND head_dim = ? AND causal = ? "
                            "AND device_name = ? AND arch = ?");
        !s)
      return s.error();
    st.bind(scope.template_id)
        .bind(dtype_name(scope.problem.dtype))
        .bind(scope.problem.head_dim)
        .bind(scope.problem.causal)
        .bind(scope.device_name)
        .bind(scope.arch);
    for (;;) {
      auto row = st.step();
      if (!row) return row.error();
      if (!*row) break;
      auto best = read_best(st);
      if (!best) {
        spdlog::warn("{}; not used as a nearby result", best.error().message);
        continue;
      }
      const int distance = bucket_distance(scope.bucket, best->scope.bucket);
      out.push_back(NearBest{std::move(best).value(), distance});
    }
  }
  std::sort(out.begin(), out.end(), [](const NearBest& a, const NearBest& b) {
    if (a.distance != b.distance) return a.distance < b.distance;
    const auto& x = a.best.scope.bucket;
    const auto& y = b.best.scope.bucket;
    return std::tie(x.seq_q, x.seq_k, x.batch_heads) < std::tie(y.seq_q, y.seq_k, y.batch_heads);
  });
  if (out.size() > static_cast<size_t>(limit)) out.resize(static_cast<size_t>(limit));
  return out;
}

}  // namespace flashcore
