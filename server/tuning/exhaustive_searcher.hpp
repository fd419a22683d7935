// Every config once, in the search space's order: the reference the other
// searchers are measured against, and the right choice for small spaces.
#pragma once

#include "tuning/searcher.hpp"

namespace flashcore {

class ExhaustiveSearcher final : public Searcher {
 public:
  SearcherKind kind() const override { return SearcherKind::exhaustive; }

 protected:
  // Seeds are ignored: the order is the point of this searcher.
  void on_initialize(const std::vector<size_t>& seed_indices) override;
  size_t on_next() override;

 private:
  size_t cursor_ = 0;
};

}  // namespace flashcore
