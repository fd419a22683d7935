// flashcore validate: compile (or fetch) one kernel and run the validation
// matrix on a daemon GPU; exits 3 when it fails validation.
#include <cstdint>
#include <limits>

#include "builtin.hpp"

namespace flashcore::cli {
namespace {

class Validate final : public Command {
 public:
  explicit Validate(CLI::App& app)
      : Command(app.add_subcommand(
            "validate",
            "compile (or fetch) one kernel and run the validation matrix on a daemon GPU")) {
    app_->footer(
        "Prints the record: rel and max abs error vs fp64, determinism, stability, registers, "
        "shared memory, spills, stack, passed, detail.\nExit status: 0 when the kernel passed, 3 "
        "when it failed validation, 1 on errors (a daemon without GPU workers answers "
        "FAILED_PRECONDITION), 2 on usage errors. The daemon takes at most 100000 determinism "
        "runs or stability trials.");
    add_problem_options(*app_, kernel_);
    add_tile_options(*app_, kernel_);
    add_matrix_options();
  }

  int run(const Globals& globals, client::Client* client) override {
    v1::ValidateRequest request;
    *request.mutable_kernel() = kernel_request(kernel_, /*with_tile=*/true);
    request.mutable_kernel()->set_omit_cubin(true);  // the record is the answer
    *request.mutable_options() = validation_;
    auto handle = client->validate(request);  // deadline: --timeout-ms
    if (!handle) return fail(globals, handle.error());
    if (globals.json)
      std::cout << to_json(*handle);
    else
      std::cout << fc::client::describe_validation(*handle);
    return handle->validation().passed() ? 0 : 3;
  }

 private:
  // Lower bounds here (a usage error); the daemon checks the upper ones and names the field.
  void add_matrix_options() {
    const auto non_negative = CLI::Range(0, std::numeric_limits<int32_t>::max());
    app_->add_option_function<int32_t>(
            "--determinism-runs", [this](int32_t n) { validation_.set_determinism_runs(n); },
            "launches whose outputs must be bit-identical; 0 = 100")
        ->check(non_negative)
        ->type_name("N");
    app_->add_option_function<int32_t>(
            "--stability-trials", [this](int32_t n) { validation_.set_stability_trials(n); },
            "fresh random inputs, each within tolerance; 0 = 10")
        ->check(non_negative)
        ->type_name("N");
    app_->add_option_function<double>(
            "--rel-tolerance", [this](double x) { validation_.set_rel_tolerance(x); },
            "relative error allowed vs fp64, below 1; 0 = 2e-3 fp16, 1e-2 bf16")
        ->check(CLI::Range(0.0, 1.0))
        ->type_name("X");
    app_->add_option_function<double>(
            "--max-abs-tolerance", [this](double x) { validation_.set_max_abs_tolerance(x); },
            "largest one-element error allowed, times max(1, max |ref|); 0 = 4e-3 fp16, "
            "2.5e-2 bf16")
        ->check(CLI::Range(0.0, 1.0))
        ->type_name("X");
    app_->add_option_function<int32_t>(
            "--reference-rows", [this](int32_t n) { validation_.set_reference_rows(n); },
            "query rows per (batch, head) checked against fp64; 0 = every row")
        ->check(non_negative)
        ->type_name("N");
  }

  KernelFlags kernel_;
  v1::ValidationOptions validation_;
};

}  // namespace

std::unique_ptr<Command> add_validate(CLI::App& app) { return std::make_unique<Validate>(app); }

}  // namespace flashcore::cli
