#include <gtest/gtest.h>
#include <sqlite3.h>
#include <stdlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "tuning/shape_bucket.hpp"
#include "tuning/tuning_db.hpp"

namespace flashcore {
namespace {

namespace fs = std::filesystem;

class ScratchDir {
 public:
  ScratchDir() {
    std::string pattern = (fs::temp_directory_path() / "flashcore-tuningdb-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) ADD_FAILURE() << "mkdtemp failed for " << pattern;
    path_ = pattern;
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

// Opens the file with plain SQLite, to look at it the way another tool would.
class RawDb {
 public:
  explicit RawDb(const std::string& path) {
    EXPECT_EQ(
        sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr),
        SQLITE_OK);
  }
  ~RawDb() { sqlite3_close_v2(db_); }
  void exec(const std::string& sql) {
    char* message = nullptr;
    EXPECT_EQ(sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &message), SQLITE_OK)
        << sql << ": " << (message ? message : "");
    sqlite3_free(message);
  }
  // First column of the first row, as text ("" when there is none).
  std::string scalar(const std::string& sql) {
    sqlite3_stmt* st = nullptr;
    std::string out;
    EXPECT_EQ(sqlite3_prepare_v2(db_, sql.c_str(), -1, &st, nullptr), SQLITE_OK) << sql;
    if (st && sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
      out = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    return out;
  }

 private:
  sqlite3* db_ = nullptr;
};

std::unique_ptr<TuningDb> open_ok(const std::string& path) {
  auto db = TuningDb::open(path);
  EXPECT_TRUE(db.ok()) << (db.ok() ? "" : db.error().message + " | " + db.error().detail);
  return db.ok() ? std::move(db).value() : nullptr;
}

TuningScope scope_at(ShapeBucket bucket, std::string device = "NVIDIA H100 80GB HBM3",
                     std::string arch = "sm_90a") {
  TuningScope scope;
  scope.problem = ProblemClass{DType::fp16, 128, true};
  scope.bucket = bucket;
  scope.device_name = std::move(device);
  scope.arch = std::move(arch);
  return scope;
}

const ToolchainRecord kToolchain{"13.0", std::string(64, 'a'), "580.65.06"};

TrialRecord trial_for(const TuningScope& scope, int64_t job_id, TileConfig config, double median_us,
                      int gpu = 0) {
  TrialRecord t;
  t.job_id = job_id;
  t.scope = scope;
  t.shape.batch = 2;
  t.shape.heads = 8;
  t.shape.seq_q = scope.bucket.seq_q - 24;
  t.shape.seq_k = scope.bucket.seq_k;
  t.config = config;
  t.cache_key = std::string(64, 'c');
  t.median_us = median_us;
  t.p10_us = median_us * 0.98;
  t.p90_us = median_us * 1.03;
  t.samples = 50;
  t.tflops = 1e3 / median_us;
  t.gpu_index = gpu;
  t.toolchain = kToolchain;
  return t;
}

BestRecord best_for_scope(const TuningScope& scope, TileConfig config, double median_us,
                          int64_t trial_id = 0) {
  BestRecord b;
  b.scope = scope;
  b.config = config;
  b.cache_key = std::string(64, 'b');
  b.median_us = median_us;
  b.tflops = 1e3 / median_us;
  b.trial_id = trial_id;
  b.evaluations = 10;
  b.wall_seconds = 1.5;
  b.searcher = "evolutionary";
  b.toolchain = kToolchain;
  return b;
}

const ShapeBucket kBucket{1024, 1024, 16};

// A file at schema `version` (1 to 3) as those builds made it (defined below
// the released schema copies).
void make_old_schema(RawDb& raw, int version);
void upgrade_old_schema(RawDb& raw, int version);

TEST(TuningDb, MigratesAnEmptyFileToTheCurrentSchemaInWalMode) {
  ScratchDir dir;
  const std::string path = dir.file("tuning.db");
  ASSERT_NE(open_ok(path), nullptr);
  ASSERT_GE(TuningDb::schema_version(), 1);
  RawDb raw(path);
  EXPECT_EQ(raw.scalar("PRAGMA user_version"), std::to_string(TuningDb::schema_version()));
  EXPECT_EQ(raw.scalar("PRAGMA journal_mode"), "wal");
  for (const char* table : {"jobs", "trials", "best"}) {
    EXPECT_EQ(raw.scalar(std::string("SELECT name FROM sqlite_master WHERE type = 'table' AND "
                                     "name = '") +
                         table + "'"),
              table);
  }
}

TEST(TuningDb, FailedMigrationRollsBackEntirely) {
  ScratchDir dir;
  const std::string path = dir.file("tuning.db");
  {
    // A version-3 file whose jobs table already has step 4's second column:
    // step 4 fails part-way, after it has added gqa_ratio.
    RawDb raw(path);
    make_old_schema(raw, 3);
    raw.exec("ALTER TABLE jobs ADD COLUMN layout TEXT");
  }
  auto db = TuningDb::open(path);
  ASSERT_FALSE(db.ok());
  EXPECT_NE(db.error().message.find("migration to schema version 4"), std::string::npos)
      << db.error().message;
  RawDb raw(path);
  EXPECT_EQ(raw.scalar("PRAGMA user_version"), "3");
  // The statements before the failing one were undone with it.
  EXPECT_EQ(raw.scalar("SELECT count(*) FROM pragma_table_info('jobs') WHERE name = 'gqa_ratio'"),
            "0");
}

TEST(TuningDb, ASqliteFileOfAnotherApplicationIsRefusedAndLeftUntouched) {
  ScratchDir dir;
  // Version 0 (never written by us) but holding tables: someone else's.
  const std::string foreign = dir.file("foreign.db");
  {
    RawDb raw(foreign);
    raw.exec("CREATE TABLE best (x INTEGER)");
    raw.exec("INSERT INTO best VALUES (42)");
  }
  const std::string before = read_bytes(foreign);
  auto db = TuningDb::open(foreign);
  ASSERT_FALSE(db.ok());
  EXPECT_EQ(db.error().code, ErrorCode::failed_precondition);
  EXPECT_NE(db.error().message.find(foreign), std::string::npos) << db.error().message;
  EXPECT_NE(db.error().message.find("not a FlashCore tuning database"), std::string::npos)
      << db.error().message;
  EXPECT_NE(db.error().message.find("move it aside"), std::string::npos) << db.error().message;
  EXPECT_TRUE(read_bytes(foreign) == before) << "the refused file was changed";

  // Another application's id, whatever its tables.
  const std::string other_app = dir.file("other_app.db");
  {
    RawDb raw(other_app);
    make_old_schema(raw, 3);
    raw.exec("PRAGMA application_id = 1234");
  }
  auto refused = TuningDb::open(other_app);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.error().message.find("application_id 1234"), std::string::npos)
      << refused.error().message;
  EXPECT_EQ(RawDb(other_app).scalar("PRAGMA user_version"), "3");  // not migrated

  // Our schema version without our tables.
  const std::string hollow = dir.file("hollow.db");
  {
    RawDb raw(hollow);
    raw.exec("CREATE TABLE notes (x TEXT)");
    raw.exec("PRAGMA user_version = 2");
  }
  auto lacking = TuningDb::open(hollow);
  ASSERT_FALSE(lacking.ok());
  EXPECT_NE(lacking.error().message.find("lacks its tables"), std::string::npos)
      << lacking.error().message;
}

TEST(TuningDb, AnEmptyFileIsRefusedNeverRecreated) {
  ScratchDir dir;
  const std::string path = dir.file("tuning.db");
  write_bytes(path, "");
  auto db = TuningDb::open(path);
  ASSERT_FALSE(db.ok());
  EXPECT_EQ(db.error().code, ErrorCode::failed_precondition);
  EXPECT_NE(db.error().message.find(path), std::string::npos) << db.error().message;
  EXPECT_NE(db.error().message.find("empty file (0 bytes)"), std::string::npos)
      << db.error().message;
  EXPECT_NE(db.error().message.find("mv " + path + " " + path + ".bad"), std::string::npos)
      << db.error().message;
  EXPECT_EQ(fs::file_size(path), 0u);
  EXPECT_FALSE(fs::exists(path + "-wal"));
  // A path with no file is created, as on a first start.
  ASSERT_NE(open_ok(dir.file("fresh.db")), nullptr);
  EXPECT_GT(fs::file_size(dir.file("fresh.db")), 0u);
}

TEST(TuningDb, ATruncatedFileIsRefusedAndKept) {
  ScratchDir dir;
  const std::string path = dir.file("tuning.db");
  {
    auto db = open_ok(path);
    ASSERT_NE(db, nullptr);
    auto job = db->begin_job(scope_at(kBucket), "exhaustive", kToolchain);
    ASSERT_TRUE(job.ok());
    for (int i = 0; i < 200; ++i)
      ASSERT_TRUE(
          db->record_trial(trial_for(scope_at(kBucket), *job, TileConfig{}, 50.0 + i)).ok());
    ASSERT_TRUE(*db->update_best_if_better(best_for_scope(scope_at(kBucket), TileConfig{}, 50.0)));
  }
  {
    RawDb raw(path);
    raw.exec("PRAGMA wal_checkpoint(TRUNCATE)");  // everything in the main file
  }
  std::string bytes = read_bytes(path);
  const size_t page_size = std::stoul(RawDb(path).scalar("PRAGMA page_size"));
  ASSERT_GT(bytes.size(), 4 * page_size);
  bytes.resize(bytes.size() / 2);  // a copy cut short, a disk that filled up
  write_bytes(path, bytes);
  fs::remove(path + "-wal");
  fs::remove(path + "-shm");

  auto db = TuningDb::open(path);
  ASSERT_FALSE(db.ok()) << "a truncated database opened";
  EXPECT_EQ(db.error().code, ErrorCode::failed_precondition);
  EXPECT_NE(db.error().message.find(path), std::string::npos) << db.error().message;
  EXPECT_NE(db.error().message.find("move it aside"), std::string::npos) << db.error().message;
  EXPECT_EQ(read_bytes(path), bytes);
}

TEST(TuningDb, ReopeningKeepsDataAcrossObjectsAndRestarts) {
  ScratchDir dir;
  const std::string path = dir.file("tuning.db");
  const TuningScope scope = scope_at(kBucket);
  int64_t job_id = 0, trial_id = 0;
  {
    auto first = open_ok(path);
    ASSERT_NE(first, nullptr);
    auto job = first->begin_job(scope, "exhaustive", kToolchain);
    ASSERT_TRUE(job.ok()) << job.error().message;
    job_id = *job;
    auto trial = first->record_trial(trial_for(scope, job_id, TileConfig{128, 64, 4, 2}, 80.0));
    ASSERT_TRUE(trial.ok()) << trial.error().message;
    trial_id = *trial;
    ASSERT_TRUE(*first->update_best_if_better(
        best_for_scope(scope, TileConfig{128, 64, 4, 2}, 80.0, trial_id)));

    // A second object over the same file, while the first is open, sees it all.
    auto second = open_ok(path);
    ASSERT_NE(second, nullptr);
    auto best = second->best_for(scope);
    ASSERT_TRUE(best.ok() && best->has_value());
    EXPECT_EQ((*best)->trial_id, trial_id);
    ASSERT_TRUE(second->finish_job(job_id, JobStatus::succeeded).ok());
    // ... and the first sees the second's write.
    auto job_row = first->job(job_id);
    ASSERT_TRUE(job_row.ok() && job_row->has_value());
    EXPECT_EQ((*job_row)->status, JobStatus::succeeded);
  }
  // After both are closed (a daemon restart), everything is still there.
  auto reopened = open_ok(path);
  ASSERT_NE(reopened, nullptr);
  auto trials = reopened->trials_for_job(job_id);
  ASSERT_TRUE(trials.ok());
  ASSERT_EQ(trials->size(), 1u);
  EXPECT_EQ((*trials)[0].id, trial_id);
  auto best = reopened->best_for(scope);
  ASSERT_TRUE(best.ok() && best->has_value());
  EXPECT_EQ((*best)->config, (TileConfig{128, 64, 4, 2}));
  EXPECT_DOUBLE_EQ((*best)->median_us, 80.0);
  auto job_row = reopened->job(job_id);
  ASSERT_TRUE(job_row.ok() && job_row->has_value());
  EXPECT_EQ((*job_row)->best_trial_id, trial_id);
  EXPECT_EQ((*job_row)->evaluations, 1);
  EXPECT_GT((*job_row)->finished_unix_ms, 0);
}

TEST(TuningDb, NewerSchemaOnDiskIsRefusedAndLeftUntouched) {
  ScratchDir dir;
  const std::string path = dir.file("tuning.db");
  const int future = TuningDb::schema_version() + 1;
  {
    RawDb raw(path);
    raw.exec("CREATE TABLE from_the_future (x INTEGER)");
    raw.exec("PRAGMA user_version = " + std::to_string(future));
  }
  const std::string before = read_bytes(path);
  auto db = TuningDb::open(path);
  ASSERT_FALSE(db.ok());
  EXPECT_EQ(db.error().code, ErrorCode::failed_precondition);
  EXPECT_NE(db.error().message.find(path), std::string::npos) << db.error().message;
  EXPECT_NE(db.error().message.find("schema version " + std::to_string(future)), std::string::npos)
      << db.error().message;
  EXPECT_EQ(read_bytes(path), before);
  EXPECT_FALSE(fs::exists(path + "-wal"));
}

TEST(TuningDb, FileThatIsNotADatabaseIsAClearError) {
  ScratchDir dir;
  const std::string path = dir.file("tuning.db");
  std::string junk;
  for (int i = 0; i < 200; ++i) junk += "this is not a sqlite database; ";
  write_bytes(path, junk);
  auto db = TuningDb::open(path);
  ASSERT_FALSE(db.ok());
  EXPECT_EQ(db.error().code, ErrorCode::failed_precondition);
  EXPECT_NE(db.error().message.find(path), std::string::npos) << db.error().message;
  EXPECT_NE(db.error().message.find("not a SQLite database"), std::string::npos)
      << db.error().message;
  EXPECT_EQ(read_bytes(path), junk);  // refused, not overwritten
}

TEST(TuningDb, DamagedPagesAreAClearErrorAtOpen) {
  ScratchDir dir;
  const std::string path = dir.file("tuning.db");
  {
    auto db = open_ok(path);
    ASSERT_NE(db, nullptr);
    auto job = db->begin_job(scope_at(kBucket), "exhaustive", kToolchain);
    ASSERT_TRUE(job.ok());
    for (int i = 0; i < 40; ++i)
      ASSERT_TRUE(
          db->record_trial(trial_for(scope_at(kBucket), *job, TileConfig{}, 50.0 + i)).ok());
  }
  // Keep the header page (so SQLite recognises the file), scribble over the rest.
  std::string bytes = read_bytes(path);
  const size_t page_size = std::stoul(RawDb(path).scalar("PRAGMA page_size"));
  ASSERT_GT(bytes.size(), 2 * page_size);
  std::fill(bytes.begin() + static_cast<std::ptrdiff_t>(page_size), bytes.end(), '\xA5');
  write_bytes(path, bytes);

  auto db = TuningDb::open(path);
  ASSERT_FALSE(db.ok()) << "a damaged database opened";
  EXPECT_EQ(db.error().code, ErrorCode::failed_precondition);
  EXPECT_NE(db.error().message.find(path), std::string::npos) << db.error().message;
  EXPECT_NE(db.error().message.find("damaged"), std::string::npos) << db.error().message;
}

TEST(TuningDb, TrialsRoundTripAndJobsCountAndPickTheirBest) {
  auto db = open_ok(":memory:");
  ASSERT_NE(db, nullptr);
  const TuningScope scope = scope_at(kBucket);
  auto job = db->begin_job(scope, "exhaustive", kToolchain);
  ASSERT_TRUE(job.ok());

  TrialRecord full = trial_for(scope, *job, TileConfig{64, 128, 4, 3}, 42.5, 3);
  full.shape.kv_heads = 2;
  full.rel_error = 1.5e-3;
  full.max_abs_error = 2.5e-3;
  full.registers = 168;
  full.spill_store_bytes = 8;
  full.spill_load_bytes = 12;
  full.smem_bytes = 81920;
  full.created_unix_ms = 1700000000123;
  auto full_id = db->record_trial(full);
  ASSERT_TRUE(full_id.ok()) << full_id.error().message;

  // A faster but wrong candidate must not become the job's best.
  TrialRecord wrong = trial_for(scope, *job, TileConfig{128, 128, 8, 2}, 10.0, 1);
  wrong.status = TrialStatus::wrong;
  wrong.rel_error = 0.5;
  wrong.failure_reason = "rel_error 0.5 over 1e-2";
  TrialRecord failed = trial_for(scope, *job, TileConfig{256, 128, 8, 4}, 0.0, 1);
  failed.status = TrialStatus::failed;
  failed.failure_reason = "ptxas: too much shared data";
  TrialRecord skipped = trial_for(scope, *job, TileConfig{64, 128, 4, 3}, 0.0, 0);
  skipped.status = TrialStatus::skipped;
  TrialRecord slower = trial_for(scope, *job, TileConfig{128, 64, 4, 2}, 55.0, 0);
  std::vector<int64_t> ids = {*full_id};
  for (const auto& t : {wrong, failed, skipped, slower}) {
    auto id = db->record_trial(t);
    ASSERT_TRUE(id.ok()) << id.error().message;
    ids.push_back(*id);
  }

  auto trials = db->trials_for_job(*job);
  ASSERT_TRUE(trials.ok());
  ASSERT_EQ(trials->size(), 5u);
  for (size_t i = 0; i < ids.size(); ++i) EXPECT_EQ((*trials)[i].id, ids[i]);
  const TrialRecord& got = (*trials)[0];
  EXPECT_EQ(got.job_id, *job);
  EXPECT_EQ(got.scope.template_id, scope.template_id);
  EXPECT_EQ(got.scope.problem.dtype, DType::fp16);
  EXPECT_EQ(got.scope.problem.head_dim, 128);
  EXPECT_TRUE(got.scope.problem.causal);
  EXPECT_EQ(got.scope.bucket, kBucket);
  EXPECT_EQ(got.scope.device_name, scope.device_name);
  EXPECT_EQ(got.scope.arch, "sm_90a");
  EXPECT_EQ(got.shape.batch, full.shape.batch);
  EXPECT_EQ(got.shape.heads, full.shape.heads);
  EXPECT_EQ(got.shape.kv_heads, 2);
  EXPECT_EQ(got.shape.seq_q, full.shape.seq_q);
  EXPECT_EQ(got.shape.seq_k, full.shape.seq_k);
  EXPECT_EQ(got.config, full.config);
  EXPECT_EQ(got.cache_key, full.cache_key);
  EXPECT_EQ(got.status, TrialStatus::ok);
  EXPECT_DOUBLE_EQ(got.median_us, 42.5);
  EXPECT_DOUBLE_EQ(got.p10_us, full.p10_us);
  EXPECT_DOUBLE_EQ(got.p90_us, full.p90_us);
  EXPECT_EQ(got.samples, 50);
  EXPECT_DOUBLE_EQ(got.tflops, full.tflops);
  EXPECT_DOUBLE_EQ(got.rel_error, 1.5e-3);
  EXPECT_DOUBLE_EQ(got.max_abs_error, 2.5e-3);
  EXPECT_EQ(got.registers, 168);
  EXPECT_EQ(got.spill_store_bytes, 8);
  EXPECT_EQ(got.spill_load_bytes, 12);
  EXPECT_EQ(got.smem_bytes, 81920);
  EXPECT_EQ(got.gpu_index, 3);
  EXPECT_EQ(got.toolchain.nvrtc_version, kToolchain.nvrtc_version);
  EXPECT_EQ(got.toolchain.template_source_hash, kToolchain.template_source_hash);
  EXPECT_EQ(got.toolchain.driver_version, kToolchain.driver_version);
  EXPECT_EQ(got.created_unix_ms, 1700000000123);
  EXPECT_EQ((*trials)[1].status, TrialStatus::wrong);
  EXPECT_EQ((*trials)[1].failure_reason, wrong.failure_reason);
  EXPECT_EQ((*trials)[2].status, TrialStatus::failed);
  EXPECT_EQ((*trials)[3].status, TrialStatus::skipped);
  EXPECT_GT((*trials)[4].created_unix_ms, 0);  // 0 means "now"

  ASSERT_TRUE(db->finish_job(*job, JobStatus::succeeded).ok());
  auto row = db->job(*job);
  ASSERT_TRUE(row.ok() && row->has_value());
  EXPECT_EQ((*row)->searcher, "exhaustive");
  EXPECT_EQ((*row)->scope.bucket, kBucket);
  EXPECT_EQ((*row)->evaluations, 4);           // the skipped one was not evaluated
  EXPECT_EQ((*row)->best_trial_id, *full_id);  // fastest *ok* trial
  EXPECT_EQ((*row)->toolchain.template_source_hash, kToolchain.template_source_hash);

  // A finished job takes no more trials and cannot finish again.
  auto late = db->record_trial(trial_for(scope, *job, TileConfig{}, 1.0));
  ASSERT_FALSE(late.ok());
  EXPECT_EQ(late.error().code, ErrorCode::failed_precondition);
  auto again = db->finish_job(*job, JobStatus::failed);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().code, ErrorCode::failed_precondition);
  auto missing = db->finish_job(*job + 100, JobStatus::succeeded);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, ErrorCode::not_found);
  auto orphan = db->record_trial(trial_for(scope, *job + 100, TileConfig{}, 1.0));
  ASSERT_FALSE(orphan.ok());
  EXPECT_EQ(orphan.error().code, ErrorCode::not_found);
  auto no_job = db->job(*job + 100);
  ASSERT_TRUE(no_job.ok());
  EXPECT_FALSE(no_job->has_value());
}

TEST(TuningDb, ListBestPagesThroughEveryRowOnce) {
  auto db = open_ok(":memory:");
  ASSERT_NE(db, nullptr);
  std::set<std::string> want;
  for (int i = 0; i < 7; ++i) {
    const ShapeBucket bucket{int64_t{64} << i, 1024, 16};
    want.insert(canonical_bucket(bucket));
    ASSERT_TRUE(
        *db->update_best_if_better(best_for_scope(scope_at(bucket), TileConfig{}, 10.0 + i)));
  }
  std::vector<std::string> seen;
  std::vector<size_t> page_sizes;
  std::string token;
  for (int pages = 0; pages < 10; ++pages) {
    auto page = db->list_best(3, token);
    ASSERT_TRUE(page.ok()) << page.error().message;
    page_sizes.push_back(page->items.size());
    for (const auto& b : page->items) seen.push_back(canonical_bucket(b.scope.bucket));
    // An improvement between pages must not move a row or repeat it.
    if (pages == 0) {
      ASSERT_TRUE(*db->update_best_if_better(
          best_for_scope(page->items.front().scope, TileConfig{64, 64, 4, 2}, 1.0)));
    }
    token = page->next_page_token;
    if (token.empty()) break;
  }
  EXPECT_EQ(page_sizes, (std::vector<size_t>{3, 3, 1}));
  EXPECT_EQ(seen.size(), want.size());
  EXPECT_EQ(std::set<std::string>(seen.begin(), seen.end()), want);

  auto all = db->list_best(0);  // default page size holds all seven
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->items.size(), 7u);
  EXPECT_TRUE(all->next_page_token.empty());

