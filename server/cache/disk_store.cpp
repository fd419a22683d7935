#include "cache/disk_store.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <system_error>

#include "cache/atomic_file.hpp"
#include "cache/cache_key.hpp"
#include "common/digest.hpp"

namespace flashcore {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr std::string_view kMagic = "FCKERNEL";
constexpr std::string_view kExtension = ".fck";
constexpr size_t kDigestChars = 64;  // hex SHA-256
// magic, u32 format version, u32 metadata length, u64 cubin length, digest
constexpr size_t kHeaderBytes = 8 + 4 + 4 + 8 + kDigestChars;

struct Header {
  uint32_t version = 0;
  uint32_t metadata_length = 0;
  uint64_t cubin_length = 0;
  std::string digest;
};

// Little-endian on disk whatever the host, so a cache folder can move.
template <typename T>
void put_le(std::string& out, T value) {
  for (size_t i = 0; i < sizeof(T); ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}

template <typename T>
T get_le(std::string_view bytes, size_t offset) {
  T value = 0;
  for (size_t i = 0; i < sizeof(T); ++i)
    value |= static_cast<T>(static_cast<unsigned char>(bytes[offset + i])) << (8 * i);
  return value;
}

std::string body_digest(std::string_view metadata, std::string_view cubin) {
  std::string body;
  body.reserve(metadata.size() + cubin.size());
  body.append(metadata).append(cubin);
  return sha256_hex(body);
}

// Checks the header alone; `total_size` is the whole file's size.
std::optional<Header> parse_header(std::string_view bytes, uint64_t total_size, std::string* why) {
  if (bytes.size() < kHeaderBytes) {
    *why = "shorter than the " + std::to_string(kHeaderBytes) + "-byte header";
    return std::nullopt;
  }
  if (bytes.substr(0, kMagic.size()) != kMagic) {
    *why = "bad magic";
    return std::nullopt;
  }
  Header header;
  header.version = get_le<uint32_t>(bytes, 8);
  header.metadata_length = get_le<uint32_t>(bytes, 12);
  header.cubin_length = get_le<uint64_t>(bytes, 16);
  header.digest = std::string(bytes.substr(24, kDigestChars));
  if (header.version != kCacheFormatVersion) {
    *why = "format version " + std::to_string(header.version) + ", expected " +
           std::to_string(kCacheFormatVersion);
    return std::nullopt;
  }
  // Compared by subtraction so a huge length in a damaged header cannot overflow.
  const uint64_t body = total_size - kHeaderBytes;
  if (header.metadata_length > body || header.cubin_length != body - header.metadata_length) {
    *why = "lengths (metadata " + std::to_string(header.metadata_length) + ", cubin " +
           std::to_string(header.cubin_length) + ") do not match the file size " +
           std::to_string(total_size);
    return std::nullopt;
  }
  return header;
}

json metadata_json(const CachedKernel& entry) {
  const auto& c = entry.compiled;
  const auto& r = c.resources;
  json doc = json{
      {"key", entry.key},
      {"spec",
       {{"template_id", entry.spec.template_id},
        {"dtype", dtype_name(entry.spec.problem.dtype)},
        {"head_dim", entry.spec.problem.head_dim},
        {"causal", entry.spec.problem.causal},
        {"block_m", entry.spec.config.block_m},
        {"block_n", entry.spec.config.block_n},
        {"warps", entry.spec.config.warps},
        {"stages", entry.spec.config.stages},
        {"q_placement", q_placement_name(entry.spec.config.q_placement)},
        {"smem_layout", smem_layout_name(entry.spec.config.smem_layout)},
        {"arch", entry.spec.arch}}},
      {"first_shape",
       {{"batch", entry.first_shape.batch},
        {"heads", entry.first_shape.heads},
        {"kv_heads", entry.first_shape.kv_heads},
        {"seq_q", entry.first_shape.seq_q},
        {"seq_k", entry.first_shape.seq_k}}},
      {"compiled",
       {{"name_expression", c.name_expression},
        {"lowered_name", c.lowered_name},
        {"compile_ms", c.compile_ms},
        {"resources",
         {{"registers", r.registers},
          {"static_smem_bytes", r.static_smem_bytes},
          {"spill_store_bytes", r.spill_store_bytes},
          {"spill_load_bytes", r.spill_load_bytes},
          {"stack_frame_bytes", r.stack_frame_bytes},
          {"constant_bytes", r.constant_bytes},
          {"ptxas_log", r.ptxas_log}}},
        {"toolchain",
         {{"nvrtc_version", c.toolchain.nvrtc_version},
          {"template_source_hash", c.toolchain.template_source_hash},
          {"options", c.toolchain.options}}}}},
      {"created_unix_ms", entry.created_unix_ms},
  };
  // The other families' config fields, only when set: entries of the sm80
  // family read the same as before they existed.
  json& config = doc["spec"];
  const TileConfig& t = entry.spec.config;
  if (t.pingpong) config["pingpong"] = true;
  if (t.separate_o) config["separate_o"] = true;
  if (t.persistent) config["persistent"] = true;
  if (t.fused_combine) config["fused_combine"] = true;
  if (t.splits != 0) config["splits"] = t.splits;
  if (entry.spec.line_info) config["line_info"] = true;
  if (!c.extra_kernels.empty()) {
    json extra = json::array();
    for (const auto& [name, lowered] : c.extra_kernels)
      extra.push_back(json{{"name_expression", name}, {"lowered_name", lowered}});
    doc["compiled"]["extra_kernels"] = std::move(extra);
  }
  return doc;
}

// Fills everything but the cubin; nlohmann throws on a missing field or a
// wrong type, which the caller reports as corruption.
std::optional<CachedKernel> parse_metadata(std::string_view text, std::string* why) {
  json doc = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object()) {
    *why = "metadata is not a JSON object";
    return std::nullopt;
  }
  try {
    CachedKernel entry;
    entry.key = doc.at("key").get<std::string>();
    const json& spec = doc.at("spec");
    entry.spec.template_id = spec.at("template_id").get<std::string>();
    const auto dtype = parse_dtype(spec.at("dtype").get<std::string>());
    if (!dtype) {
      *why = "metadata has an unknown dtype";
      return std::nullopt;
    }
    entry.spec.problem.dtype = *dtype;
    entry.spec.problem.head_dim = spec.at("head_dim").get<int>();
    entry.spec.problem.causal = spec.at("causal").get<bool>();
    entry.spec.config.block_m = spec.at("block_m").get<int>();
    entry.spec.config.block_n = spec.at("block_n").get<int>();
    entry.spec.config.warps = spec.at("warps").get<int>();
    entry.spec.config.stages = spec.at("stages").get<int>();
    const auto q_placement = parse_q_placement(spec.at("q_placement").get<std::string>());
    const auto smem_layout = parse_smem_layout(spec.at("smem_layout").get<std::string>());
    if (!q_placement || !smem_layout) {
      *why = "metadata has an unknown q_placement or smem_layout";
      return std::nullopt;
    }
    entry.spec.config.q_placement = *q_placement;
    entry.spec.config.smem_layout = *smem_layout;
    entry.spec.config.pingpong = spec.value("pingpong", false);
    entry.spec.config.separate_o = spec.value("separate_o", false);
    entry.spec.config.persistent = spec.value("persistent", false);
    entry.spec.config.fused_combine = spec.value("fused_combine", false);
    entry.spec.config.splits = spec.value("splits", 0);
    entry.spec.arch = spec.at("arch").get<std::string>();
    entry.spec.line_info = spec.value("line_info", false);

    const json& shape = doc.at("first_shape");
    entry.first_shape.batch = shape.at("batch").get<int64_t>();
    entry.first_shape.heads = shape.at("heads").get<int64_t>();
    entry.first_shape.kv_heads = shape.at("kv_heads").get<int64_t>();
    entry.first_shape.seq_q = shape.at("seq_q").get<int64_t>();
    entry.first_shape.seq_k = shape.at("seq_k").get<int64_t>();

    const json& compiled = doc.at("compiled");
    auto& c = entry.compiled;
    c.name_expression = compiled.at("name_expression").get<std::string>();
    c.lowered_name = compiled.at("lowered_name").get<std::string>();
    if (compiled.contains("extra_kernels"))
      for (const json& k : compiled.at("extra_kernels"))
        c.extra_kernels.emplace_back(k.at("name_expression").get<std::string>(),
                                     k.at("lowered_name").get<std::string>());
    c.compile_ms = compiled.at("compile_ms").get<double>();
    const json& res = compiled.at("resources");
    c.resources.registers = res.at("registers").get<int>();
    c.resources.static_smem_bytes = res.at("static_smem_bytes").get<int>();
    c.resources.spill_store_bytes = res.at("spill_store_bytes").get<int>();
    c.resources.spill_load_bytes = res.at("spill_load_bytes").get<int>();
    c.resources.stack_frame_bytes = res.at("stack_frame_bytes").get<int>();
    c.resources.constant_bytes = res.at("constant_bytes").get<int>();
    c.resources.ptxas_log = res.at("ptxas_log").get<std::string>();
    const json& tool = compiled.at("toolchain");
    c.toolchain.nvrtc_version = tool.at("nvrtc_version").get<std::string>();
    c.toolchain.template_source_hash = tool.at("template_source_hash").get<std::string>();
    c.toolchain.options = tool.at("options").get<std::vector<std::string>>();

    entry.created_unix_ms = doc.at("created_unix_ms").get<int64_t>();
    return entry;
  } catch (const json::exception& e) {
    *why = std::string("metadata: ") + e.what();
    return std::nullopt;
  }
}

enum class ReadOutcome { ok, absent, failed };

// Reads at most `max_bytes` from the start of the file.
ReadOutcome read_prefix(const fs::path& path, size_t max_bytes, std::string* out,
                        std::string* why) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::error_code ec;
    if (!fs::exists(path, ec)) return ReadOutcome::absent;
    *why = std::string("cannot open: ") + std::strerror(errno);
    return ReadOutcome::failed;
  }
  out->resize(max_bytes);
  in.read(out->data(), static_cast<std::streamsize>(max_bytes));
  if (in.bad()) {
    *why = "read error";
    return ReadOutcome::failed;
  }
  out->resize(static_cast<size_t>(in.gcount()));
  return ReadOutcome::ok;
}

