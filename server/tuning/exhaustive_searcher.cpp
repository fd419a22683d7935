#include "tuning/exhaustive_searcher.hpp"

namespace flashcore {

void ExhaustiveSearcher::on_initialize(const std::vector<size_t>& /*seed_indices*/) { cursor_ = 0; }

size_t ExhaustiveSearcher::on_next() {
  while (tried(cursor_)) ++cursor_;
  return cursor_++;
}

}  // namespace flashcore