  auto bad = db->list_best(3, "not-a-token");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, ErrorCode::invalid_argument);
}

TEST(TuningDb, ListJobsPagesThroughEveryJobInIdOrder) {
  auto db = open_ok(":memory:");
  ASSERT_NE(db, nullptr);
  std::vector<int64_t> ids;
  for (int i = 0; i < 5; ++i) {
    auto job = db->begin_job(scope_at(ShapeBucket{int64_t{64} << i, 1024, 16}), "random",
                             kToolchain);
    ASSERT_TRUE(job.ok()) << job.error().message;
    ids.push_back(*job);
  }
  ASSERT_TRUE(db->finish_job(ids[1], JobStatus::cancelled).ok());
  std::vector<int64_t> seen;
  std::vector<size_t> page_sizes;
  std::string token;
  for (int pages = 0; pages < 10; ++pages) {
    auto page = db->list_jobs(2, token);
    ASSERT_TRUE(page.ok()) << page.error().message;
    page_sizes.push_back(page->items.size());
    for (const auto& job : page->items) seen.push_back(job.id);
    token = page->next_page_token;
    if (token.empty()) break;
  }
  EXPECT_EQ(page_sizes, (std::vector<size_t>{2, 2, 1}));
  EXPECT_EQ(seen, ids);
  auto all = db->list_jobs(0);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->items.size(), 5u);
  EXPECT_EQ(all->items[1].status, JobStatus::cancelled);
  EXPECT_EQ(all->items[0].status, JobStatus::running);
  EXPECT_EQ(all->items[0].searcher, "random");
  EXPECT_EQ(all->items[4].scope.bucket.seq_q, int64_t{64} << 4);
  auto bad = db->list_jobs(2, "-3");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, ErrorCode::invalid_argument);
  EXPECT_NE(bad.error().message.find("page_token"), std::string::npos);
}