// Calls visit(file) for every file in the two-character shard folders under
// root, skipping what cannot be read (the start scan, listings and clear walk
// the folder this way).
template <typename Visit>
void for_each_shard_file(const fs::path& root, Visit visit) {
  std::error_code ec;
  for (fs::directory_iterator shards(root, ec), end; !ec && shards != end; shards.increment(ec)) {
    std::error_code entry_ec;
    if (!shards->is_directory(entry_ec) || shards->path().filename().string().size() != 2) continue;
    for (fs::directory_iterator files(shards->path(), entry_ec); !entry_ec && files != end;
         files.increment(entry_ec))
      visit(files->path());
  }
}

}  // namespace

DiskStore::DiskStore(fs::path root, uint64_t max_bytes)
    : root_(std::move(root)), max_bytes_(max_bytes) {
  scan();
}

void DiskStore::scan() {
  // Temp files are written next to their entry and renamed over it; one
  // older than this start (with a minute's grace for a concurrent writer
  // sharing the folder) belongs to a writer that died.
  const auto stale_before = fs::file_time_type::clock::now() - std::chrono::minutes(1);
  std::lock_guard lock(index_mutex_);
  for_each_shard_file(root_, [&](const fs::path& file) {
    std::error_code file_ec;
    const auto time = fs::last_write_time(file, file_ec);
    if (file_ec) return;
    const std::string name = file.filename().string();
    if (name.find(".tmp.") != std::string::npos) {
      if (time < stale_before && fs::remove(file, file_ec)) ++stale_temps_removed_;
      return;
    }
    if (file.extension() != kExtension) return;
    const std::string key = file.stem().string();
    if (!is_well_formed_key(key)) return;
    const auto size = fs::file_size(file, file_ec);
    if (file_ec) return;
    index_[key] = Indexed{size, time};
    total_bytes_ += size;
  });
  if (stale_temps_removed_ > 0)
    spdlog::info("cache folder {}: removed {} temp files a crashed writer left", root_.string(),
                 stale_temps_removed_);
  if (max_bytes_ > 0) evicted_ += evict_to_fit("", max_bytes_).entries_removed;
}

