// The kernel families by template id: for each, the header that defines its
// kernel and the functions that define its configs (validity, NVRTC name
// expression, shared memory, launch geometry, default) and its ABI version.
// Everything that compiles, launches or evaluates a kernel asks here, so
// adding a family is one entry in template_catalog.cpp.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "family/tile_config.hpp"

namespace flashcore {

struct TemplateInfo {
  std::string_view id;            // "attention_fwd"
  std::string_view entry_header;  // path under kernel_templates/
  std::string (*name_expression)(const ProblemClass& problem, const TileConfig& config);
  std::optional<std::string> (*config_error)(const TileConfig& config, const ProblemClass& problem,
                                             const ArchInfo& arch);
  int (*smem_bytes)(const TileConfig& config, const ProblemClass& problem);
  LaunchGeometry (*launch_geometry)(const TileConfig& config, const ProblemClass& problem,
                                    const RuntimeShape& shape);
  std::string (*grid_formula)(const TileConfig& config);
  TileConfig (*default_config)(const ProblemClass& problem);
  // The config with its automatic fields replaced by the family's rule (the
  // identity where a family has none); keys and handles hold the result.
  TileConfig (*resolve)(const TileConfig& config, const ProblemClass& problem);
  unsigned abi_version;  // 1: AttentionParams; 2: AttentionTmaParams; 3: DecodeParams
  // Multi-kernel families only (null otherwise): the program's further
  // kernels, a default that depends on the run-time shape, and the check
  // that a shape fits a compiled config ("<field>: <reason>").
  std::vector<std::string> (*extra_name_expressions)(const ProblemClass& problem,
                                                     const TileConfig& config) = nullptr;
  TileConfig (*default_config_for)(const ProblemClass& problem, const RuntimeShape& shape,
                                   const ArchInfo& arch) = nullptr;
  std::optional<std::string> (*shape_error)(const TileConfig& config, const ProblemClass& problem,
                                            const RuntimeShape& shape) = nullptr;
  // Configs that fit the shape but that a search for it leaves out, with why
  // (decode: packed tiles larger than the shape's rows only add idle rows).
  std::optional<std::string> (*search_skip)(const TileConfig& config, const ProblemClass& problem,
                                            const RuntimeShape& shape) = nullptr;
  // Configs a search for the shape tries right after the default: ones that
  // won on some shapes in the family's measurements (those that do not fit
  // are dropped by the search).
  std::vector<TileConfig> (*search_seeds)(const ProblemClass& problem, const RuntimeShape& shape,
                                          const ArchInfo& arch) = nullptr;
};

std::span<const TemplateInfo> template_catalog();
const TemplateInfo* find_template(std::string_view id);  // nullptr when unknown
// The entry for `id`, which the caller has already validated (an unknown id
// is a programming error here).
const TemplateInfo& template_info(std::string_view id);

// Why `config` of family `id` cannot run `shape` ("<field>: <reason>"), for
// the families whose configs fit only some shapes (decode: the packed rows);
// nullopt where it can, or where the family's configs fit every shape. A
// tuned best is kept per bucket, and one bucket holds decode shapes of up to
// twice as many rows as the one it was tuned on.
std::optional<std::string> shape_misfit(std::string_view id, const TileConfig& config,
                                        const ProblemClass& problem, const RuntimeShape& shape);

// The families that compute the same whole-sequence attention for `problem`
// on `arch`, the one served by default first: on sm_90a the Hopper family
// (where it has the head dim) and the sm80 family; elsewhere the sm80 family
// alone. A Tune that names no family searches them together, and
// use_tuned_config serves the one whose stored best is faster by more than
// the spread (the first one otherwise).
std::vector<std::string_view> prefill_families(const ProblemClass& problem,
                                               std::string_view arch);

}  // namespace flashcore