TEST(TuningDb, UpdateBestKeepsTheFasterUnlessForcedOrStale) {
  auto db = open_ok(":memory:");
  ASSERT_NE(db, nullptr);
  const TuningScope scope = scope_at(kBucket);
  auto none = db->best_for(scope);
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());

  auto stored_median = [&] { return (*db->best_for(scope))->median_us; };
  EXPECT_TRUE(*db->update_best_if_better(best_for_scope(scope, TileConfig{128, 64, 4, 2}, 50.0)));
  EXPECT_FALSE(*db->update_best_if_better(best_for_scope(scope, TileConfig{64, 64, 4, 2}, 60.0)));
  EXPECT_FALSE(*db->update_best_if_better(best_for_scope(scope, TileConfig{64, 64, 4, 2}, 50.0)));
  EXPECT_DOUBLE_EQ(stored_median(), 50.0);
  EXPECT_TRUE(*db->update_best_if_better(best_for_scope(scope, TileConfig{64, 128, 4, 3}, 40.0)));
  auto best = db->best_for(scope);
  ASSERT_TRUE(best.ok() && best->has_value());
  EXPECT_EQ((*best)->config, (TileConfig{64, 128, 4, 3}));
  EXPECT_DOUBLE_EQ((*best)->median_us, 40.0);
  EXPECT_EQ((*best)->searcher, "evolutionary");
  EXPECT_EQ((*best)->evaluations, 10);
  EXPECT_DOUBLE_EQ((*best)->wall_seconds, 1.5);
  EXPECT_GT((*best)->updated_unix_ms, 0);

  EXPECT_TRUE(*db->update_best_if_better(best_for_scope(scope, TileConfig{128, 128, 8, 2}, 90.0),
                                         BestUpdate::force));
  EXPECT_DOUBLE_EQ(stored_median(), 90.0);

  // With spreads: a later best displaces the stored one only by more than the
  // larger of the two p10-p90 spreads.
  auto with_spread = [&](TileConfig c, double median, double p10, double p90) {
    BestRecord b = best_for_scope(scope, c, median);
    b.p10_us = p10;
    b.p90_us = p90;
    return b;
  };
  EXPECT_TRUE(*db->update_best_if_better(with_spread(TileConfig{64, 64, 4, 2}, 80.0, 76.0, 86.0),
                                         BestUpdate::force));
  // 75 is faster than 80 but inside the stored spread of 10: kept.
  EXPECT_FALSE(*db->update_best_if_better(with_spread(TileConfig{64, 128, 4, 3}, 75.0, 74.0, 76.0)));
  // 71 is 9 faster, the candidate's own spread is 12: kept.
  EXPECT_FALSE(*db->update_best_if_better(with_spread(TileConfig{64, 128, 4, 3}, 71.0, 64.0, 76.0)));
  EXPECT_DOUBLE_EQ(stored_median(), 80.0);
  // 69 is 11 faster, more than both spreads: replaced.
  EXPECT_TRUE(*db->update_best_if_better(with_spread(TileConfig{64, 128, 4, 3}, 69.0, 68.0, 70.0)));
  EXPECT_DOUBLE_EQ(stored_median(), 69.0);

  // A best measured with another template source is stale: its cubin is no
  // longer served, so a slower current result replaces it.
  BestRecord current = best_for_scope(scope, TileConfig{128, 64, 4, 2}, 95.0);
  current.toolchain.template_source_hash = std::string(64, 'f');
  EXPECT_TRUE(*db->update_best_if_better(current));
  EXPECT_EQ((*db->best_for(scope))->toolchain.template_source_hash, std::string(64, 'f'));
  BestRecord newer_nvrtc = current;
  newer_nvrtc.median_us = 99.0;
  newer_nvrtc.toolchain.nvrtc_version = "13.1";
  EXPECT_TRUE(*db->update_best_if_better(newer_nvrtc));
  EXPECT_EQ((*db->best_for(scope))->toolchain.nvrtc_version, "13.1");

  // Another bucket, device or arch is another row.
  EXPECT_TRUE(
      *db->update_best_if_better(best_for_scope(scope_at({2048, 1024, 16}), TileConfig{}, 500.0)));
  EXPECT_TRUE(*db->update_best_if_better(
      best_for_scope(scope_at(kBucket, "NVIDIA A100-SXM4-80GB", "sm_80"), TileConfig{}, 500.0)));
  EXPECT_DOUBLE_EQ(stored_median(), 99.0);

  for (double bad : {0.0, -1.0, std::nan("")}) {
    auto r = db->update_best_if_better(best_for_scope(scope, TileConfig{}, bad));
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().code, ErrorCode::invalid_argument);
  }
}

