#include "evolve/include_guard.hpp"

#include <cctype>
#include <optional>
#include <string>
#include <vector>

namespace flashcore::evolve {
namespace {

// One logical source line (backslash-newlines spliced, comments replaced by
// a space, string and character literals kept), with its first physical line.
struct Line {
  int number = 1;
  std::string text;
};

bool ident_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }

// Splits a source into logical lines (logical_lines below), one character at
// a time: a small state machine with the physical line count beside it.
class LineSplitter {
 public:
  explicit LineSplitter(std::string_view s) : s_(s), lines_(1) {}

  std::vector<Line> run() {
    for (size_t i = 0; i < s_.size(); ++i) {
      if (splice(i)) continue;
      if (s_[i] == '\n') {
        end_line();
        continue;
      }
      switch (state_) {
        case State::code:
          i = code(i);
          break;
        case State::block_comment:
          if (s_[i] == '*' && next_is(i, '/')) {
            state_ = State::code;
            ++i;
          }
          break;
        case State::line_comment:
          break;
        case State::string:
        case State::character:
          i = literal(i);
          break;
      }
    }
    return std::move(lines_);
  }

 private:
  enum class State { code, block_comment, line_comment, string, character };

  void emit(char c) { lines_.back().text.push_back(c); }
  bool next_is(size_t i, char c) const { return i + 1 < s_.size() && s_[i + 1] == c; }

  // Line splice: \ newline (or \ CR LF) joins two physical lines; `i` is
  // left on the splice's last character.
  bool splice(size_t& i) {
    if (!(s_[i] == '\\' && i + 1 < s_.size() && (s_[i + 1] == '\n' || s_[i + 1] == '\r')))
      return false;
    i += (s_[i + 1] == '\r' && i + 2 < s_.size() && s_[i + 2] == '\n') ? 2 : 1;
    ++physical_;
    return true;
  }

  // A newline ends comments to the end of the line and (unterminated)
  // literals. A block comment's newline still ends the directive line for our
  // purposes: a new logical line starts, so that a directive after the
  // comment is seen at the start of its line.
  void end_line() {
    ++physical_;
    if (state_ == State::line_comment || state_ == State::string || state_ == State::character)
      state_ = State::code;
    if (state_ == State::block_comment) emit(' ');
    lines_.push_back(Line{physical_, {}});
  }

  // One character of code at `i`; the index of the last character consumed.
  size_t code(size_t i) {
    const char c = s_[i];
    if (c == '/' && next_is(i, '/')) {
      state_ = State::line_comment;
      emit(' ');
      return i + 1;
    }
    if (c == '/' && next_is(i, '*')) {
      state_ = State::block_comment;
      emit(' ');
      return i + 1;
    }
    if (c == '"') {
      if (auto last = raw_string(i)) return *last;
      state_ = State::string;
    } else if (c == '\'' && !(i > 0 && std::isxdigit(static_cast<unsigned char>(s_[i - 1])) &&
                              i + 1 < s_.size() &&
                              std::isxdigit(static_cast<unsigned char>(s_[i + 1])))) {
      // (a quote between digits is a digit separator, 1'000)
      state_ = State::character;
    }
    emit(c);
    return i;
  }

  // A raw string opening at the quote at `i`: R"delim( ... )delim", prefixed
  // R, LR, uR, UR, u8R. The prefix must be the whole identifier before the
  // quote (fooLR"x" is an identifier and an ordinary string). Skipped whole
  // (its lines belong to this logical line, which gets "" in its place); the
  // index of its last character, or nullopt when this is no raw string.
  std::optional<size_t> raw_string(size_t i) {
    size_t begin = i;
    while (begin > 0 && ident_char(s_[begin - 1])) --begin;
    const std::string_view prefix = s_.substr(begin, i - begin);
    const bool raw =
        prefix == "R" || prefix == "LR" || prefix == "uR" || prefix == "UR" || prefix == "u8R";
    if (!raw) return std::nullopt;
    const size_t open = s_.find('(', i + 1);
    if (open == std::string_view::npos || open - i - 1 > 16) return std::nullopt;
    const std::string close = ")" + std::string(s_.substr(i + 1, open - i - 1)) + "\"";
    const size_t end = s_.find(close, open + 1);
    const size_t stop = end == std::string_view::npos ? s_.size() : end + close.size();
    for (size_t j = i; j < stop; ++j)
      if (s_[j] == '\n') ++physical_;
    emit('"');
    emit('"');
    return stop - 1;
  }

