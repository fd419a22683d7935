// `flashcore`: the command-line client of flashcored. Every failure prints one
// line "flashcore: <message>" on stderr (the server's detail, e.g. the NVRTC
// log, follows with --verbose) and exits 1; usage errors exit 2; `validate`
// exits 3 when the kernel fails validation (the record is printed).
#include <google/protobuf/util/json_util.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <limits>
#include <memory>
#include <string>
#include <thread>

#include <csignal>
#include <pthread.h>
#include <unistd.h>

#include "flashcore/client.hpp"
#include "results_transfer.hpp"
#include "stats.hpp"

namespace fc = flashcore;
namespace v1 = flashcore::v1;

namespace {

struct Globals {
  std::string address = "127.0.0.1:50051";
  bool json = false;
  bool verbose = false;
  int64_t timeout_ms = 300000;
  std::string token;            // empty: none ($FLASHCORE_TOKEN through CLI11's envname)
  std::string tls_ca, tls_cert, tls_key, tls_server_name;
};

// The message stays on one line whatever the server sent; anything after the
// first line moves to the detail.
int fail(const Globals& globals, const fc::Error& error) {
  std::string message = error.message;
  std::string detail = error.detail;
  if (auto newline = message.find('\n'); newline != std::string::npos) {
    std::string rest = message.substr(newline + 1);
    message.resize(newline);
    detail = detail.empty() ? rest : rest + "\n" + detail;
  }
  std::cerr << "flashcore: " << message << "\n";
  if (globals.verbose && !detail.empty()) {
    std::cerr << detail;
    if (detail.back() != '\n') std::cerr << "\n";
  }
  return 1;
}

int fail(const Globals& globals, const std::string& message) {
  return fail(globals, fc::make_error(fc::ErrorCode::internal, message));
}

fc::Result<fc::client::Client> connect(const Globals& globals) {
  fc::client::ConnectOptions options;
  options.address = globals.address;
  options.call_timeout = std::chrono::milliseconds(globals.timeout_ms);
  options.connect_timeout = std::min(options.connect_timeout, options.call_timeout);
  options.token = globals.token;
  options.tls_ca_file = globals.tls_ca;
  options.tls_cert_file = globals.tls_cert;
  options.tls_key_file = globals.tls_key;
  options.tls_server_name = globals.tls_server_name;
  return fc::client::Client::connect(options);
}

std::string to_json(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;  // a 0 (no spills) is information too
  std::string out;
  if (!google::protobuf::util::MessageToJsonString(message, &out, options).ok())
    return "{}\n";
  return out;
}

fc::Status write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (out) out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (out) out.close();
  if (!out)
    return fc::make_error(fc::ErrorCode::internal,
                          "cannot write " + path + ": " + std::strerror(errno));
  return fc::ok_status();
}

// Prints a handle (text or JSON) and writes its cubin to `output` if given.
int print_handle(const Globals& globals, v1::KernelHandle handle, const std::string& output,
                 bool include_cubin) {
  if (!output.empty()) {
    if (handle.cubin().empty())
      return fail(globals, "the server sent no cubin for " + handle.key());
    if (auto s = write_file(output, handle.cubin()); !s) return fail(globals, s.error());
  }
  if (globals.json) {
    if (!include_cubin) handle.clear_cubin();
    std::cout << to_json(handle);
  } else {
    std::cout << fc::client::describe(handle);
  }
  if (!output.empty()) {
    // In JSON mode stdout carries the document only.
    (globals.json ? std::cerr : std::cout)
        << "wrote " << handle.cubin_size() << " bytes to " << output << "\n";
  }
  return 0;
}