TEST(TuningDb, ConcurrentWritersOnSeparateConnectionsKeepTheTrueMinimum) {
  ScratchDir dir;
  const std::string path = dir.file("tuning.db");
  constexpr int kWriters = 8;
  constexpr int kPerWriter = 12;
  std::vector<std::unique_ptr<TuningDb>> dbs;
  for (int i = 0; i < kWriters; ++i) {
    dbs.push_back(open_ok(path));
    ASSERT_NE(dbs.back(), nullptr);
  }
  const TuningScope scope = scope_at(kBucket);
  auto job = dbs[0]->begin_job(scope, "random", kToolchain);
  ASSERT_TRUE(job.ok());

  // Distinct medians dealt out in a shuffled order, so the minimum arrives at
  // an unpredictable point in an unpredictable thread.
  std::vector<double> medians(kWriters * kPerWriter);
  std::iota(medians.begin(), medians.end(), 0.0);
  for (auto& m : medians) m = 20.0 + m * 0.25;
  std::mt19937 rng(12345);
  std::shuffle(medians.begin(), medians.end(), rng);

  std::vector<std::string> errors(kWriters);
  std::vector<std::thread> threads;
  for (int w = 0; w < kWriters; ++w) {
    threads.emplace_back([&, w] {
      for (int i = 0; i < kPerWriter; ++i) {
        const double median = medians[static_cast<size_t>(w * kPerWriter + i)];
        const TileConfig config{64 + 16 * (i % 4), 64, 4, 1 + w % 4};
        auto trial =
            dbs[static_cast<size_t>(w)]->record_trial(trial_for(scope, *job, config, median, w));
        if (!trial.ok()) {
          errors[static_cast<size_t>(w)] = trial.error().message;
          return;
        }
        auto stored = dbs[static_cast<size_t>(w)]->update_best_if_better(
            best_for_scope(scope, config, median, *trial));
        if (!stored.ok()) {
          errors[static_cast<size_t>(w)] = stored.error().message;
          return;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int w = 0; w < kWriters; ++w)
    EXPECT_EQ(errors[static_cast<size_t>(w)], "") << "writer " << w;

  auto best = dbs[3]->best_for(scope);
  ASSERT_TRUE(best.ok() && best->has_value());
  const double minimum = *std::min_element(medians.begin(), medians.end());
  EXPECT_DOUBLE_EQ((*best)->median_us, minimum);
  // The stored trial id is the trial that measured the minimum.
  auto trials = dbs[5]->trials_for_job(*job);
  ASSERT_TRUE(trials.ok());
  ASSERT_EQ(trials->size(), static_cast<size_t>(kWriters * kPerWriter));
  auto fastest = std::min_element(trials->begin(), trials->end(), [](const auto& a, const auto& b) {
    return a.median_us < b.median_us;
  });
  EXPECT_EQ((*best)->trial_id, fastest->id);
  EXPECT_EQ((*best)->config, fastest->config);
  auto page = dbs[1]->list_best(10);
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->items.size(), 1u);
  // The job's counter saw every increment.
  auto row = dbs[7]->job(*job);
  ASSERT_TRUE(row.ok() && row->has_value());
  EXPECT_EQ((*row)->evaluations, kWriters * kPerWriter);
}

TEST(TuningDb, CountsTrialsPerGpuUnderAFilter) {
  auto db = open_ok(":memory:");
  ASSERT_NE(db, nullptr);
  const TuningScope here = scope_at(kBucket);
  const TuningScope there = scope_at({4096, 4096, 64});
  auto job_a = db->begin_job(here, "random", kToolchain);
  auto job_b = db->begin_job(there, "random", kToolchain);
  ASSERT_TRUE(job_a.ok() && job_b.ok());
  // Job a: gpu 0 x3, gpu 1 x2 (one of them failed), gpu 3 x1. Job b: gpu 1 x4.
  for (int gpu : {0, 0, 0, 1, 3})
    ASSERT_TRUE(db->record_trial(trial_for(here, *job_a, TileConfig{}, 30.0, gpu)).ok());
  TrialRecord failed = trial_for(here, *job_a, TileConfig{}, 0.0, 1);
  failed.status = TrialStatus::failed;
  ASSERT_TRUE(db->record_trial(failed).ok());
  for (int i = 0; i < 4; ++i)
    ASSERT_TRUE(db->record_trial(trial_for(there, *job_b, TileConfig{}, 30.0, 1)).ok());

  TrialFilter by_job;
  by_job.job_id = *job_a;
  auto a = db->count_trials_by_gpu(by_job);
  ASSERT_TRUE(a.ok()) << a.error().message;
  EXPECT_EQ(*a, (std::map<int, int64_t>{{0, 3}, {1, 2}, {3, 1}}));

  TrialFilter ok_only = by_job;
  ok_only.status = TrialStatus::ok;
  EXPECT_EQ(*db->count_trials_by_gpu(ok_only), (std::map<int, int64_t>{{0, 3}, {1, 1}, {3, 1}}));

  TrialFilter by_scope;
  by_scope.scope = there;
  EXPECT_EQ(*db->count_trials_by_gpu(by_scope), (std::map<int, int64_t>{{1, 4}}));

  EXPECT_EQ(*db->count_trials_by_gpu(TrialFilter{}),
            (std::map<int, int64_t>{{0, 3}, {1, 6}, {3, 1}}));
}

TEST(TuningDb, NearestBestOrdersByDistanceWithinClassDeviceAndArch) {
  auto db = open_ok(":memory:");
  ASSERT_NE(db, nullptr);
  const ShapeBucket target{2048, 2048, 32};
  // Same class, device and arch at known distances from target.
  const std::vector<std::pair<ShapeBucket, int>> tuned = {
      {{8192, 8192, 32}, 4}, {{2048, 1024, 32}, 1}, {{512, 2048, 8}, 4},
      {{2048, 2048, 64}, 1}, {{4096, 4096, 64}, 3}, {{64, 64, 1}, 15}};
  for (const auto& [bucket, distance] : tuned) {
    ASSERT_EQ(bucket_distance(target, bucket), distance);
    ASSERT_TRUE(*db->update_best_if_better(best_for_scope(scope_at(bucket), TileConfig{}, 10.0)));
  }
  // Decoys exactly at the target bucket, each differing in one part of the key.
  std::vector<TuningScope> decoys(6, scope_at(target));
  decoys[0].problem.dtype = DType::bf16;
  decoys[1].problem.head_dim = 64;
  decoys[2].problem.causal = false;
  decoys[3].device_name = "NVIDIA H200";
  decoys[4].arch = "sm_90";
  decoys[5].template_id = "attention_fwd_other";
  for (const auto& d : decoys)
    ASSERT_TRUE(*db->update_best_if_better(best_for_scope(d, TileConfig{16, 16, 1, 1}, 1.0)));

  auto near = db->nearest_best(scope_at(target), 4);
  ASSERT_TRUE(near.ok()) << near.error().message;
  ASSERT_EQ(near->size(), 4u);
  std::vector<int> distances;
  for (const auto& n : *near) {
    distances.push_back(n.distance);
    EXPECT_EQ(n.distance, bucket_distance(target, n.best.scope.bucket));
    EXPECT_EQ(n.best.config, TileConfig{}) << "a decoy leaked in";
  }
  EXPECT_EQ(distances, (std::vector<int>{1, 1, 3, 4}));

  auto everything = db->nearest_best(scope_at(target), 100);
  ASSERT_TRUE(everything.ok());
  EXPECT_EQ(everything->size(), tuned.size());
  EXPECT_TRUE(std::is_sorted(everything->begin(), everything->end(),
                             [](const auto& a, const auto& b) { return a.distance < b.distance; }));

  // Once the target bucket itself is tuned, it comes first at distance 0.
  ASSERT_TRUE(*db->update_best_if_better(best_for_scope(scope_at(target), TileConfig{}, 9.0)));
  auto with_own = db->nearest_best(scope_at(target), 1);
  ASSERT_TRUE(with_own.ok());
  ASSERT_EQ(with_own->size(), 1u);
  EXPECT_EQ(with_own->front().distance, 0);
  EXPECT_EQ(with_own->front().best.scope.bucket, target);

  // A device nothing was tuned on has no neighbours.
  auto other = db->nearest_best(scope_at(target, "NVIDIA L4", "sm_89"), 5);
  ASSERT_TRUE(other.ok());
  EXPECT_TRUE(other->empty());
}

TEST(TuningDb, TriedConfigsAreDistinctPerScopeAndToolchain) {
  auto db = open_ok(":memory:");
  ASSERT_NE(db, nullptr);
  const TuningScope scope = scope_at(kBucket);
  const TileConfig a{128, 64, 4, 2}, b{64, 64, 4, 2}, c{128, 128, 8, 2};
  auto job1 = db->begin_job(scope, "random", kToolchain);
  ASSERT_TRUE(job1.ok());
  ASSERT_TRUE(db->record_trial(trial_for(scope, *job1, a, 30.0)).ok());
  ASSERT_TRUE(db->record_trial(trial_for(scope, *job1, b, 31.0)).ok());
  ASSERT_TRUE(db->finish_job(*job1, JobStatus::cancelled).ok());
  // A later job, with a new template source, measures a again and c.
  ToolchainRecord edited = kToolchain;
  edited.template_source_hash = std::string(64, 'e');
  auto job2 = db->begin_job(scope, "random", edited);
  ASSERT_TRUE(job2.ok());
  TrialRecord again = trial_for(scope, *job2, a, 29.0);
  again.toolchain = edited;
  ASSERT_TRUE(db->record_trial(again).ok());
  TrialRecord third = trial_for(scope, *job2, c, 35.0);
  third.toolchain = edited;
  third.status = TrialStatus::failed;
  ASSERT_TRUE(db->record_trial(third).ok());
  // Another bucket's trials do not count.
  ASSERT_TRUE(
      db->record_trial(trial_for(scope_at({2048, 2048, 16}), 0, TileConfig{32, 32, 2, 1}, 9.0))
          .ok());

  auto all = db->tried_configs(scope);
  ASSERT_TRUE(all.ok()) << all.error().message;
  EXPECT_EQ(all->size(), 3u);
  for (const auto& want : {a, b, c})
    EXPECT_NE(std::find(all->begin(), all->end(), want), all->end()) << canonical_config(want);

  auto current = db->tried_configs(scope, edited);
  ASSERT_TRUE(current.ok());
  EXPECT_EQ(current->size(), 2u);
  EXPECT_NE(std::find(current->begin(), current->end(), a), current->end());
  EXPECT_NE(std::find(current->begin(), current->end(), c), current->end());
}

// A copy of schema version 1 as released (tuning_db.cpp's first migration),
// so the test keeps checking the upgrade path whatever later steps add.
constexpr const char* kSchemaVersion1 = R"sql(
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

// Copies of migrations 2 and 3 as released, for files of those versions.
constexpr const char* kSchemaVersion2Step = R"sql(
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
constexpr const char* kSchemaVersion3Step = R"sql(
ALTER TABLE trials ADD COLUMN pingpong INTEGER NOT NULL DEFAULT 0;
ALTER TABLE trials ADD COLUMN separate_o INTEGER NOT NULL DEFAULT 0;
ALTER TABLE trials ADD COLUMN persistent INTEGER NOT NULL DEFAULT 0;
ALTER TABLE best ADD COLUMN pingpong INTEGER NOT NULL DEFAULT 0;
ALTER TABLE best ADD COLUMN separate_o INTEGER NOT NULL DEFAULT 0;
ALTER TABLE best ADD COLUMN persistent INTEGER NOT NULL DEFAULT 0;
)sql";

// The bucket text before schema 4 (no gqa, no layout).
std::string legacy_bucket(const ShapeBucket& b) {
  return "seq_q=" + std::to_string(b.seq_q) + ";seq_k=" + std::to_string(b.seq_k) +
         ";batch_heads=" + std::to_string(b.batch_heads) + ";";
}

// Frozen copies of the released schema 4 and 5 steps (the GQA ratio as that
// build computed it for the shapes these tests record: heads / kv_heads).
constexpr const char* kSchemaVersion4Step = R"sql(
ALTER TABLE jobs ADD COLUMN gqa_ratio INTEGER NOT NULL DEFAULT 1;
ALTER TABLE jobs ADD COLUMN layout TEXT NOT NULL DEFAULT 'bshd';
ALTER TABLE trials ADD COLUMN gqa_ratio INTEGER NOT NULL DEFAULT 1;
ALTER TABLE trials ADD COLUMN layout TEXT NOT NULL DEFAULT 'bshd';
ALTER TABLE best ADD COLUMN gqa_ratio INTEGER NOT NULL DEFAULT 1;
ALTER TABLE best ADD COLUMN layout TEXT NOT NULL DEFAULT 'bshd';
UPDATE trials SET gqa_ratio = CASE WHEN kv_heads <= 0 OR heads <= kv_heads THEN 1 ELSE heads / kv_heads END;
UPDATE best SET gqa_ratio = CASE WHEN kv_heads <= 0 OR heads <= kv_heads THEN 1 ELSE heads / kv_heads END;
UPDATE jobs SET gqa_ratio = COALESCE(
  (SELECT gqa_ratio FROM trials WHERE trials.job_id = jobs.id ORDER BY id LIMIT 1), 1);
UPDATE trials SET bucket = bucket || 'gqa=' || gqa_ratio || ';layout=bshd;';
UPDATE best SET bucket = bucket || 'gqa=' || gqa_ratio || ';layout=bshd;';
UPDATE jobs SET bucket = bucket || 'gqa=' || gqa_ratio || ';layout=bshd;';
PRAGMA application_id = 1178817604;
)sql";

constexpr const char* kSchemaVersion5Step = R"sql(
ALTER TABLE best ADD COLUMN p10_us REAL NOT NULL DEFAULT 0;
ALTER TABLE best ADD COLUMN p90_us REAL NOT NULL DEFAULT 0;
ALTER TABLE best ADD COLUMN validated INTEGER NOT NULL DEFAULT 0;
ALTER TABLE best ADD COLUMN validation_detail TEXT NOT NULL DEFAULT '';
)sql";

