// The kernel templates the jit knows: for each template id, the header that
// defines its kernel and how a (problem, config) becomes the NVRTC name
// expression that instantiates it. Adding a template is one entry in
// template_catalog.cpp.
#pragma once

#include <span>
#include <string>
#include <string_view>

#include "search/tile_config.hpp"

namespace flashcore {

struct TemplateInfo {
  std::string_view id;            // "attention_fwd"
  std::string_view entry_header;  // path under kernel_templates/
  std::string (*name_expression)(const ProblemClass& problem, const TileConfig& config);
};

std::span<const TemplateInfo> template_catalog();
const TemplateInfo* find_template(std::string_view id);  // nullptr when unknown

}  // namespace flashcore
