// flashcore_worker: one per GPU, started by the daemon (DESIGN.md §4). Holds
// the GPU's primary context and serves EvalWorker on a Unix domain socket.
//
//   flashcore_worker --socket PATH --gpu N [--log-level L]
//
// Exit codes: 0 after SIGTERM/SIGINT; 1 bad arguments or cannot listen;
// 2 no CUDA driver or no such GPU (restarting will not help); 3 a kernel
// faulted and the context is lost (the daemon starts a fresh worker).
#include <CLI/CLI.hpp>
#include <pthread.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "eval/evaluator.hpp"
#include "eval/sanitizer_run.hpp"
#include "eval/worker_service.hpp"

namespace {

constexpr int kExitOk = 0;
constexpr int kExitUsage = 1;
constexpr int kExitNoGpu = 2;
constexpr int kExitContextLost = 3;

// Time given to a call in flight. On SIGTERM the daemon is stopping and wants
// no result: the evaluation sees the cancellation between phases (and the
// daemon SIGKILLs after its own grace). After a fault, the INTERNAL reply
// must go out before the exit; it is already written by then.
constexpr std::chrono::milliseconds kSigtermDrain{1000};
constexpr std::chrono::milliseconds kFaultDrain{3000};

sigset_t shutdown_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  return set;
}

struct WorkerArgs {
  std::string socket;
  int gpu = 0;
  std::string log_level = "info";
  std::string one_shot, one_shot_out;
};

// Parses the command line into `args`; an exit code when the process should
// stop here (--help, or a usage error that CLI11 has printed).
std::optional<int> parse_args(int argc, char** argv, WorkerArgs& args) {
  CLI::App app("flashcore_worker: evaluates kernels on one GPU for flashcored, over a Unix socket");
  auto* socket_option =
      app.add_option("--socket", args.socket, "Unix socket path to serve EvalWorker on");
  // compute-sanitizer's target (eval/sanitizer_run.cpp): one evaluation, no server.
  app.add_option("--one-shot", args.one_shot,
                 "evaluate the serialized EvaluateRequest in this file and exit")
      ->excludes(socket_option);
  app.add_option("--one-shot-out", args.one_shot_out,
                 "where --one-shot writes the EvaluateResponse");
  app.add_option("--gpu", args.gpu, "CUDA device ordinal")->check(CLI::NonNegativeNumber);
  app.add_option("--log-level", args.log_level, "trace, debug, info, warn, error, critical or off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? kExitOk : kExitUsage;
  }
  return std::nullopt;
}

// stderr: the daemon collects it; stdout stays free.
void log_to_stderr(int gpu, const std::string& level) {
  auto logger = spdlog::stderr_color_mt("worker");
  logger->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [worker gpu " + std::to_string(gpu) + " pid " +
                      std::to_string(::getpid()) + "] [%l] %v");
  spdlog::set_default_logger(logger);
  spdlog::set_level(spdlog::level::from_str(level));
}

// Detached threads: they may still be waiting when a fault ends the process.
// The first takes SIGTERM/SIGINT. The second stops the worker once its
// daemon is gone (a SIGKILLed daemon sends no SIGTERM): once it is
// re-parented. Polled, because PR_SET_PDEATHSIG fires when the spawning
// *thread* exits, which in the daemon is any pool thread, not the daemon's end.
void watch_signals_and_parent(const std::shared_ptr<flashcore::eval::StopLatch>& latch,
                              const sigset_t& signals) {
  using flashcore::eval::StopReason;
  std::thread([latch, signals] {
    int received = 0;
    if (sigwait(&signals, &received) != 0) received = SIGTERM;
    spdlog::info("SIG{} received, shutting down", sigabbrev_np(received));
    latch->set(StopReason::requested);
  }).detach();
  std::thread([latch, parent = getppid()] {
    while (!latch->reason()) {
      if (getppid() != parent) {
        spdlog::warn("daemon (pid {}) is gone, shutting down", parent);
        latch->set(StopReason::requested);
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
  }).detach();
}

// Holds the GPU's context and serves EvalWorker on `socket` until a signal,
// the daemon's end or a lost context; the process's exit code.
int serve(const WorkerArgs& args, const sigset_t& signals) {
  using namespace flashcore;
  auto evaluator = eval::Evaluator::create(args.gpu);
  if (!evaluator) {
    std::fprintf(stderr, "flashcore_worker: GPU %d unavailable: %s\n", args.gpu,
                 evaluator.error().message.c_str());
    return kExitNoGpu;
  }
  auto latch = std::make_shared<eval::StopLatch>();
  auto server = eval::WorkerServer::start(args.socket, **evaluator, latch);
  if (!server) {
    std::fprintf(stderr, "flashcore_worker: %s\n", server.error().message.c_str());
    return kExitUsage;
  }
  spdlog::info("serving on unix:{}", args.socket);
  watch_signals_and_parent(latch, signals);

  const eval::StopReason reason = latch->wait();
  (*server)->shutdown(reason == eval::StopReason::context_lost ? kFaultDrain : kSigtermDrain);
  if (reason == eval::StopReason::context_lost) {
    spdlog::error("exiting with code {}: the CUDA context is lost", kExitContextLost);
    spdlog::shutdown();
    // No destructors: unloading modules or releasing a faulted context can
    // block or fail, and the driver tears the context down with the process.
    std::_Exit(kExitContextLost);
  }
  server.value().reset();
  evaluator.value().reset();
  spdlog::info("stopped");
  spdlog::shutdown();
  return kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  // Blocked before any thread starts, so every thread inherits the mask and
  // only the sigwait thread ever takes them (the driver and gRPC start
  // threads of their own).
  const sigset_t signals = shutdown_signals();
  if (const int error = pthread_sigmask(SIG_BLOCK, &signals, nullptr); error != 0) {
    std::fprintf(stderr, "flashcore_worker: pthread_sigmask: %s\n", std::strerror(error));
    return kExitUsage;
  }
  WorkerArgs args;
  if (auto exit = parse_args(argc, argv, args)) return *exit;
  if (!args.one_shot.empty()) {
    if (args.one_shot_out.empty()) {
      std::fprintf(stderr, "flashcore_worker: --one-shot needs --one-shot-out\n");
      return kExitUsage;
    }
    return flashcore::eval::run_one_shot(args.one_shot, args.one_shot_out, args.gpu);
  }
  if (args.socket.empty()) {
    std::fprintf(stderr, "flashcore_worker: --socket is required\n");
    return kExitUsage;
  }
  log_to_stderr(args.gpu, args.log_level);
  return serve(args, signals);
}