// Rows written at schema 3 brought to 4 or 5 by those builds' own steps.
void upgrade_old_schema(RawDb& raw, int version) {
  if (version >= 4) raw.exec(kSchemaVersion4Step);
  if (version >= 5) raw.exec(kSchemaVersion5Step);
  if (version >= 4) raw.exec("PRAGMA user_version = " + std::to_string(version));
}

// A file at schema `version` (1 to 3) as those builds made it.
void make_old_schema(RawDb& raw, int version) {
  raw.exec(kSchemaVersion1);
  if (version >= 2) raw.exec(kSchemaVersion2Step);
  if (version >= 3) raw.exec(kSchemaVersion3Step);
  raw.exec("PRAGMA user_version = " + std::to_string(version));
}

TEST(TuningDb, SchemaOneFileMigratesAndOldRowsReadAsAutomaticWithNoShape) {
  ScratchDir dir;
  const std::string path = dir.file("tuning.db");
  const TuningScope scope = scope_at(kBucket);
  {
    RawDb raw(path);
    raw.exec(kSchemaVersion1);
    raw.exec("PRAGMA user_version = 1");
    raw.exec(
        "INSERT INTO jobs (id, template_id, dtype, head_dim, causal, bucket, seq_q_bucket, "
        "seq_k_bucket, batch_heads_bucket, device_name, arch, searcher, status, started_unix_ms, "
        "finished_unix_ms, evaluations, best_trial_id, nvrtc_version, template_source_hash, "
        "driver_version) VALUES (1, 'attention_fwd', 'fp16', 128, 1, '" +
        legacy_bucket(kBucket) +
        "', 1024, 1024, 16, 'NVIDIA H100 80GB HBM3', 'sm_90a', 'evolutionary', 'succeeded', "
        "1700000000000, 1700000001000, 1, 1, '13.0', '" + kToolchain.template_source_hash +
        "', '580.65.06')");
    raw.exec(
        "INSERT INTO trials (id, job_id, template_id, dtype, head_dim, causal, bucket, "
        "seq_q_bucket, seq_k_bucket, batch_heads_bucket, device_name, arch, batch, heads, "
        "kv_heads, seq_q, seq_k, block_m, block_n, warps, stages, cache_key, status, "
        "failure_reason, median_us, p10_us, p90_us, samples, tflops, rel_error, max_abs_error, "
        "registers, spill_store_bytes, spill_load_bytes, smem_bytes, gpu_index, nvrtc_version, "
        "template_source_hash, driver_version, created_unix_ms) VALUES (1, 1, 'attention_fwd', "
        "'fp16', 128, 1, '" + legacy_bucket(kBucket) +
        "', 1024, 1024, 16, 'NVIDIA H100 80GB HBM3', 'sm_90a', 2, 8, 0, 1000, 1024, 128, 64, 8, 2, "
        "'" + std::string(64, 'c') + "', 'ok', '', 61.5, 60.0, 63.0, 50, 16.0, 1e-3, 2e-3, 128, "
        "0, 0, 98304, 0, '13.0', '" + kToolchain.template_source_hash +
        "', '580.65.06', 1700000000500)");
    raw.exec(
        "INSERT INTO best (template_id, dtype, head_dim, causal, bucket, seq_q_bucket, "
        "seq_k_bucket, batch_heads_bucket, device_name, arch, block_m, block_n, warps, stages, "
        "cache_key, median_us, tflops, trial_id, evaluations, wall_seconds, searcher, "
        "nvrtc_version, template_source_hash, driver_version, updated_unix_ms) VALUES "
        "('attention_fwd', 'fp16', 128, 1, '" + legacy_bucket(kBucket) +
        "', 1024, 1024, 16, 'NVIDIA H100 80GB HBM3', 'sm_90a', 128, 64, 8, 2, '" +
        std::string(64, 'b') + "', 61.5, 16.0, 1, 1, 2.5, 'evolutionary', '13.0', '" +
        kToolchain.template_source_hash + "', '580.65.06', 1700000001000)");
  }

  ASSERT_EQ(TuningDb::schema_version(), 6);
  auto db = open_ok(path);
  ASSERT_NE(db, nullptr);
  {
    RawDb raw(path);
    EXPECT_EQ(raw.scalar("PRAGMA user_version"), "6");
    EXPECT_EQ(raw.scalar("SELECT pingpong + separate_o + persistent FROM best"), "0");
    // Schema 4: every old row was tuned in (B,S,H,D); no shape means MHA.
    EXPECT_EQ(raw.scalar("SELECT layout || '/' || gqa_ratio FROM best"), "bshd/1");
    EXPECT_EQ(raw.scalar("SELECT bucket FROM best"), canonical_bucket(kBucket));
    EXPECT_EQ(raw.scalar("SELECT bucket FROM jobs"), canonical_bucket(kBucket));
    EXPECT_EQ(raw.scalar("SELECT q_placement || '/' || smem_layout FROM best"), "auto/auto");
    EXPECT_EQ(raw.scalar("SELECT q_placement || '/' || smem_layout FROM trials"), "auto/auto");
  }

  // The old best: its fields intact, the new config fields automatic (the
  // rule it was tuned under), the shape unrecorded.
  auto best = db->best_for(scope);
  ASSERT_TRUE(best.ok()) << best.error().message;
  ASSERT_TRUE(best->has_value());
  const BestRecord& old = **best;
  EXPECT_EQ(old.config, (TileConfig{128, 64, 8, 2}));
  EXPECT_EQ(old.config.q_placement, QPlacement::automatic);
  EXPECT_EQ(old.config.smem_layout, SmemLayout::automatic);
  EXPECT_EQ(old.shape.batch, 0);
  EXPECT_EQ(old.shape.heads, 0);
  EXPECT_EQ(old.shape.kv_heads, 0);
  EXPECT_EQ(old.shape.seq_q, 0);
  EXPECT_EQ(old.shape.seq_k, 0);
  EXPECT_DOUBLE_EQ(old.median_us, 61.5);
  EXPECT_EQ(old.trial_id, 1);
  EXPECT_EQ(old.cache_key, std::string(64, 'b'));
  EXPECT_EQ(old.toolchain.nvrtc_version, "13.0");
  EXPECT_EQ(old.updated_unix_ms, 1700000001000);
  EXPECT_FALSE(old.validated);  // schema 5: not fully validated, spread unknown
  EXPECT_EQ(old.p10_us, 0.0);

  auto trials = db->trials_for_job(1);
  ASSERT_TRUE(trials.ok()) << trials.error().message;
  ASSERT_EQ(trials->size(), 1u);
  EXPECT_EQ((*trials)[0].config, (TileConfig{128, 64, 8, 2}));
  EXPECT_EQ((*trials)[0].shape.seq_q, 1000);
  auto job = db->job(1);
  ASSERT_TRUE(job.ok() && job->has_value());
  EXPECT_EQ((*job)->status, JobStatus::succeeded);

  // New rows beside the old ones carry their concrete fields and shape; a
  // faster concrete best replaces the old automatic one.
  BestRecord faster = best_for_scope(scope, TileConfig{128, 64, 8, 2, QPlacement::registers,
                                                       SmemLayout::padded}, 50.0);
  faster.shape = RuntimeShape{2, 8, 0, 1000, 1024};
  ASSERT_TRUE(*db->update_best_if_better(faster));
  auto replaced = db->best_for(scope);
  ASSERT_TRUE(replaced.ok() && replaced->has_value());
  EXPECT_EQ((*replaced)->config, faster.config);
  EXPECT_EQ((*replaced)->shape.seq_k, 1024);

  // Opening again migrates nothing further.
  db.reset();
  ASSERT_NE(open_ok(path), nullptr);
  RawDb raw(path);
  EXPECT_EQ(raw.scalar("PRAGMA user_version"), "6");
  EXPECT_EQ(raw.scalar("SELECT count(*) FROM best"), "1");
}

