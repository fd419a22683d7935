#include "family/template_catalog.hpp"

#include <array>
#include <cstdlib>

#include "common/attention_params.cuh"
#include "common/attention_tma_params.cuh"
#include "decode/decode_params.cuh"
#include "family/attention_decode.hpp"
#include "family/attention_sm90.hpp"

namespace flashcore {
namespace {

TileConfig sm80_default_config(const ProblemClass& problem) { return resolved(TileConfig{}, problem); }
TileConfig as_given(const TileConfig& config, const ProblemClass&) { return config; }

}  // namespace

std::span<const TemplateInfo> template_catalog() {
  static constexpr std::array<TemplateInfo, 3> catalog = {{
      {kAttentionTemplateId, "attention/attention_fwd.cuh", &name_expression, &config_error,
       &smem_bytes, &launch_geometry, &grid_formula, &sm80_default_config, &resolved,
       FLASHCORE_ATTENTION_ABI_VERSION},
      {sm90_family::kTemplateId, "hopper/attention_fwd_sm90.cuh", &sm90_family::name_expression,
       &sm90_family::config_error, &sm90_family::smem_bytes, &sm90_family::launch_geometry,
       &sm90_family::grid_formula, &sm90_family::default_config, &as_given,
       FLASHCORE_ATTENTION_TMA_ABI_VERSION, nullptr, nullptr, nullptr, nullptr,
       &sm90_family::search_seeds},
      {decode_family::kTemplateId, "decode/attention_decode.cuh",
       &decode_family::catalog::name_expression, &decode_family::catalog::config_error,
       &decode_family::catalog::smem_bytes, &decode_family::catalog::launch_geometry,
       &decode_family::catalog::grid_formula, &decode_family::catalog::default_config, &as_given,
       decode_family::kAbiVersion, &decode_family::catalog::extra_name_expressions,
       &decode_family::catalog::default_config_for, &decode_family::catalog::shape_error,
       &decode_family::catalog::search_skip, &decode_family::catalog::search_seeds},
  }};
  return catalog;
}

const TemplateInfo* find_template(std::string_view id) {
  for (const auto& info : template_catalog())
    if (info.id == id) return &info;
  return nullptr;
}

const TemplateInfo& template_info(std::string_view id) {
  const TemplateInfo* info = find_template(id);
  if (info == nullptr) std::abort();  // ids are validated where requests are parsed
  return *info;
}

std::optional<std::string> shape_misfit(std::string_view id, const TileConfig& config,
                                        const ProblemClass& problem, const RuntimeShape& shape) {
  const TemplateInfo& family = template_info(id);
  if (family.shape_error == nullptr) return std::nullopt;
  return family.shape_error(config, problem, shape);
}

std::vector<std::string_view> prefill_families(const ProblemClass& problem,
                                               std::string_view arch) {
  std::vector<std::string_view> families;
  const auto hopper = find_arch(arch);
  if (hopper && arch == "sm_90a" &&
      !template_info(sm90_family::kTemplateId)
           .config_error(template_info(sm90_family::kTemplateId).default_config(problem), problem,
                         *hopper))
    families.push_back(sm90_family::kTemplateId);
  families.push_back(kAttentionTemplateId);
  return families;
}

}  // namespace flashcore
