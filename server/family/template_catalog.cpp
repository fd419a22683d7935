#include "jit/template_catalog.hpp"

#include <array>

namespace flashcore {

std::span<const TemplateInfo> template_catalog() {
  static constexpr std::array<TemplateInfo, 1> catalog = {{
      {kAttentionTemplateId, "attention/attention_fwd.cuh", &name_expression},
  }};
  return catalog;
}

const TemplateInfo* find_template(std::string_view id) {
  for (const auto& info : template_catalog())
    if (info.id == id) return &info;
  return nullptr;
}

}  // namespace flashcore
