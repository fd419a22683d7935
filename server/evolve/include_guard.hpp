// What a submitted source may include: only the daemon's own template
// headers, named exactly as the registry names them. NVRTC would otherwise
// open any path the preprocessor is given (#include "/etc/passwd" reads the
// file and echoes it in the error log), so every preprocessing directive that
// can open a file is checked before the source reaches a compile worker.
#pragma once

#include <optional>
#include <set>
#include <string>
#include <string_view>

namespace flashcore::evolve {

// nullopt when every #include (also spelt %:include, #include_next, #import,
// #embed, and __has_include) names a header in `allowed` with a quoted or
// angled literal; else a one-line reason naming the line, e.g.
// "line 3: #include \"/etc/passwd\": absolute paths are not allowed".
// Computed includes (#include MACRO) and trigraphs are refused.
std::optional<std::string> include_error(std::string_view source,
                                         const std::set<std::string, std::less<>>& allowed);

}  // namespace flashcore::evolve