uint64_t DiskStore::bytes() const {
  std::lock_guard lock(index_mutex_);
  return total_bytes_;
}

void DiskStore::forget(const std::string& key) {
  std::lock_guard lock(index_mutex_);
  auto it = index_.find(key);
  if (it == index_.end()) return;
  total_bytes_ -= it->second.size;
  index_.erase(it);
}

TierRemoval DiskStore::evict_to_fit(const std::string& keep_key, uint64_t limit) {
  TierRemoval removal;
  while (total_bytes_ > limit) {
    auto oldest = index_.end();
    for (auto it = index_.begin(); it != index_.end(); ++it)
      if (it->first != keep_key && (oldest == index_.end() || it->second.used < oldest->second.used))
        oldest = it;
    if (oldest == index_.end()) break;  // only the entry just stored: it stays
    remove_indexed(oldest->first, removal);
  }
  return removal;
}

bool DiskStore::remove_indexed(const std::string& key, TierRemoval& removal) {
  auto it = index_.find(key);
  if (it == index_.end()) return false;
  std::error_code ec;
  const bool removed = fs::remove(path_for(key), ec);
  if (ec) spdlog::warn("cache entry {}: cannot remove: {}", path_for(key).string(), ec.message());
  if (removed) {
    ++removal.entries_removed;
    removal.bytes_removed += it->second.size;
  }
  // Forgotten either way, so an eviction loop always ends; a file that could
  // not be unlinked is found again by the next scan or load.
  total_bytes_ -= it->second.size;
  index_.erase(it);
  return removed;
}

