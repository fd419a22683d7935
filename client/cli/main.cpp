// `flashcore`: the command-line client of flashcored. Every failure prints one
// line "flashcore: <message>" on stderr (the server's detail, e.g. the NVRTC
// log, follows with --verbose) and exits 1; usage errors exit 2; `validate`
// exits 3 when the kernel fails validation (the record is printed). Each
// command is a file of builtin/; the output layer and option groups they
// share are cli.hpp's.
#include <CLI/CLI.hpp>
#include <memory>
#include <vector>

#include "builtin.hpp"
#include "cli.hpp"

namespace fc = flashcore;
using fc::cli::Globals;

namespace {

void add_global_options(CLI::App& app, Globals& globals) {
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
}

}  // namespace

int main(int argc, char** argv) {
  Globals globals;
  CLI::App app{"flashcore: client of the flashcored kernel service (compile, validate, tune, "
               "fetch and list FlashAttention-style kernels)"};
  app.require_subcommand(1);
  app.fallthrough();  // global options may follow the subcommand too
  add_global_options(app, globals);
  // In the order `flashcore --help` lists them.
  std::vector<std::unique_ptr<fc::cli::Command>> commands;
  commands.push_back(fc::cli::add_compile(app));
  commands.push_back(fc::cli::add_validate(app));
  commands.push_back(fc::cli::add_tune(app));
  commands.push_back(fc::cli::add_results(app));
  commands.push_back(fc::cli::add_stats(app));
  commands.push_back(fc::cli::add_cache(app));
  commands.push_back(fc::cli::add_get(app));
  commands.push_back(fc::cli::add_list(app));
  commands.push_back(fc::cli::add_health(app));
  commands.push_back(fc::cli::add_info(app));
  commands.push_back(fc::cli::add_jobs(app));
  commands.push_back(fc::cli::add_cancel(app));

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }

  for (auto& command : commands) {
    if (!command->selected()) continue;
    if (!command->needs_daemon()) return command->run(globals, nullptr);
    command->before_connect();
    auto client = fc::cli::connect(globals);
    if (!client) return fc::cli::fail(globals, client.error());
    return command->run(globals, &*client);
  }
  return 2;  // unreachable: require_subcommand(1)
}
