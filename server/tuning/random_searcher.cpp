#include "tuning/random_searcher.hpp"

namespace flashcore {

void RandomSearcher::on_initialize(const std::vector<size_t>& seed_indices) {
  seeds_ = seed_indices;
  next_seed_ = 0;
}

size_t RandomSearcher::on_next() {
  while (next_seed_ < seeds_.size()) {
    const size_t index = seeds_[next_seed_++];
    if (!tried(index)) return index;
  }
  return random_untried();
}

}  // namespace flashcore