// The problem and tile options of compile, validate and tune: the one place
// they are declared and turned into a KernelRequest.
struct KernelFlags {
  std::string template_id;  // empty: the daemon picks the family
  std::string dtype, layout = "bshd", arch;
  int head_dim = 0;
  bool causal = false;
  int64_t batch = 1, heads = 1, kv_heads = 0, seq_q = 0, seq_k = 0;
  // 0 everywhere: no config in the request, so the family's default is used.
  int block_m = 0, block_n = 0, warps = 0, stages = 0;
  std::string q_placement = "auto", smem_layout = "auto";
  bool pingpong = false, separate_o = false, persistent = false;
};

void add_problem_options(CLI::App& command, KernelFlags& f) {
  command.add_option("--template", f.template_id,
                     "kernel family: attention_fwd (sm80+), attention_fwd_sm90 (sm_90a) or "
                     "attention_decode (few query rows, split KV; --block-m = packed rows); "
                     "default: the daemon picks by shape and arch (attention_fwd when tile flags "
                     "are given)");
  command.add_option("--dtype", f.dtype, "element type of Q, K, V, O")
      ->required()
      ->check(CLI::IsMember({"fp16", "bf16"}));
  command.add_option("--head-dim", f.head_dim, "head dimension D (compile-time)")->required();
  command.add_flag("--causal", f.causal, "causal (top-left aligned) masking");
  command.add_option("--batch", f.batch, "batch size (run-time shape)")->capture_default_str();
  command.add_option("--heads", f.heads, "query heads (run-time shape)")->capture_default_str();
  command.add_option("--kv-heads", f.kv_heads, "K/V heads, must divide --heads; 0 = --heads")
      ->capture_default_str();
  command.add_option("--seq-q", f.seq_q, "query sequence length (run-time shape)")->required();
  command.add_option("--seq-k", f.seq_k, "key sequence length; 0 = --seq-q")
      ->capture_default_str();
  command.add_option("--layout", f.layout, "memory layout of Q, K, V, O")
      ->check(CLI::IsMember({"bshd", "bhsd"}))
      ->capture_default_str();
  command.add_option("--arch", f.arch, "target, e.g. sm_90a; empty = the daemon's default");
}

void add_tile_options(CLI::App& command, KernelFlags& f) {
  command.add_option("--block-m", f.block_m,
                     "query rows per thread block (give all four of --block-m, --block-n, "
                     "--warps, --stages, or none for the family's default config)")
      ->capture_default_str();
  command.add_option("--block-n", f.block_n, "key rows per inner-loop tile")->capture_default_str();
  command.add_option("--warps", f.warps,
                     "warps per thread block (Hopper family: 4 x (block_m / 64 + 1))")
      ->capture_default_str();
  command.add_option("--stages", f.stages, "K/V pipeline depth")->capture_default_str();
  command.add_flag("--pingpong", f.pingpong,
                   "Hopper family: the two consumer warpgroups take turns on the tensor cores");
  command.add_flag("--separate-o", f.separate_o, "Hopper family: O gets its own shared tile");
  command.add_flag("--persistent", f.persistent,
                   "Hopper family: persistent CTAs over min(tiles, multiprocessors)");
  command.add_option("--q-placement", f.q_placement,
                     "Q operand held in registers or re-read from shared memory; auto = the "
                     "family's rule")
      ->check(CLI::IsMember({"auto", "registers", "shared"}))
      ->capture_default_str();
  command.add_option("--smem-layout", f.smem_layout,
                     "shared-memory layout of the tiles; auto = swizzled where head_dim/8 is a "
                     "power of two, else padded")
      ->check(CLI::IsMember({"auto", "swizzled", "padded"}))
      ->capture_default_str();
}