// The Hopper family's switches survive the database both as a best and as
// trials, and configs differing only in them are distinct.
TEST(TuningDb, HopperSwitchesRoundTrip) {
  auto db = open_ok(":memory:");
  ASSERT_NE(db, nullptr);
  const TuningScope scope = scope_at(kBucket);
  TileConfig hopper{128, 128, 12, 2};
  hopper.pingpong = true;
  hopper.persistent = true;
  hopper.fused_combine = true;  // and the decode family's fields, as a row carries any
  hopper.splits = 9;
  BestRecord best = best_for_scope(scope, hopper, 40.0);
  ASSERT_TRUE(*db->update_best_if_better(best));
  auto stored = db->best_for(scope);
  ASSERT_TRUE(stored.ok() && stored->has_value());
  EXPECT_EQ((*stored)->config, hopper) << config_label((*stored)->config);

  auto job = db->begin_job(scope, "exhaustive", kToolchain);
  ASSERT_TRUE(job.ok());
  std::vector<TileConfig> recorded;
  for (int bits = 0; bits < 8; ++bits) {
    TileConfig c{128, 128, 12, 2};
    c.pingpong = bits & 1;
    c.separate_o = bits & 2;
    c.persistent = bits & 4;
    recorded.push_back(c);
    ASSERT_TRUE(db->record_trial(trial_for(scope, *job, c, 30.0 + bits)).ok());
  }
  auto trials = db->trials_for_job(*job);
  ASSERT_TRUE(trials.ok());
  ASSERT_EQ(trials->size(), recorded.size());
  for (size_t i = 0; i < recorded.size(); ++i) EXPECT_EQ((*trials)[i].config, recorded[i]);
}

