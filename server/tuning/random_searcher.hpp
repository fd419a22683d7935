// Uniform random sampling without replacement: the baseline a smarter
// searcher has to beat for the same number of evaluations.
#pragma once

#include "tuning/searcher.hpp"

namespace flashcore {

class RandomSearcher final : public Searcher {
 public:
  SearcherKind kind() const override { return SearcherKind::random; }

 protected:
  // Seeds in the space are proposed first, in the caller's order, so random
  // and evolutionary search start from the same transferred knowledge.
  void on_initialize(const std::vector<size_t>& seed_indices) override;
  size_t on_next() override;

 private:
  std::vector<size_t> seeds_;
  size_t next_seed_ = 0;
};

}  // namespace flashcore