// `with_tile` false leaves the config unset (tune searches it).
v1::KernelRequest kernel_request(const KernelFlags& f, bool with_tile) {
  v1::KernelRequest request;
  request.set_template_id(f.template_id);
  auto* problem = request.mutable_problem();
  problem->set_dtype(f.dtype == "bf16" ? v1::DTYPE_BF16 : v1::DTYPE_FP16);
  problem->set_head_dim(f.head_dim);
  problem->set_causal(f.causal);
  problem->set_batch(f.batch);
  problem->set_heads(f.heads);
  problem->set_kv_heads(f.kv_heads);
  problem->set_seq_q(f.seq_q);
  problem->set_seq_k(f.seq_k);
  problem->set_layout(f.layout == "bhsd" ? v1::LAYOUT_BHSD : v1::LAYOUT_BSHD);
  const bool tile_given = f.block_m != 0 || f.block_n != 0 || f.warps != 0 || f.stages != 0 ||
                          f.q_placement != "auto" || f.smem_layout != "auto" || f.pingpong ||
                          f.separate_o || f.persistent;
  if (with_tile && tile_given) {
    // Tile flags are a family's fields: without --template they are the sm80 family's.
    if (f.template_id.empty()) request.set_template_id("attention_fwd");
    auto* config = request.mutable_config();
    config->set_block_m(f.block_m);
    config->set_block_n(f.block_n);
    config->set_warps(f.warps);
    config->set_stages(f.stages);
    config->set_q_placement(f.q_placement == "registers" ? v1::Q_PLACEMENT_REGISTERS
                            : f.q_placement == "shared"  ? v1::Q_PLACEMENT_SHARED
                                                         : v1::Q_PLACEMENT_UNSPECIFIED);
    config->set_smem_layout(f.smem_layout == "swizzled" ? v1::SMEM_LAYOUT_SWIZZLED
                            : f.smem_layout == "padded" ? v1::SMEM_LAYOUT_PADDED
                                                        : v1::SMEM_LAYOUT_UNSPECIFIED);
    config->set_pingpong(f.pingpong);
    config->set_separate_o(f.separate_o);
    config->set_persistent(f.persistent);
  }
  request.set_arch(f.arch);
  // The CLI prints and saves handles and launches none, so a multi-kernel
  // handle (the decode family) is nothing it could misuse.
  request.set_accepts_multi_kernel(true);
  return request;
}

// Fetches the pages from `token` on (all of them with `all`) into one
// response whose next_page_token is where it stopped, and prints it: the
// JSON document, or the table and how to go on.
template <typename Response, typename Fetch>
int print_pages(const Globals& globals, const Fetch& fetch, std::string token, bool all,
                void (*print_table)(const Response&)) {
  Response collected;
  do {
    fc::Result<Response> page = fetch(token);
    if (!page) return fail(globals, page.error());
    collected.MergeFrom(*page);  // appends the page's items
    token = page->next_page_token();
  } while (all && !token.empty());
  collected.set_next_page_token(token);
  if (globals.json) {
    std::cout << to_json(collected);
  } else {
    print_table(collected);
    if (!token.empty()) std::cout << "more: --page-token " << token << " (or --all)\n";
  }
  return 0;
}

std::string config_label(const v1::TileConfig& c) {
  std::string label = std::to_string(c.block_m()) + "x" + std::to_string(c.block_n()) + " w" +
                      std::to_string(c.warps()) + " s" + std::to_string(c.stages());
  if (c.q_placement() == v1::Q_PLACEMENT_REGISTERS) label += " qreg";
  if (c.q_placement() == v1::Q_PLACEMENT_SHARED) label += " qsmem";
  if (c.smem_layout() == v1::SMEM_LAYOUT_SWIZZLED) label += " swz";
  if (c.smem_layout() == v1::SMEM_LAYOUT_PADDED) label += " pad";
  return label;
}

