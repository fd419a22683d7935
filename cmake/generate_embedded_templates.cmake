# Script mode: writes OUTPUT, a C++ source defining
#   const std::map<std::string, std::string>& flashcore::embedded_template_sources();
# with every template file keyed by its path under TEMPLATE_DIR. Contents go
# in as hex byte arrays so no character in a source can break the literal.
file(GLOB_RECURSE files RELATIVE ${TEMPLATE_DIR}
  ${TEMPLATE_DIR}/*.cuh ${TEMPLATE_DIR}/*.cu ${TEMPLATE_DIR}/*.h)
list(SORT files)
set(body "")
set(entries "")
set(i 0)
foreach(rel ${files})
  file(READ ${TEMPLATE_DIR}/${rel} hex HEX)
  string(LENGTH "${hex}" hex_len)
  math(EXPR len "${hex_len} / 2")
  string(REGEX REPLACE "([0-9a-f][0-9a-f])" "'\\\\x\\1'," bytes "${hex}")
  string(APPEND body "static const char kSource${i}[] = {${bytes} 0};\n")
  string(APPEND entries "      {\"${rel}\", std::string(kSource${i}, ${len})},\n")
  math(EXPR i "${i} + 1")
endforeach()
file(WRITE ${OUTPUT}.tmp
"// Generated from kernel_templates/ by cmake/generate_embedded_templates.cmake.
#include <map>
#include <string>

namespace flashcore {
namespace {
${body}}  // namespace

const std::map<std::string, std::string>& embedded_template_sources() {
  static const std::map<std::string, std::string> sources = {
${entries}  };
  return sources;
}

}  // namespace flashcore
")
file(COPY_FILE ${OUTPUT}.tmp ${OUTPUT} ONLY_IF_DIFFERENT)
file(REMOVE ${OUTPUT}.tmp)