  // One character inside a string or character literal at `i` (an escape
  // takes the next one too); the index of the last character consumed.
  size_t literal(size_t i) {
    const char c = s_[i];
    emit(c);
    if (c == '\\' && i + 1 < s_.size() && s_[i + 1] != '\n') {
      emit(s_[++i]);
    } else if ((state_ == State::string && c == '"') ||
               (state_ == State::character && c == '\'')) {
      state_ = State::code;
    }
    return i;
  }

  std::string_view s_;
  std::vector<Line> lines_;
  int physical_ = 1;
  State state_ = State::code;
};

// Splits `source` into logical lines. Block comments may span lines; string
// and character literals may not (a newline ends them, as the compiler
// would reject them anyway), except raw strings, which are skipped whole.
// A mistake here must only ever make the scan see more directives than the
// compiler, never fewer: anything it cannot place counts as code.
std::vector<Line> logical_lines(std::string_view s) { return LineSplitter(s).run(); }

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

std::string quoted(std::string_view s) {
  std::string out;
  for (char c : s.substr(0, 120)) out += std::isprint(static_cast<unsigned char>(c)) ? c : '?';
  return out;
}

// nullopt when `target` ("name" or <name>) is an allowed header.
std::optional<std::string> target_error(std::string_view target,
                                        const std::set<std::string, std::less<>>& allowed) {
  if (target.size() < 2 || !((target.front() == '"' && target.back() == '"') ||
                             (target.front() == '<' && target.back() == '>')))
    return std::string("only a quoted or angled header name may follow (no macros)");
  const std::string_view name = target.substr(1, target.size() - 2);
  if (name.empty()) return std::string("empty header name");
  if (name.front() == '/') return std::string("absolute paths are not allowed");
  if (name.find("..") != std::string_view::npos)
    return std::string("'..' is not allowed in header names");
  if (name.find('\\') != std::string_view::npos)
    return std::string("backslashes are not allowed in header names");
  if (!allowed.contains(name))
    return "not one of the daemon's template headers (" + std::to_string(allowed.size()) +
           " may be included, e.g. common/attention_params.cuh)";
  return std::nullopt;
}

bool contains_word(std::string_view text, std::string_view word) {
  for (size_t at = text.find(word); at != std::string_view::npos; at = text.find(word, at + 1)) {
    const bool left = at == 0 || !ident_char(text[at - 1]);
    const bool right = at + word.size() >= text.size() || !ident_char(text[at + word.size()]);
    if (left && right) return true;
  }
  return false;
}

}  // namespace

std::optional<std::string> include_error(std::string_view source,
                                         const std::set<std::string, std::less<>>& allowed) {
  // Trigraphs (??= is #) are off in C++17, but a compiler mode could turn
  // them on; no kernel needs them.
  for (size_t at = source.find("??"); at != std::string_view::npos;
       at = source.find("??", at + 1)) {
    if (at + 2 < source.size() &&
        std::string_view("=/'()!<>-").find(source[at + 2]) != std::string_view::npos)
      return std::string("trigraphs (??") + source[at + 2] + ") are not allowed";
  }
  if (source.find('\0') != std::string_view::npos)
    return std::string("the source contains a NUL byte");

  for (const Line& line : logical_lines(source)) {
    const std::string_view text = line.text;
    const std::string where = "line " + std::to_string(line.number) + ": ";
    // Anywhere in code: ways to test for or pull in a file without a directive.
    for (std::string_view word : {"__has_include", "__has_include_next", "dependency",
                                  "include_alias", "__has_embed"})
      if (contains_word(text, word))
        return where + "'" + std::string(word) + "' is not allowed in submitted sources";
    std::string_view rest = trim(text);
    if (rest.starts_with("#")) {
      rest.remove_prefix(1);
    } else if (rest.starts_with("%:")) {  // the digraph of #
      rest.remove_prefix(2);
    } else {
      continue;
    }
    rest = trim(rest);
    size_t n = 0;
    while (n < rest.size() && ident_char(rest[n])) ++n;
    const std::string_view directive = rest.substr(0, n);
    const std::string_view target = trim(rest.substr(n));
    if (directive == "include" || directive == "include_next" || directive == "import" ||
        directive == "embed") {
      if (auto error = target_error(target, allowed))
        return where + "#" + std::string(directive) + " " + quoted(target) + ": " + *error;
    } else if (directive == "pragma") {
      if (target.find("include") != std::string_view::npos ||
          target.find("dependency") != std::string_view::npos)
        return where + "#pragma " + quoted(target) + ": not allowed in submitted sources";
    }
  }
  return std::nullopt;
}

}  // namespace flashcore::evolve