void print_kernels_table(const v1::ListKernelsResponse& listed) {
  std::printf("%-16s  %-5s  %4s  %-6s  %-23s  %-7s  %4s  %6s  %8s\n", "KEY", "DTYPE", "D",
              "CAUSAL", "CONFIG", "ARCH", "REGS", "SPILLS", "CUBIN_KB");
  for (const auto& k : listed.kernels()) {
    std::printf("%-16s  %-5s  %4d  %-6s  %-23s  %-7s  %4d  %6d  %8.1f\n",
                k.key().substr(0, 16).c_str(),
                fc::client::dtype_label(k.problem().dtype()).c_str(), k.problem().head_dim(),
                k.problem().causal() ? "yes" : "no", config_label(k.config()).c_str(),
                k.arch().c_str(), k.registers(), k.spill_store_bytes(),
                static_cast<double>(k.cubin_size()) / 1024.0);
  }
}

void print_results_table(const v1::ListTuningResultsResponse& listed) {
  std::printf("%-5s  %4s  %-6s  %-40s  %-7s  %-23s  %10s  %7s  %5s  %s\n", "DTYPE", "D", "CAUSAL",
              "BUCKET", "ARCH", "CONFIG", "MEDIAN_US", "TF/S", "EVALS", "DEVICE");
  for (const auto& r : listed.results()) {
    std::printf("%-5s  %4d  %-6s  %-40s  %-7s  %-23s  %10.2f  %7.1f  %5lld  %s\n",
                fc::client::dtype_label(r.problem().dtype()).c_str(), r.problem().head_dim(),
                r.problem().causal() ? "yes" : "no", r.bucket().c_str(), r.arch().c_str(),
                config_label(r.config()).c_str(), r.median_us(), r.tflops(),
                static_cast<long long>(r.evaluations()), r.device().c_str());
  }
  if (listed.skipped_rows() > 0) {
    std::fprintf(stderr, "%lld stored result(s) did not read and are left out:\n",
                 static_cast<long long>(listed.skipped_rows()));
    for (const auto& reason : listed.skipped_reasons()) std::fprintf(stderr, "  %s\n", reason.c_str());
  }
}

// The live one-line progress of a tune on stderr.
struct TuneProgressLine {
  int budget = 0;
  int evaluations = 0;
  int generation = 0;
  int failures = 0;
  int queued = 0;
  double best_us = 0.0;
  double best_tflops = 0.0;
  int64_t eta_ms = 0;
  bool printed = false;

  void update(const v1::TuneProgress& p) {
    if (p.has_queued()) queued = p.queued().position();
    if (p.has_started()) {
      queued = 0;
      budget = p.started().max_evaluations();
      std::fprintf(stderr, "tuning job %lld: %d configs in bucket %s, budget %d evaluations\n",
                   static_cast<long long>(p.started().job_id()), p.started().space_size(),
                   p.started().bucket().c_str(), budget);
    }
    if (p.has_trial()) {
      evaluations = p.trial().evaluations();
      generation = p.trial().generation();
      if (p.trial().status() != "ok") ++failures;
      eta_ms = p.eta_ms();
    }
    if (p.has_best()) {
      best_us = p.best().median_us();
      best_tflops = p.best().tflops();
    }
    if (p.has_done()) {
      if (printed) std::fprintf(stderr, "\n");
      printed = false;
      return;
    }
    draw();
  }

  void draw() {
    if (queued > 0) {
      std::fprintf(stderr, "\rqueued: position %d%-40s", queued, "");
    } else {
      const int width = 24;
      const int filled = budget > 0 ? std::min(width, evaluations * width / budget) : 0;
      std::string bar(static_cast<size_t>(filled), '#');
      bar.resize(width, '.');
      char best[64] = "-";
      if (best_us > 0)
        std::snprintf(best, sizeof best, "%.2f us %.1f TF/s", best_us, best_tflops);
      std::fprintf(stderr, "\r[%s] %d/%d  gen %d  best %s  failures %d  eta %llds   ", bar.c_str(),
                   evaluations, budget, generation, best, failures,
                   static_cast<long long>((eta_ms + 999) / 1000));
    }
    std::fflush(stderr);
    printed = true;
  }
};

}  // namespace

