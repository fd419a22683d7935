#include "eval/sanitizer_run.hpp"

#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "eval/evaluator.hpp"

extern char** environ;

namespace flashcore::eval {
namespace {

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

bool executable(const std::filesystem::path& path) { return ::access(path.c_str(), X_OK) == 0; }

}  // namespace

Result<std::string> find_compute_sanitizer() {
  if (const char* named = std::getenv("FLASHCORE_COMPUTE_SANITIZER"); named && *named)
    return std::string(named);
  std::vector<std::filesystem::path> places;
  if (const char* path = std::getenv("PATH")) {
    std::string all(path);
    size_t start = 0;
    while (start <= all.size()) {
      const size_t end = all.find(':', start);
      places.emplace_back(all.substr(start, end == std::string::npos ? std::string::npos : end - start));
      if (end == std::string::npos) break;
      start = end + 1;
    }
  }
  if (const char* cuda = std::getenv("CUDA_HOME"); cuda && *cuda)
    places.emplace_back(std::filesystem::path(cuda) / "bin");
  places.emplace_back("/usr/local/cuda/bin");
  for (const auto& dir : places)
    if (!dir.empty() && executable(dir / "compute-sanitizer")) return (dir / "compute-sanitizer").string();
  return make_error(ErrorCode::failed_precondition,
                    "compute-sanitizer not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin; or set "
                    "FLASHCORE_COMPUTE_SANITIZER)");
}

Result<v1::EvaluateResponse> evaluate_under_sanitizer(const v1::EvaluateRequest& request, int gpu,
                                                      std::chrono::milliseconds timeout) {
  auto sanitizer = find_compute_sanitizer();
  if (!sanitizer) return sanitizer.error();
  const std::string tool = request.sanitizer_tool();
  if (tool != "memcheck" && tool != "racecheck" && tool != "synccheck" && tool != "initcheck")
    return make_error(ErrorCode::invalid_argument,
                      "sanitizer_tool: " + tool + " (memcheck, racecheck, synccheck, initcheck)");
  std::error_code ec;
  char pattern[] = "/tmp/flashcore-sanitizer-XXXXXX";
  if (mkdtemp(pattern) == nullptr)
    return make_error(ErrorCode::internal, "mkdtemp for the sanitizer run failed");
  const std::filesystem::path dir(pattern);
  const auto in = dir / "request.pb", out = dir / "response.pb", log = dir / "sanitizer.log";
  {
    v1::EvaluateRequest inner = request;
    inner.clear_sanitizer_tool();
    std::ofstream file(in, std::ios::binary);
    file << inner.SerializeAsString();
  }
  const std::string self = std::filesystem::read_symlink("/proc/self/exe", ec).string();
  std::vector<std::string> args = {*sanitizer, "--tool", tool, "--error-exitcode", "7",
                                   "--print-limit", "20", "--log-file", log.string(),
                                   self, "--one-shot", in.string(), "--one-shot-out",
                                   out.string(), "--gpu", std::to_string(gpu)};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = fork();
  if (pid < 0) {
    std::filesystem::remove_all(dir, ec);
    return make_error(ErrorCode::internal, "fork for compute-sanitizer failed");
  }
  if (pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    execve(argv[0], argv.data(), environ);
    _exit(127);
  }
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  int status = 0;
  bool timed_out = false;
  for (;;) {
    const pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid) break;
    if (std::chrono::steady_clock::now() >= deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      timed_out = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const std::string report_text = read_file(log);
  const std::string response_bytes = read_file(out);
  std::filesystem::remove_all(dir, ec);
  if (timed_out)
    return make_error(ErrorCode::deadline_exceeded,
                      "compute-sanitizer " + tool + " still running after " +
                          std::to_string(timeout.count()) + " ms");
  // The tool's error lines ("========= Invalid __global__ write ...", hazards).
  std::string report;
  std::istringstream lines(report_text);
  int kept = 0;
  for (std::string line; std::getline(lines, line) && kept < 40;)
    if (line.find("=========") == 0 && line.find("COMPUTE-SANITIZER") == std::string::npos &&
        line != "=========") {
      report += line + "\n";
      ++kept;
    }
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  v1::EvaluateResponse response;
  if (!response.ParseFromString(response_bytes) && code == 0)
    return make_error(ErrorCode::internal, "the sanitizer run wrote no response");
  response.set_sanitizer_clean(code == 0);
  if (code != 0 && report.empty())
    report = "compute-sanitizer " + tool + " exited with code " + std::to_string(code);
  response.set_sanitizer_report(report);
  return response;
}

int run_one_shot(const std::string& in, const std::string& out, int gpu) {
  v1::EvaluateRequest request;
  if (!request.ParseFromString(read_file(in))) {
    std::fprintf(stderr, "flashcore_worker --one-shot: %s is not an EvaluateRequest\n", in.c_str());
    return 1;
  }
  auto evaluator = Evaluator::create(gpu);
  if (!evaluator) {
    std::fprintf(stderr, "flashcore_worker --one-shot: %s\n", evaluator.error().message.c_str());
    return 2;
  }
  auto result = (*evaluator)->evaluate(request);
  if (!result) {
    std::fprintf(stderr, "flashcore_worker --one-shot: %s\n", result.error().message.c_str());
    return 3;
  }
  std::ofstream file(out, std::ios::binary);
  file << result->SerializeAsString();
  return file ? 0 : 1;
}

}  // namespace flashcore::eval
