// The shared layer of the `flashcore` commands (builtin/, one file per
// command, as git's builtin/): the global options, the output layer (one
// line per failure, text or --json), the option groups of the kernel
// commands and the page walker.
#pragma once

#include <google/protobuf/message.h>

#include <CLI/CLI.hpp>
#include <cstdint>
#include <iostream>
#include <string>

#include "flashcore/client.hpp"

namespace flashcore::cli {

namespace fc = ::flashcore;

struct Globals {
  std::string address = "127.0.0.1:50051";
  bool json = false;
  bool verbose = false;
  int64_t timeout_ms = 300000;
  std::string token;            // empty: none ($FLASHCORE_TOKEN through CLI11's envname)
  std::string tls_ca, tls_cert, tls_key, tls_server_name;
};

// ---- Output ----
// Prints "flashcore: <message>" on one line (the detail with --verbose); returns 1.
int fail(const Globals& globals, const fc::Error& error);
int fail(const Globals& globals, const std::string& message);
fc::Result<fc::client::Client> connect(const Globals& globals);
std::string to_json(const google::protobuf::Message& message);
fc::Status write_file(const std::string& path, const std::string& bytes);
// Prints a handle (text or JSON) and writes its cubin to `output` if given.
int print_handle(const Globals& globals, v1::KernelHandle handle, const std::string& output,
                 bool include_cubin);
std::string config_label(const v1::TileConfig& c);

// ---- Option groups ----
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

void add_problem_options(CLI::App& command, KernelFlags& f);
void add_tile_options(CLI::App& command, KernelFlags& f);
// `with_tile` false leaves the config unset (tune searches it).
v1::KernelRequest kernel_request(const KernelFlags& f, bool with_tile);

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

}  // namespace flashcore::cli
