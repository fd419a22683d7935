#include "evolve/include_guard.hpp"

#include <gtest/gtest.h>

namespace flashcore::evolve {
namespace {

const std::set<std::string, std::less<>> kAllowed = {"common/attention_params.cuh",
                                                     "common/element_types.cuh"};

std::string reason(const std::string& source) {
  auto error = include_error(source, kAllowed);
  return error ? *error : "";
}

TEST(IncludeGuardTest, TemplateHeadersAreAllowed) {
  EXPECT_EQ(reason("#include \"common/attention_params.cuh\"\n#include <common/element_types.cuh>\n"), "");
  EXPECT_EQ(reason("  #  include   \"common/attention_params.cuh\"  // why\n"), "");
  EXPECT_EQ(reason("#pragma once\n#pragma unroll\nint x = 1'000'000;\n"), "");
  // Directive-looking text inside comments, strings and raw strings is not a directive.
  EXPECT_EQ(reason("// #include \"/etc/passwd\"\n/*\n#include \"/etc/passwd\"\n*/\n"), "");
  EXPECT_EQ(reason("const char* s = \"#include </etc/passwd>\";\n"), "");
  EXPECT_EQ(reason("const char* r = R\"x(\n#include \"/etc/passwd\"\n)x\";\n"), "");
}

TEST(IncludeGuardTest, EveryWayToNameAnotherFileIsRefused) {
  EXPECT_NE(reason("#include \"/etc/passwd\"").find("line 1: #include \"/etc/passwd\": absolute paths are not allowed"),
            std::string::npos);
  EXPECT_NE(reason("\n\n#include <../x.h>\n").find("line 3"), std::string::npos);
  EXPECT_NE(reason("#include \"common/../common/attention_params.cuh\"").find("'..'"), std::string::npos);
  EXPECT_NE(reason("#define H <x>\n#include H\n").find("no macros"), std::string::npos);
  EXPECT_NE(reason("%:include \"/etc/passwd\"").find("absolute"), std::string::npos);
  EXPECT_NE(reason("??=include \"/etc/passwd\"").find("trigraphs"), std::string::npos);
  EXPECT_NE(reason("#\\\ninclude \"/etc/passwd\"").find("absolute"), std::string::npos);
  EXPECT_NE(reason("/* x */ #include \"/etc/shadow\"").find("absolute"), std::string::npos);
  EXPECT_NE(reason("/* one\ntwo */ #include \"/etc/shadow\"").find("line 2"), std::string::npos);
  EXPECT_NE(reason("#import \"/etc/passwd\"").find("#import"), std::string::npos);
  EXPECT_NE(reason("#embed \"/etc/passwd\"").find("#embed"), std::string::npos);
  EXPECT_NE(reason("#include_next <stdio.h>").find("not one of"), std::string::npos);
  EXPECT_NE(reason("#include \"stdio.h\"").find("not one of"), std::string::npos);
  EXPECT_NE(reason("#if __has_include(<x>)\n#endif").find("__has_include"), std::string::npos);
  EXPECT_NE(reason("#pragma GCC dependency \"/etc/passwd\"").find("dependency"), std::string::npos);
  EXPECT_NE(reason("#define P(x) _Pragma(#x)\nP(GCC dependency \"/etc/passwd\")").find("dependency"),
            std::string::npos);
  EXPECT_NE(reason("#include \"C:\\\\x\"").find("backslash"), std::string::npos);
  EXPECT_NE(reason(std::string("int a;\0#include \"/etc/passwd\"", 30)).find("NUL"), std::string::npos);
  // An identifier ending in R before a quote is no raw string: the line after is seen.
  EXPECT_NE(reason("int fooLR = 0; const char* s = fooLR\"x(\";\n#include \"/etc/passwd\"\n)x\";").find("absolute"),
            std::string::npos);
  // A raw string in a comment does not hide the next line.
  EXPECT_NE(reason("// R\"x(\n#include \"/etc/passwd\"\n// )x\"").find("line 2"), std::string::npos);
}

}  // namespace
}  // namespace flashcore::evolve