TEST(TuningDb, BestAndTrialsRoundTripQPlacementLayoutAndShape) {
  auto db = open_ok(":memory:");
  ASSERT_NE(db, nullptr);
  const TuningScope scope = scope_at(kBucket);
  BestRecord best = best_for_scope(
      scope, TileConfig{64, 32, 2, 3, QPlacement::shared, SmemLayout::padded}, 40.0);
  best.shape = RuntimeShape{3, 12, 4, 1000, 777};
  ASSERT_TRUE(*db->update_best_if_better(best));

  auto expect_same = [&](const BestRecord& got) {
    EXPECT_EQ(got.config, best.config) << canonical_config(got.config);
    EXPECT_EQ(got.shape.batch, 3);
    EXPECT_EQ(got.shape.heads, 12);
    EXPECT_EQ(got.shape.kv_heads, 4);
    EXPECT_EQ(got.shape.seq_q, 1000);
    EXPECT_EQ(got.shape.seq_k, 777);
  };
  auto stored = db->best_for(scope);
  ASSERT_TRUE(stored.ok() && stored->has_value());
  expect_same(**stored);
  auto page = db->list_best(10);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->items.size(), 1u);
  expect_same(page->items[0]);
  auto near = db->nearest_best(scope, 1);
  ASSERT_TRUE(near.ok());
  ASSERT_EQ(near->size(), 1u);
  expect_same(near->front().best);

  // A forced update replaces every field, the new ones included.
  BestRecord pinned = best_for_scope(
      scope, TileConfig{64, 32, 2, 3, QPlacement::registers, SmemLayout::swizzled}, 90.0);
  pinned.shape = RuntimeShape{1, 1, 0, 64, 0};
  ASSERT_TRUE(*db->update_best_if_better(pinned, BestUpdate::force));
  auto now = db->best_for(scope);
  ASSERT_TRUE(now.ok() && now->has_value());
  EXPECT_EQ((*now)->config, pinned.config);
  EXPECT_EQ((*now)->shape.batch, 1);
  EXPECT_EQ((*now)->shape.kv_heads, 0);
  EXPECT_EQ((*now)->shape.seq_q, 64);

  // Trials: every combination, automatic included, comes back as recorded;
  // configs that differ only in the new fields are distinct tried configs.
  auto job = db->begin_job(scope, "exhaustive", kToolchain);
  ASSERT_TRUE(job.ok());
  std::vector<TileConfig> recorded;
  for (QPlacement q : {QPlacement::automatic, QPlacement::registers, QPlacement::shared})
    for (SmemLayout l : {SmemLayout::automatic, SmemLayout::swizzled, SmemLayout::padded}) {
      recorded.push_back(TileConfig{128, 64, 4, 2, q, l});
      ASSERT_TRUE(db->record_trial(trial_for(scope, *job, recorded.back(), 30.0)).ok());
    }
  auto trials = db->trials_for_job(*job);
  ASSERT_TRUE(trials.ok());
  ASSERT_EQ(trials->size(), recorded.size());
  for (size_t i = 0; i < recorded.size(); ++i) EXPECT_EQ((*trials)[i].config, recorded[i]);
  auto tried = db->tried_configs(scope);
  ASSERT_TRUE(tried.ok());
  EXPECT_EQ(tried->size(), recorded.size());
}

TEST(TuningDb, AnUnknownEnumNameInARowIsAnErrorNotAGuess) {
  ScratchDir dir;
  const std::string path = dir.file("tuning.db");
  const TuningScope scope = scope_at(kBucket);
  auto db = open_ok(path);
  ASSERT_NE(db, nullptr);
  ASSERT_TRUE(*db->update_best_if_better(best_for_scope(scope, TileConfig{}, 40.0)));
  auto job = db->begin_job(scope, "exhaustive", kToolchain);
  ASSERT_TRUE(job.ok());
  ASSERT_TRUE(db->record_trial(trial_for(scope, *job, TileConfig{}, 30.0)).ok());
  {
    // Written by some other (future or broken) tool.
    RawDb raw(path);
    raw.exec("UPDATE best SET q_placement = 'sideways'");
    raw.exec("UPDATE trials SET smem_layout = 'diagonal'");
  }
  auto best = db->best_for(scope);
  ASSERT_FALSE(best.ok());
  EXPECT_NE(best.error().message.find("sideways"), std::string::npos) << best.error().message;
  auto trials = db->trials_for_job(*job);
  ASSERT_FALSE(trials.ok());
  EXPECT_NE(trials.error().message.find("diagonal"), std::string::npos) << trials.error().message;
  auto tried = db->tried_configs(scope);
  ASSERT_FALSE(tried.ok());
  EXPECT_NE(tried.error().message.find("diagonal"), std::string::npos) << tried.error().message;
}

TEST(TuningDb, RejectsScopesThatNameNoProblem) {
  auto db = open_ok(":memory:");
  ASSERT_NE(db, nullptr);
  TuningScope bad_head = scope_at(kBucket);
  bad_head.problem.head_dim = 80;  // no template for it
  TuningScope no_device = scope_at(kBucket);
  no_device.device_name.clear();
  TuningScope odd_bucket = scope_at({1000, 1024, 16});
  for (const auto& scope : {bad_head, no_device, odd_bucket}) {
    auto job = db->begin_job(scope, "random", kToolchain);
    ASSERT_FALSE(job.ok());
    EXPECT_EQ(job.error().code, ErrorCode::invalid_argument);
  }
}

// Files of every earlier schema version migrate to the current one: old rows
// become layout bshd, their GQA ratio comes from the shape they recorded, and
// a GQA result is served for its own ratio only.
TEST(TuningDb, EveryEarlierSchemaVersionMigratesWithLayoutAndGqaRatio) {
  for (int version : {1, 2, 3, 4, 5}) {
    SCOPED_TRACE("from schema version " + std::to_string(version));
    ScratchDir dir;
    const std::string path = dir.file("tuning.db");
    {
      RawDb raw(path);
      make_old_schema(raw, std::min(version, 3));
      const std::string bucket = "'" + legacy_bucket(kBucket) + "', 1024, 1024, 16";
      raw.exec(
          "INSERT INTO jobs (id, template_id, dtype, head_dim, causal, bucket, seq_q_bucket, "
          "seq_k_bucket, batch_heads_bucket, device_name, arch, searcher, status, "
          "started_unix_ms, finished_unix_ms, evaluations, best_trial_id, nvrtc_version, "
          "template_source_hash, driver_version) VALUES (1, 'attention_fwd', 'fp16', 128, 1, " +
          bucket + ", 'NVIDIA H100 80GB HBM3', 'sm_90a', 'random', 'succeeded', 1, 2, 1, 1, "
          "'13.0', 'h', 'd')");
      // A GQA trial: 16 query heads on 4 K/V heads.
      raw.exec(
          "INSERT INTO trials (id, job_id, template_id, dtype, head_dim, causal, bucket, "
          "seq_q_bucket, seq_k_bucket, batch_heads_bucket, device_name, arch, batch, heads, "
          "kv_heads, seq_q, seq_k, block_m, block_n, warps, stages, cache_key, status, "
          "failure_reason, median_us, p10_us, p90_us, samples, tflops, rel_error, "
          "max_abs_error, registers, spill_store_bytes, spill_load_bytes, smem_bytes, "
          "gpu_index, nvrtc_version, template_source_hash, driver_version, created_unix_ms) "
          "VALUES (1, 1, 'attention_fwd', 'fp16', 128, 1, " + bucket +
          ", 'NVIDIA H100 80GB HBM3', 'sm_90a', 1, 16, 4, 1000, 1024, 128, 64, 8, 2, 'k', 'ok', "
          "'', 61.5, 60.0, 63.0, 50, 16.0, 0, 0, 128, 0, 0, 0, 0, '13.0', 'h', 'd', 1)");
      std::string best_cols =
          "template_id, dtype, head_dim, causal, bucket, seq_q_bucket, seq_k_bucket, "
          "batch_heads_bucket, device_name, arch, block_m, block_n, warps, stages, cache_key, "
          "median_us, tflops, trial_id, evaluations, wall_seconds, searcher, nvrtc_version, "
          "template_source_hash, driver_version, updated_unix_ms";
      std::string best_values = "'attention_fwd', 'fp16', 128, 1, " + bucket +
                                ", 'NVIDIA H100 80GB HBM3', 'sm_90a', 128, 64, 8, 2, '" +
                                std::string(64, 'b') +
                                "', 61.5, 16.0, 1, 1, 2.5, 'random', '13.0', 'h', 'd', 1";
      if (version >= 2) {  // the shape it was tuned on is recorded: GQA ratio 4
        best_cols += ", batch, heads, kv_heads, seq_q, seq_k";
        best_values += ", 1, 16, 4, 1000, 1024";
      }
      raw.exec("INSERT INTO best (" + best_cols + ") VALUES (" + best_values + ")");
      upgrade_old_schema(raw, version);
    }
    auto db = open_ok(path);
    ASSERT_NE(db, nullptr);
    RawDb raw(path);
    EXPECT_EQ(raw.scalar("PRAGMA user_version"), std::to_string(TuningDb::schema_version()));
    EXPECT_NE(raw.scalar("PRAGMA application_id"), "0");
    EXPECT_EQ(raw.scalar("SELECT layout || '/' || gqa_ratio FROM trials"), "bshd/4");
    EXPECT_EQ(raw.scalar("SELECT layout || '/' || gqa_ratio FROM jobs"), "bshd/4");

    ShapeBucket gqa = kBucket;
    gqa.gqa_ratio = version >= 2 ? 4 : 1;  // schema 1 recorded no shape with the best
    ShapeBucket other_ratio = gqa;
    other_ratio.gqa_ratio = version >= 2 ? 1 : 4;
    ShapeBucket bhsd = gqa;
    bhsd.layout = QkvLayout::bhsd;
    auto best = db->best_for(scope_at(gqa));
    ASSERT_TRUE(best.ok()) << best.error().message;
    ASSERT_TRUE(best->has_value());
    EXPECT_EQ((*best)->scope.bucket, gqa);
    EXPECT_DOUBLE_EQ((*best)->median_us, 61.5);
    for (const ShapeBucket& not_tuned : {other_ratio, bhsd}) {
      auto none = db->best_for(scope_at(not_tuned));
      ASSERT_TRUE(none.ok());
      EXPECT_FALSE(none->has_value()) << canonical_bucket(not_tuned);
    }
    auto trials = db->trials_for_job(1);
    ASSERT_TRUE(trials.ok()) << trials.error().message;
    ASSERT_EQ(trials->size(), 1u);
    EXPECT_EQ((*trials)[0].scope.bucket.gqa_ratio, 4);
    auto job = db->job(1);
    ASSERT_TRUE(job.ok() && job->has_value());
    EXPECT_EQ((*job)->scope.bucket.gqa_ratio, 4);
  }
}