int main(int argc, char** argv) {
  Globals globals;
  CLI::App app{"flashcore: client of the flashcored kernel service (compile, validate, tune, "
               "fetch and list FlashAttention-style kernels)"};
  app.require_subcommand(1);
  app.fallthrough();  // global options may follow the subcommand too
  app.add_option("--address", globals.address,
                 "daemon address host:port")
      ->envname("FLASHCORE_ADDRESS")
      ->capture_default_str();
  app.add_flag("--json", globals.json, "print results as JSON (protobuf field names)");
  app.add_flag("-v,--verbose", globals.verbose,
               "on errors, also print the server's detail (e.g. the NVRTC log)");
  app.add_option("--timeout-ms", globals.timeout_ms,
                 "deadline of each call in milliseconds (connecting waits at most 5000)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--token", globals.token,
                 "bearer token of this client, for a daemon started with --auth-tokens")
      ->envname("FLASHCORE_TOKEN");
  app.add_option("--tls-ca", globals.tls_ca,
                 "PEM CA bundle that signed the daemon's certificate: connect over TLS")
      ->envname("FLASHCORE_TLS_CA");
  app.add_option("--tls-cert", globals.tls_cert,
                 "this client's PEM certificate, for a daemon that requires one (mutual TLS)")
      ->envname("FLASHCORE_TLS_CERT");
  app.add_option("--tls-key", globals.tls_key, "the private key of --tls-cert")
      ->envname("FLASHCORE_TLS_KEY");
  app.add_option("--tls-server-name", globals.tls_server_name,
                 "name the daemon's certificate must carry; default: the address's host");

  KernelFlags kernel;

  // compile
  auto* compile = app.add_subcommand(
      "compile", "compile (or fetch from the daemon's cache) one kernel specialization");
  std::string compile_output;
  bool compile_include_cubin = false;
  add_problem_options(*compile, kernel);
  add_tile_options(*compile, kernel);
  compile->add_option("-o,--output", compile_output, "write the cubin to FILE")->type_name("FILE");
  compile->add_flag("--include-cubin", compile_include_cubin,
                    "with --json, keep the cubin (base64) in the output");
  bool use_tuned = false;
  compile->add_flag("--tuned", use_tuned,
                    "take the tile config from the daemon's tuning result for this shape's "
                    "bucket (the --block-m/--block-n/--warps/--stages values are ignored)");
  bool line_info = false;
  compile->add_flag("--line-info", line_info,
                    "compile with -lineinfo, for profilers (a larger cubin, and another key)");

  // validate: the problem and tile options of compile, plus the matrix's knobs
  auto* validate = app.add_subcommand(
      "validate", "compile (or fetch) one kernel and run the validation matrix on a daemon GPU");
  validate->footer(
      "Prints the record: rel and max abs error vs fp64, determinism, stability, registers, "
      "shared memory, spills, stack, passed, detail.\nExit status: 0 when the kernel passed, 3 "
      "when it failed validation, 1 on errors (a daemon without GPU workers answers "
      "FAILED_PRECONDITION), 2 on usage errors. The daemon takes at most 100000 determinism "
      "runs or stability trials.");
  v1::ValidationOptions validation;
  // Lower bounds here (a usage error); the daemon checks the upper ones and names the field.
  const auto non_negative = CLI::Range(0, std::numeric_limits<int32_t>::max());
  add_problem_options(*validate, kernel);
  add_tile_options(*validate, kernel);
  validate
      ->add_option_function<int32_t>(
          "--determinism-runs", [&](int32_t n) { validation.set_determinism_runs(n); },
          "launches whose outputs must be bit-identical; 0 = 100")
      ->check(non_negative)
      ->type_name("N");
  validate
      ->add_option_function<int32_t>(
          "--stability-trials", [&](int32_t n) { validation.set_stability_trials(n); },
          "fresh random inputs, each within tolerance; 0 = 10")
      ->check(non_negative)
      ->type_name("N");
  validate
      ->add_option_function<double>(
          "--rel-tolerance", [&](double x) { validation.set_rel_tolerance(x); },
          "relative error allowed vs fp64, below 1; 0 = 2e-3 fp16, 1e-2 bf16")
      ->check(CLI::Range(0.0, 1.0))
      ->type_name("X");
  validate
      ->add_option_function<double>(
          "--max-abs-tolerance", [&](double x) { validation.set_max_abs_tolerance(x); },
          "largest one-element error allowed, times max(1, max |ref|); 0 = 4e-3 fp16, 2.5e-2 bf16")
      ->check(CLI::Range(0.0, 1.0))
      ->type_name("X");
  validate
      ->add_option_function<int32_t>(
          "--reference-rows", [&](int32_t n) { validation.set_reference_rows(n); },
          "query rows per (batch, head) checked against fp64; 0 = every row")
      ->check(non_negative)
      ->type_name("N");

  // tune: the same problem options as compile, no tile config
  auto* tune = app.add_subcommand(
      "tune", "tune the tile config for a problem on the daemon's GPUs (live progress on stderr)");
  std::string searcher = "evolutionary";
  int max_evals = 0, time_budget_ms = 0, patience = 0;
  bool force = false;
  uint64_t seed = 0;
  add_problem_options(*tune, kernel);
  tune->add_option("--searcher", searcher, "search strategy")
      ->check(CLI::IsMember({"evolutionary", "random", "exhaustive"}))
      ->capture_default_str();
  tune->add_option("--max-evals", max_evals,
                   "GPU measurements; 0 = 20% of the space left after spill pruning, >= 8")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  tune->add_option("--time-budget-ms", time_budget_ms, "time budget; 0 = 60000")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  tune->add_option("--patience", patience,
                   "stop after this many evaluations without improvement; 0 = off")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  tune->add_flag("--force", force, "tune even when the daemon has a stored result");
  tune->add_option("--seed", seed, "searcher seed; 0 = 1")->capture_default_str();

  // results
  auto* results = app.add_subcommand("results", "list the daemon's stored tuning results");
  int results_page_size = 0;
  std::string results_token;
  bool results_all = false;
  results->add_option("--page-size", results_page_size, "results per page; 0 = 100")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  results->add_option("--page-token", results_token, "continue from a previous page")
      ->type_name("TOKEN");
  results->add_flag("--all", results_all, "follow next-page tokens to the end");
  fc::cli::TransferOptions transfer;
  auto [results_export, results_import] = fc::cli::add_transfer_commands(*results, transfer);
  fc::cli::StatsOptions stats_options;
  auto* stats = fc::cli::add_stats_command(app, stats_options);

  // get
  auto* get = app.add_subcommand("get", "fetch a cached kernel by key");
  std::string key, get_output;
  bool omit_cubin = false, get_include_cubin = false;
  get->add_option("KEY", key, "kernel key (64 hex characters)")->required();
  auto* get_output_opt = get->add_option("-o,--output", get_output, "write the cubin to FILE")
                            ->type_name("FILE");
  get->add_flag("--omit-cubin", omit_cubin, "fetch metadata only")->excludes(get_output_opt);
  get->add_flag("--include-cubin", get_include_cubin,
                "with --json, keep the cubin (base64) in the output");

  // list
  auto* list = app.add_subcommand("list", "list cached kernels in key order");
  int page_size = 0;
  std::string page_token;
  bool all_pages = false;
  list->add_option("--page-size", page_size, "kernels per page; 0 = the daemon's default (50)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  list->add_option("--page-token", page_token, "continue from a previous page")
      ->type_name("TOKEN");
  list->add_flag("--all", all_pages, "follow next-page tokens to the end");

  // health
  auto* health = app.add_subcommand(
      "health", "check the daemon's grpc.health.v1 status; exits 0 only when SERVING");
  std::string service;
  health->add_option("--service", service, "service name; empty = the whole server");

  // info
  auto* info = app.add_subcommand("info", "show the daemon's version, NVRTC, GPU and templates");

  // jobs, cancel
  auto* jobs = app.add_subcommand(
      "jobs", "list tune jobs queued or running: this client's own (an admin's: every one)");
  auto* cancel = app.add_subcommand("cancel", "cancel a tune job by its id (from `jobs`)");
  int64_t cancel_id = 0;
  cancel->add_option("ID", cancel_id, "the job's id")->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }

  // Ctrl-C during a tune cancels the job on the daemon: the signals are
  // blocked before gRPC starts its threads and a thread of ours takes them.
  auto tune_cancel = std::make_shared<fc::client::TuneCancel>();
  if (*tune) {
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);
    std::thread([signals, tune_cancel]() {
      int received = 0;
      if (sigwait(&signals, &received) == 0) tune_cancel->cancel();
    }).detach();
  }

  if (*results_export || *results_import) {  // on the database file, not over gRPC
    auto rc = *results_export ? fc::cli::run_export(transfer)
                              : fc::cli::run_import(transfer, globals.json);
    return rc ? *rc : fail(globals, rc.error());
  }

  if (*stats) {  // over HTTP, not gRPC
    auto rc = fc::cli::run_stats(stats_options, globals.json);
    return rc ? *rc : fail(globals, rc.error());
  }

  auto client = connect(globals);
  if (!client) return fail(globals, client.error());

  if (*tune) {
    v1::TuneRequest request;
    *request.mutable_kernel() = kernel_request(kernel, /*with_tile=*/false);
    request.set_searcher(searcher);
    request.set_max_evaluations(max_evals);
    request.set_time_budget_ms(time_budget_ms);
    request.set_patience(patience);
    request.set_force(force);
    request.set_seed(seed);
    TuneProgressLine line;
    auto result = client->tune(
        request, [&](const v1::TuneProgress& p) { if (!globals.json) line.update(p); },
        tune_cancel, std::chrono::milliseconds(globals.timeout_ms));
    if (line.printed) std::fprintf(stderr, "\n");
    if (!result) return fail(globals, result.error());
    if (globals.json) {
      std::cout << to_json(*result);
      return 0;
    }
    std::printf("best config   %s%s\n", config_label(result->config()).c_str(),
                result->from_database() ? "  (stored result; --force to tune again)" : "");
    std::printf("median        %.2f us", result->median_us());
    if (result->p90_us() > 0.0)
      std::printf("  (p10-p90 %.2f-%.2f us)", result->p10_us(), result->p90_us());
    std::printf("\n");
    std::printf("throughput    %.1f TF/s\n", result->tflops());
    std::printf("validated     %s%s%s\n", result->validated() ? "yes" : "no",
                result->validation_detail().empty() ? "" : ": ",
                result->validation_detail().c_str());
    for (int i = 1; i < result->finalists_size(); ++i)
      std::printf("runner-up     %s  %.2f us (p10-p90 %.2f-%.2f)\n",
                  config_label(result->finalists(i).config()).c_str(),
                  result->finalists(i).median_us(), result->finalists(i).p10_us(),
                  result->finalists(i).p90_us());
    std::printf("evaluations   %lld (%s)\n", static_cast<long long>(result->evaluations()),
                result->searcher().c_str());
    std::printf("wall          %.1f s\n", result->wall_seconds());
    std::printf("bucket        %s\n", result->bucket().c_str());
    std::printf("device        %s (%s)\n", result->device().c_str(), result->arch().c_str());
    std::printf("key           %s\n", result->key().c_str());
    return 0;
  }

  if (*results) {
    return print_pages(
        globals,
        [&](const std::string& token) {
          return client->list_tuning_results(results_page_size, token);
        },
        results_token, results_all, print_results_table);
  }

  if (*compile) {
    v1::KernelRequest request = kernel_request(kernel, /*with_tile=*/true);
    request.set_use_tuned_config(use_tuned);
    request.set_line_info(line_info);
    // Skip the cubin transfer when nothing will use it.
    request.set_omit_cubin(compile_output.empty() && !(globals.json && compile_include_cubin));
    auto handle = client->compile(request);
    if (!handle) return fail(globals, handle.error());
    return print_handle(globals, std::move(handle).value(), compile_output,
                        compile_include_cubin);
  }

  if (*validate) {
    v1::ValidateRequest request;
    *request.mutable_kernel() = kernel_request(kernel, /*with_tile=*/true);
    request.mutable_kernel()->set_omit_cubin(true);  // the record is the answer
    *request.mutable_options() = validation;
    auto handle = client->validate(request);  // deadline: --timeout-ms
    if (!handle) return fail(globals, handle.error());
    if (globals.json)
      std::cout << to_json(*handle);
    else
      std::cout << fc::client::describe_validation(*handle);
    return handle->validation().passed() ? 0 : 3;
  }

  if (*get) {
    const bool want_cubin = !get_output.empty() || (globals.json && get_include_cubin);
    auto handle = client->get_kernel(key, omit_cubin || !want_cubin);
    if (!handle) return fail(globals, handle.error());
    return print_handle(globals, std::move(handle).value(), get_output, get_include_cubin);
  }

  if (*list) {
    return print_pages(
        globals, [&](const std::string& token) { return client->list_kernels(page_size, token); },
        page_token, all_pages, print_kernels_table);
  }

  if (*health) {
    auto status = client->health(service);
    if (!status) return fail(globals, status.error());
    if (globals.json)
      std::cout << "{\n \"status\": \"" << *status << "\"\n}\n";
    else
      std::cout << *status << "\n";
    return *status == "SERVING" ? 0 : 1;
  }

  if (*jobs) {
    auto listed = client->list_tune_jobs();
    if (!listed) return fail(globals, listed.error());
    if (globals.json) {
      std::cout << to_json(*listed);
      return 0;
    }
    if (listed->jobs().empty()) {
      std::cout << "no tune jobs\n";
      return 0;
    }
    std::printf("%-6s %-16s %-8s %-20s %8s  %s\n", "ID", "OWNER", "STATE", "TEMPLATE", "GPU-S",
                "BUCKET");
    for (const auto& job : listed->jobs())
      std::printf("%-6lld %-16s %-8s %-20s %8.1f  %s\n", static_cast<long long>(job.id()),
                  job.owner().c_str(), job.state().c_str(), job.template_id().c_str(),
                  job.gpu_seconds(), job.bucket().c_str());
    return 0;
  }

  if (*cancel) {
    auto cancelled = client->cancel_tune_job(cancel_id);
    if (!cancelled) return fail(globals, cancelled.error());
    if (globals.json)
      std::cout << to_json(*cancelled);
    else
      std::cout << "cancelled tune job " << cancelled->id() << " of " << cancelled->owner()
                << "\n";
    return 0;
  }

  if (*info) {
    auto server = client->server_info();
    if (!server) return fail(globals, server.error());
    if (globals.json) {
      std::cout << to_json(*server);
      return 0;
    }
    const auto join = [](const auto& items) {
      std::string out;
      for (const auto& item : items) out += (out.empty() ? "" : ", ") + item;
      return out.empty() ? std::string("-") : out;
    };
    std::cout << "version          " << server->version() << "\n"
              << "nvrtc            " << server->nvrtc_version() << "\n"
              << "default arch     " << server->default_arch() << "\n"
              << "gpu              "
              << (server->gpu_available()
                      ? server->gpu_name()
                      : "none (" + server->gpu_unavailable_reason() + ")")
              << "\n"
              << "supported archs  " << join(server->supported_archs()) << "\n"
              << "templates        " << join(server->templates()) << "\n";
    return 0;
  }
  return 2;  // unreachable: require_subcommand(1)
}