void DiskStore::index_if_present(const std::string& key, uint64_t size,
                                 fs::file_time_type used) {
  std::error_code ec;
  if (!fs::exists(path_for(key), ec)) return;  // removed since it was written or read
  auto [it, inserted] = index_.try_emplace(key, Indexed{0, used});
  total_bytes_ = total_bytes_ - it->second.size + size;
  it->second = Indexed{size, used};
}

TierRemoval DiskStore::left(TierRemoval removal) const {
  removal.entries_left = index_.size();
  removal.bytes_left = total_bytes_;
  return removal;
}

TierRemoval DiskStore::clear() {
  std::lock_guard lock(index_mutex_);
  // Entry files this store has not indexed (another daemon sharing the
  // folder wrote them) go too; temp files (".tmp.") belong to writers in flight.
  for_each_shard_file(root_, [&](const fs::path& file) {
    const std::string key = file.stem().string();
    if (file.extension() != kExtension || !is_well_formed_key(key) || index_.contains(key)) return;
    std::error_code file_ec;
    const auto size = fs::file_size(file, file_ec);
    if (!file_ec) index_if_present(key, size, fs::file_time_type::clock::now());
  });
  TierRemoval removal;
  std::vector<std::string> keys;
  keys.reserve(index_.size());
  for (const auto& [key, indexed] : index_) keys.push_back(key);
  for (const auto& key : keys) remove_indexed(key, removal);
  return left(removal);
}

TierRemoval DiskStore::erase(const std::string& key) {
  TierRemoval removal;
  std::lock_guard lock(index_mutex_);
  if (is_well_formed_key(key)) {
    std::error_code ec;
    const auto size = fs::file_size(path_for(key), ec);
    if (!ec && !index_.contains(key)) index_if_present(key, size, fs::file_time_type::clock::now());
    remove_indexed(key, removal);
  }
  return left(removal);
}

TierRemoval DiskStore::trim_to(uint64_t max_bytes) {
  std::lock_guard lock(index_mutex_);
  return left(evict_to_fit("", max_bytes));
}

fs::path DiskStore::path_for(const std::string& key) const {
  return root_ / key.substr(0, 2) / (key + std::string(kExtension));
}

std::string DiskStore::encode(const CachedKernel& entry) {
  const std::string metadata = metadata_json(entry).dump();
  const std::string& cubin = entry.compiled.cubin;
  std::string out;
  out.reserve(kHeaderBytes + metadata.size() + cubin.size());
  out.append(kMagic);
  put_le<uint32_t>(out, kCacheFormatVersion);
  put_le<uint32_t>(out, static_cast<uint32_t>(metadata.size()));
  put_le<uint64_t>(out, cubin.size());
  out.append(body_digest(metadata, cubin));
  out.append(metadata);
  out.append(cubin);
  return out;
}

std::optional<CachedKernel> DiskStore::decode(std::string_view bytes, std::string* why) {
  std::string ignored;
  if (why == nullptr) why = &ignored;
  auto header = parse_header(bytes, bytes.size(), why);
  if (!header) return std::nullopt;
  const std::string_view metadata = bytes.substr(kHeaderBytes, header->metadata_length);
  const std::string_view cubin = bytes.substr(kHeaderBytes + header->metadata_length);
  if (body_digest(metadata, cubin) != header->digest) {
    *why = "checksum mismatch";
    return std::nullopt;
  }
  auto entry = parse_metadata(metadata, why);
  if (!entry) return std::nullopt;
  entry->compiled.cubin = std::string(cubin);
  entry->cubin_size = cubin.size();
  return entry;
}

