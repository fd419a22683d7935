#include "tuning/best_json.hpp"

#include "tuning/shape_bucket.hpp"

namespace flashcore {

using nlohmann::json;

std::string fleet_tuning_key(const TuningScope& scope, const ToolchainRecord& toolchain) {
  // '|' never occurs in any part (template ids, names, hex, versions).
  return scope.template_id + "|" + canonical_problem_class(scope.problem) + "|" +
         canonical_bucket(scope.bucket) + "|" + scope.device_name + "|" + scope.arch + "|nvrtc=" +
         toolchain.nvrtc_version + "|templates=" + toolchain.template_source_hash;
}

json best_to_json(const BestRecord& best) {
  return json{
      {"template_id", best.scope.template_id},
      {"dtype", dtype_name(best.scope.problem.dtype)},
      {"head_dim", best.scope.problem.head_dim},
      {"causal", best.scope.problem.causal},
      {"bucket", canonical_bucket(best.scope.bucket)},
      {"device", best.scope.device_name},
      {"arch", best.scope.arch},
      {"shape",
       {{"batch", best.shape.batch},
        {"heads", best.shape.heads},
        {"kv_heads", best.shape.kv_heads},
        {"seq_q", best.shape.seq_q},
        {"seq_k", best.shape.seq_k}}},
      {"config", config_label(best.config)},
      {"cache_key", best.cache_key},
      {"median_us", best.median_us},
      {"p10_us", best.p10_us},
      {"p90_us", best.p90_us},
      {"tflops", best.tflops},
      {"evaluations", best.evaluations},
      {"wall_seconds", best.wall_seconds},
      {"searcher", best.searcher},
      {"validated", best.validated},
      {"validation_detail", best.validation_detail},
      {"toolchain",
       {{"nvrtc_version", best.toolchain.nvrtc_version},
        {"template_source_hash", best.toolchain.template_source_hash},
        {"driver_version", best.toolchain.driver_version}}},
      {"updated_unix_ms", best.updated_unix_ms},
  };
}

std::optional<BestRecord> best_from_json(const json& doc, std::string* why) {
  std::string ignored;
  if (why == nullptr) why = &ignored;
  try {
    BestRecord best;
    best.scope.template_id = doc.at("template_id").get<std::string>();
    const auto dtype = parse_dtype(doc.at("dtype").get<std::string>());
    if (!dtype) {
      *why = "unknown dtype";
      return std::nullopt;
    }
    best.scope.problem.dtype = *dtype;
    best.scope.problem.head_dim = doc.at("head_dim").get<int>();
    best.scope.problem.causal = doc.at("causal").get<bool>();
    const auto bucket = parse_bucket(doc.at("bucket").get<std::string>());
    if (!bucket) {
      *why = "bucket '" + doc.at("bucket").get<std::string>() + "' does not parse";
      return std::nullopt;
    }
    best.scope.bucket = *bucket;
    best.scope.device_name = doc.at("device").get<std::string>();
    best.scope.arch = doc.at("arch").get<std::string>();
    const json& shape = doc.at("shape");
    best.shape.batch = shape.at("batch").get<int64_t>();
    best.shape.heads = shape.at("heads").get<int64_t>();
    best.shape.kv_heads = shape.at("kv_heads").get<int64_t>();
    best.shape.seq_q = shape.at("seq_q").get<int64_t>();
    best.shape.seq_k = shape.at("seq_k").get<int64_t>();
    const auto config = parse_config_label(doc.at("config").get<std::string>());
    if (!config) {
      *why = "config '" + doc.at("config").get<std::string>() + "' does not parse";
      return std::nullopt;
    }
    best.config = *config;
    best.cache_key = doc.at("cache_key").get<std::string>();
    best.median_us = doc.at("median_us").get<double>();
    best.p10_us = doc.value("p10_us", 0.0);
    best.p90_us = doc.value("p90_us", 0.0);
    best.tflops = doc.at("tflops").get<double>();
    best.evaluations = doc.at("evaluations").get<int64_t>();
    best.wall_seconds = doc.at("wall_seconds").get<double>();
    best.searcher = doc.at("searcher").get<std::string>();
    best.validated = doc.value("validated", false);
    best.validation_detail = doc.value("validation_detail", std::string());
    const json& toolchain = doc.at("toolchain");
    best.toolchain.nvrtc_version = toolchain.at("nvrtc_version").get<std::string>();
    best.toolchain.template_source_hash = toolchain.at("template_source_hash").get<std::string>();
    best.toolchain.driver_version = toolchain.value("driver_version", std::string());
    best.updated_unix_ms = doc.value("updated_unix_ms", int64_t{0});
    if (!(best.median_us > 0)) {
      *why = "median_us must be > 0";
      return std::nullopt;
    }
    return best;
  } catch (const json::exception& e) {
    *why = e.what();
    return std::nullopt;
  }
}

bool better_measured(const BestRecord& candidate, const BestRecord& current) {
  if (candidate.validated != current.validated) return candidate.validated;
  return candidate.median_us < current.median_us;
}

}  // namespace flashcore
