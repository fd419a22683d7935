#include "tuning/evolutionary_searcher.hpp"

#include <algorithm>
#include <cmath>
#include <optional>

namespace flashcore {
namespace {

// Crossover can pair fields that do not fit together (block_m 64 from one
// parent, 8 warps from the other); a few redraws usually find a valid mix.
constexpr int kCrossoverAttempts = 4;

}  // namespace

std::optional<std::string> evolutionary_params_error(const EvolutionaryParams& params) {
  if (params.population < 1) return "population: must be >= 1";
  if (params.tournament_size < 1) return "tournament_size: must be >= 1";
  if (!(params.mutation_rate >= 0.0 && params.mutation_rate <= 1.0))
    return "mutation_rate: must be in [0, 1]";
  if (!(params.refine_rate >= 0.0 && params.refine_rate <= 1.0))
    return "refine_rate: must be in [0, 1]";
  if (params.elites >= params.population)
    return "elites: must be less than population (" + std::to_string(params.population) + ")";
  return std::nullopt;
}

EvolutionarySearcher::EvolutionarySearcher(EvolutionaryParams params) : params_(params) {
  // Last line of defence for unchecked params: keep the searcher well defined.
  params_.population = std::max<size_t>(params_.population, 1);
  params_.tournament_size = std::max<size_t>(params_.tournament_size, 1);
  if (!(params_.mutation_rate >= 0.0)) params_.mutation_rate = 0.0;
  params_.mutation_rate = std::min(params_.mutation_rate, 1.0);
  if (!(params_.refine_rate >= 0.0)) params_.refine_rate = 0.0;
  params_.refine_rate = std::min(params_.refine_rate, 1.0);
  params_.elites = std::min(params_.elites, params_.population - 1);
}

void EvolutionarySearcher::on_initialize(const std::vector<size_t>& seed_indices) {
  // Seeds beyond one population would crowd out exploration; the caller
  // lists them nearest shape first, so the first ones are the ones to keep.
  seeds_.assign(seed_indices.begin(),
                seed_indices.begin() +
                    static_cast<std::ptrdiff_t>(std::min(seed_indices.size(), params_.population)));
  next_seed_ = 0;
  generation_ = 0;
  population_.clear();
  open_.clear();
  generation_of_.assign(search_space().size(), 0);
}

size_t EvolutionarySearcher::on_next() {
  // The oldest open generation with a free slot, or a new one.
  size_t slot = 0;
  while (slot < open_.size() && open_[slot].members.size() >= open_[slot].slots) ++slot;
  if (slot == open_.size()) {
    Generation generation;
    generation.slots = (generation_ + slot == 0)
                           ? std::min(params_.population, search_space().size())
                           : params_.population - params_.elites;
    open_.push_back(std::move(generation));
  }
  const size_t number = generation_ + slot;
  const size_t index = number == 0 ? initial_member() : breed();
  open_[slot].members.push_back(index);
  generation_of_[index] = number;
  return index;
}

void EvolutionarySearcher::on_report(size_t index, const TrialOutcome& /*outcome*/) {
  const size_t number = generation_of_[index];
  if (number >= generation_ && number - generation_ < open_.size())
    ++open_[number - generation_].reported;
  complete_generations();
}

size_t EvolutionarySearcher::initial_member() {
  while (next_seed_ < seeds_.size()) {
    const size_t index = seeds_[next_seed_++];
    if (!tried(index)) return index;
  }
  return random_untried();
}

size_t EvolutionarySearcher::breed() {
  // Parents come from the last complete population and from every result of
  // the generations still open, so breeding ahead uses all that is known.
  std::vector<size_t> pool;
  for (size_t index : population_)
    if (outcome(index)->succeeded()) pool.push_back(index);
  for (const auto& generation : open_)
    for (size_t index : generation.members)
      if (const TrialOutcome* o = outcome(index); o && o->succeeded()) pool.push_back(index);
  if (pool.empty()) return random_untried();  // nothing has worked yet: explore
  if (params_.refine_rate > 0.0 && bernoulli(rng(), params_.refine_rate))
    if (auto neighbour = refine()) return *neighbour;

  // A child that was tried before is bred again, from freshly drawn parents
  // and with at least one field mutated. Re-breeding beat mutating the tried
  // child further (a random walk that drifts off the good region): on the
  // 860-config test space the worst of 200 seeds needed 144 evaluations
  // instead of 214. After max_mutation_attempts, a random untried config.
  const SearchSpace& space = search_space();
  for (size_t attempt = 0; attempt <= params_.max_mutation_attempts; ++attempt) {
    const TileConfig& a = space.at(tournament(pool));
    const TileConfig& b = space.at(tournament(pool));
    TileConfig child = a;
    for (int c = 0; c < kCrossoverAttempts; ++c) {
      TileConfig mix;
      for (TileField field : kTileFields)
        set_field_value(mix, field, field_value(uniform_index(rng(), 2) ? b : a, field));
      if (space.contains(mix)) {
        child = mix;
        break;
      }
    }
    child = space.mutate(child, rng(), params_.mutation_rate, /*at_least_one=*/attempt > 0);
    const size_t index = *space.index_of(child);
    if (!tried(index)) return index;
  }
  return random_untried();
}

std::optional<size_t> EvolutionarySearcher::refine() {
  const std::optional<Trial> current = best();
  if (!current) return std::nullopt;
  std::vector<size_t> untried;
  for (const TileConfig& neighbour : search_space().neighbours(current->config))
    if (auto index = search_space().index_of(neighbour); index && !tried(*index))
      untried.push_back(*index);
  if (untried.empty()) return std::nullopt;
  return untried[uniform_index(rng(), untried.size())];
}

size_t EvolutionarySearcher::tournament(const std::vector<size_t>& pool) {
  size_t winner = pool[uniform_index(rng(), pool.size())];
  for (size_t i = 1; i < params_.tournament_size; ++i) {
    const size_t contender = pool[uniform_index(rng(), pool.size())];
    if (faster(contender, winner)) winner = contender;
  }
  return winner;
}

// Succeeded before failed, then by time, then by space order so that every
// ranking is a total order and replays identically.
bool EvolutionarySearcher::faster(size_t a, size_t b) const {
  const TrialOutcome* oa = outcome(a);
  const TrialOutcome* ob = outcome(b);
  const bool sa = oa && oa->succeeded();
  const bool sb = ob && ob->succeeded();
  if (sa != sb) return sa;
  if (sa && oa->time_us != ob->time_us) return oa->time_us < ob->time_us;
  return a < b;
}

std::vector<size_t> EvolutionarySearcher::elites_of(const std::vector<size_t>& population) const {
  std::vector<size_t> ranked;
  for (size_t index : population)
    if (outcome(index)->succeeded()) ranked.push_back(index);
  std::sort(ranked.begin(), ranked.end(), [&](size_t a, size_t b) { return faster(a, b); });
  if (ranked.size() > params_.elites) ranked.resize(params_.elites);
  return ranked;
}

void EvolutionarySearcher::complete_generations() {
  while (!open_.empty()) {
    const Generation& front = open_.front();
    // A generation the space cannot fill is complete once its members are in.
    const bool filled = front.members.size() >= front.slots || untried_count() == 0;
    if (!filled || front.reported < front.members.size()) return;
    std::vector<size_t> next = elites_of(population_);
    next.insert(next.end(), front.members.begin(), front.members.end());
    population_ = std::move(next);
    open_.pop_front();
    ++generation_;
  }
}

}  // namespace flashcore