std::optional<CachedKernel> DiskStore::load(const std::string& key) {
  if (!is_well_formed_key(key)) return std::nullopt;
  const fs::path path = path_for(key);
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  if (ec) {
    // ENOTDIR: the cache folder (or a shard) is a file, already reported
    // once by store(); either way nothing is cached here.
    if (ec == std::errc::no_such_file_or_directory || ec == std::errc::not_a_directory)
      return std::nullopt;
    spdlog::warn("cache entry {}: cannot stat: {}", path.string(), ec.message());
    return std::nullopt;
  }
  std::string bytes, why;
  switch (read_prefix(path, size, &bytes, &why)) {
    case ReadOutcome::absent:
      return std::nullopt;  // removed since the stat: a miss like any other
    case ReadOutcome::failed:
      // Unreadable is not corrupt: leave the file for whoever can read it.
      spdlog::warn("cache entry {}: {}", path.string(), why);
      return std::nullopt;
    case ReadOutcome::ok:
      break;
  }
  auto entry = decode(bytes, &why);
  if (entry && entry->key != key) {
    why = "metadata names key " + entry->key;
    entry.reset();
  }
  if (!entry) {
    spdlog::warn("cache entry {} is unusable ({}); removing it", path.string(), why);
    fs::remove(path, ec);
    ++corrupt_;
    forget(key);
    return std::nullopt;
  }
  // A hit is a use: the file time orders eviction, now and after a restart.
  const auto now = fs::file_time_type::clock::now();
  fs::last_write_time(path, now, ec);
  {
    std::lock_guard lock(index_mutex_);
    index_if_present(key, size, now);
  }
  return entry;
}

Status DiskStore::store(const CachedKernel& entry) {
  if (!is_well_formed_key(entry.key))
    return make_error(ErrorCode::invalid_argument, "malformed cache key '" + entry.key + "'");
  const fs::path path = path_for(entry.key);
  const std::string bytes = encode(entry);
  Status written = write_file_atomically(path, bytes);
  if (written.ok()) {
    std::lock_guard lock(index_mutex_);
    index_if_present(entry.key, bytes.size(), fs::file_time_type::clock::now());
    if (max_bytes_ > 0) evicted_ += evict_to_fit(entry.key, max_bytes_).entries_removed;
  }
  if (!written.ok()) {
    std::call_once(unwritable_logged_, [&] {
      spdlog::warn("cache folder {} is not writable ({}); kernels stay cached in memory only",
                   root_.string(), written.error().message);
    });
  }
  return written;
}

std::vector<CachedKernel> DiskStore::list(const std::string& after_key, size_t limit) {
  std::vector<CachedKernel> out;
  if (limit == 0) return out;

  // Keys from file names first; only the page's entries are then opened.
  std::vector<std::string> keys;
  for_each_shard_file(root_, [&](const fs::path& file) {
    if (file.extension() != kExtension) return;  // temp files end in .tmp.<pid>.<n>
    const std::string key = file.stem().string();
    const std::string shard = file.parent_path().filename().string();
    if (is_well_formed_key(key) && key.compare(0, 2, shard) == 0 && key > after_key)
      keys.push_back(key);
  });
  std::sort(keys.begin(), keys.end());
  std::error_code ec;

  for (const auto& key : keys) {
    if (out.size() >= limit) break;
    const fs::path path = path_for(key);
    const auto size = fs::file_size(path, ec);
    if (ec) continue;  // removed since the listing
    // Header and metadata only: a listing should not read every cubin. The
    // checksum over the body is verified when the entry is loaded.
    std::string bytes, why;
    if (read_prefix(path, kHeaderBytes, &bytes, &why) != ReadOutcome::ok) continue;
    std::optional<CachedKernel> entry;
    if (auto header = parse_header(bytes, size, &why)) {
      std::string metadata;
      if (read_prefix(path, kHeaderBytes + header->metadata_length, &metadata, &why) !=
          ReadOutcome::ok)
        continue;
      if (metadata.size() == kHeaderBytes + header->metadata_length) {
        entry = parse_metadata(std::string_view(metadata).substr(kHeaderBytes), &why);
        if (entry && entry->key != key) {
          why = "metadata names key " + entry->key;
          entry.reset();
        }
        if (entry) entry->cubin_size = header->cubin_length;
      } else {
        why = "truncated metadata";
      }
    }
    if (!entry) {
      spdlog::warn("cache entry {} is unusable ({}); removing it", path.string(), why);
      fs::remove(path, ec);
      forget(key);
      ++corrupt_;
      continue;
    }
    out.push_back(std::move(*entry));
  }
  return out;
}

}  // namespace flashcore