TEST(TuningDb, EachLayoutAndGqaRatioHasItsOwnBest) {
  auto db = open_ok(":memory:");
  ASSERT_NE(db, nullptr);
  std::vector<ShapeBucket> keys;
  for (QkvLayout layout : {QkvLayout::bshd, QkvLayout::bhsd})
    for (int64_t ratio : {1, 4}) keys.push_back(ShapeBucket{1024, 1024, 16, ratio, layout});
  for (size_t i = 0; i < keys.size(); ++i)
    ASSERT_TRUE(*db->update_best_if_better(
        best_for_scope(scope_at(keys[i]), TileConfig{128, 64, 4, 2}, 10.0 + i)));
  for (size_t i = 0; i < keys.size(); ++i) {
    auto best = db->best_for(scope_at(keys[i]));
    ASSERT_TRUE(best.ok() && best->has_value()) << canonical_bucket(keys[i]);
    EXPECT_DOUBLE_EQ((*best)->median_us, 10.0 + i);
    EXPECT_EQ((*best)->scope.bucket, keys[i]);
  }
  // The nearest of the others is one step away: the ratio or the layout.
  auto near = db->nearest_best(scope_at(keys[0]), 4);
  ASSERT_TRUE(near.ok());
  ASSERT_EQ(near->size(), 4u);
  EXPECT_EQ((*near)[0].distance, 0);
  EXPECT_EQ((*near)[1].distance, 1);  // bshd with ratio 4 is 2 doublings, bhsd ratio 1 is 1
  EXPECT_EQ((*near)[1].best.scope.bucket, keys[2]);
}

TEST(TuningDb, ARowThatDoesNotReadIsLeftOutOfListsAndCounted) {
  ScratchDir dir;
  const std::string path = dir.file("tuning.db");
  auto db = open_ok(path);
  ASSERT_NE(db, nullptr);
  std::vector<ShapeBucket> buckets;
  for (int64_t seq : {256, 512, 1024, 2048, 4096}) buckets.push_back(ShapeBucket{seq, seq, 16});
  for (const auto& b : buckets)
    ASSERT_TRUE(*db->update_best_if_better(best_for_scope(scope_at(b), TileConfig{}, 40.0)));
  {
    // Damage two rows the ways another tool (or a bad disk) might.
    RawDb raw(path);
    raw.exec("UPDATE best SET q_placement = 'sideways' WHERE seq_q_bucket = 512");
    raw.exec("UPDATE best SET seq_k_bucket = 64 WHERE seq_q_bucket = 2048");
  }
  auto page = db->list_best(0);
  ASSERT_TRUE(page.ok()) << page.error().message;
  EXPECT_EQ(page->items.size(), 3u);
  EXPECT_EQ(page->skipped, 2);
  ASSERT_EQ(page->skipped_reasons.size(), 2u);
  EXPECT_NE(page->skipped_reasons[0].find("sideways"), std::string::npos)
      << page->skipped_reasons[0];
  EXPECT_NE(page->skipped_reasons[1].find("does not match its fields"), std::string::npos)
      << page->skipped_reasons[1];
  // Paging one row at a time still reaches every good row once.
  std::vector<int64_t> seen;
  std::string token;
  int64_t skipped = 0;
  do {
    auto one = db->list_best(1, token);
    ASSERT_TRUE(one.ok()) << one.error().message;
    for (const auto& b : one->items) seen.push_back(b.scope.bucket.seq_q);
    skipped += one->skipped;
    token = one->next_page_token;
  } while (!token.empty());
  EXPECT_EQ(seen, (std::vector<int64_t>{256, 1024, 4096}));
  EXPECT_EQ(skipped, 2);

  // Its own key answers an error naming the row, never a guess; a new best
  // for the key replaces the damaged row, whatever its time said.
  auto damaged = db->best_for(scope_at(buckets[3]));
  ASSERT_FALSE(damaged.ok());
  EXPECT_EQ(damaged.error().code, ErrorCode::failed_precondition);
  EXPECT_NE(damaged.error().message.find("best row"), std::string::npos)
      << damaged.error().message;
  RawDb(path).exec("UPDATE best SET median_us = -1 WHERE seq_q_bucket = 4096");
  auto negative = db->best_for(scope_at(buckets[4]));
  ASSERT_FALSE(negative.ok());
  EXPECT_NE(negative.error().message.find("not a measured time"), std::string::npos);
  ASSERT_TRUE(*db->update_best_if_better(best_for_scope(scope_at(buckets[3]), TileConfig{}, 90.0),
                                         BestUpdate::force));
  ASSERT_TRUE(*db->update_best_if_better(best_for_scope(scope_at(buckets[4]), TileConfig{}, 90.0)));
  for (int i : {3, 4}) {
    auto repaired = db->best_for(scope_at(buckets[static_cast<size_t>(i)]));
    ASSERT_TRUE(repaired.ok()) << repaired.error().message;
    ASSERT_TRUE(repaired->has_value());
    EXPECT_DOUBLE_EQ((*repaired)->median_us, 90.0);
  }
}

TEST(TuningDb, ABestCarriesItsSpreadAndItsFullValidation) {
  auto db = open_ok(":memory:");
  ASSERT_NE(db, nullptr);
  BestRecord best = best_for_scope(scope_at(kBucket), TileConfig{128, 64, 4, 2}, 40.0);
  best.p10_us = 39.0;
  best.p90_us = 42.5;
  best.validated = true;
  best.validation_detail = "every row against fp64, 100 determinism runs, 10 stability trials";
  ASSERT_TRUE(*db->update_best_if_better(best));
  auto stored = db->best_for(scope_at(kBucket));
  ASSERT_TRUE(stored.ok() && stored->has_value());
  EXPECT_DOUBLE_EQ((*stored)->p10_us, 39.0);
  EXPECT_DOUBLE_EQ((*stored)->p90_us, 42.5);
  EXPECT_TRUE((*stored)->validated);
  EXPECT_EQ((*stored)->validation_detail, best.validation_detail);
  // A faster one replaces every field, these included.
  BestRecord faster = best_for_scope(scope_at(kBucket), TileConfig{64, 64, 4, 2}, 30.0);
  ASSERT_TRUE(*db->update_best_if_better(faster));
  auto now = db->best_for(scope_at(kBucket));
  ASSERT_TRUE(now.ok() && now->has_value());
  EXPECT_FALSE((*now)->validated);
  EXPECT_EQ((*now)->p90_us, 0.0);
}

TEST(TuningDb, SetTrialStatusRemarksATrialOfARunningJobOnly) {
  auto db = open_ok(":memory:");
  ASSERT_NE(db, nullptr);
  const TuningScope scope = scope_at(kBucket);
  auto job = db->begin_job(scope, "exhaustive", kToolchain);
  ASSERT_TRUE(job.ok());
  auto fast = db->record_trial(trial_for(scope, *job, TileConfig{64, 64, 4, 2}, 10.0));
  auto slow = db->record_trial(trial_for(scope, *job, TileConfig{128, 64, 4, 2}, 20.0));
  ASSERT_TRUE(fast.ok() && slow.ok());
  ASSERT_TRUE(db->set_trial_status(*fast, TrialStatus::wrong, "winner validation: tail").ok());
  // The job's best is then the fastest trial still ok.
  ASSERT_TRUE(db->finish_job(*job, JobStatus::succeeded).ok());
  auto row = db->job(*job);
  ASSERT_TRUE(row.ok() && row->has_value());
  EXPECT_EQ((*row)->best_trial_id, *slow);
  auto trials = db->trials_for_job(*job);
  ASSERT_TRUE(trials.ok());
  EXPECT_EQ((*trials)[0].status, TrialStatus::wrong);
  EXPECT_EQ((*trials)[0].failure_reason, "winner validation: tail");
  auto late = db->set_trial_status(*slow, TrialStatus::wrong, "too late");
  ASSERT_FALSE(late.ok());
  EXPECT_EQ(late.error().code, ErrorCode::failed_precondition);
  EXPECT_EQ(db->set_trial_status(9999, TrialStatus::wrong, "x").error().code,
            ErrorCode::not_found);
  // finish_job names the chosen trial where the job says which.
  auto other = db->begin_job(scope, "exhaustive", kToolchain);
  ASSERT_TRUE(other.ok());
  auto a = db->record_trial(trial_for(scope, *other, TileConfig{64, 64, 4, 2}, 10.0));
  auto b = db->record_trial(trial_for(scope, *other, TileConfig{128, 64, 4, 2}, 11.0));
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(db->finish_job(*other, JobStatus::succeeded, *b).ok());
  EXPECT_EQ((*db->job(*other))->best_trial_id, *b);
}

}  // namespace
}  // namespace flashcore
