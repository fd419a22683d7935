// flashcore_compile_worker: compiles one submitted source with NVRTC and
// exits (DESIGN.md §4: untrusted source never compiles in the daemon).
//
//   flashcore_compile_worker --cpu-seconds N --memory-mb M
//
// Reads a serialized flashcore.v1.SourceCompileRequest on stdin, writes a
// SourceCompileResponse on stdout. Before reading it puts itself under its
// limits (setrlimit: CPU time, address space, file size, no core dumps,
// descriptors) and moves into an empty folder it then deletes, so a relative
// path resolves to nothing. The daemon also kills it past a wall-clock
// deadline and caps what it reads back. Exit codes: 0 answered (compiled or
// not), 2 bad arguments or input, 4 out of memory.
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <new>
#include <string>

#include "evolve/source_compile.hpp"

namespace {

constexpr int kExitOutOfMemory = 4;
constexpr size_t kMaxInputBytes = size_t{64} << 20;

[[noreturn]] void out_of_memory() {
  static const char message[] = "flashcore_compile_worker: out of memory (address-space limit)\n";
  (void)!write(2, message, sizeof(message) - 1);
  _exit(kExitOutOfMemory);
}

bool limit(int resource, rlim_t soft, rlim_t hard, const char* name) {
  struct rlimit value{soft, hard};
  if (setrlimit(resource, &value) == 0) return true;
  std::fprintf(stderr, "flashcore_compile_worker: setrlimit(%s): %s\n", name, std::strerror(errno));
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  long cpu_seconds = 60, memory_mb = 4096;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    char* end = nullptr;
    const long value = std::strtol(argv[i + 1], &end, 10);
    if (end == argv[i + 1] || *end != '\0' || value <= 0) {
      std::fprintf(stderr, "flashcore_compile_worker: bad value for %s\n", flag.c_str());
      return 2;
    }
    if (flag == "--cpu-seconds") {
      cpu_seconds = value;
    } else if (flag == "--memory-mb") {
      memory_mb = value;
    } else {
      std::fprintf(stderr, "flashcore_compile_worker: unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  if (argc % 2 == 0) {
    std::fprintf(stderr, "usage: flashcore_compile_worker --cpu-seconds N --memory-mb M\n");
    return 2;
  }
  std::set_new_handler(out_of_memory);
  // SIGXCPU at the soft limit (default action: terminate), SIGKILL a second later.
  const rlim_t cpu = static_cast<rlim_t>(cpu_seconds);
  const rlim_t memory = static_cast<rlim_t>(memory_mb) << 20;
  if (!limit(RLIMIT_CPU, cpu, cpu + 1, "RLIMIT_CPU") ||
      !limit(RLIMIT_AS, memory, memory, "RLIMIT_AS") ||
      !limit(RLIMIT_FSIZE, 0, 0, "RLIMIT_FSIZE") || !limit(RLIMIT_CORE, 0, 0, "RLIMIT_CORE") ||
      !limit(RLIMIT_NOFILE, 64, 64, "RLIMIT_NOFILE"))
    return 2;

  char folder[] = "/tmp/flashcore-compile-XXXXXX";
  if (mkdtemp(folder) == nullptr || chdir(folder) != 0 || rmdir(folder) != 0) {
    std::fprintf(stderr, "flashcore_compile_worker: cannot enter an empty folder: %s\n",
                 std::strerror(errno));
    return 2;
  }

  std::string input;
  char buffer[65536];
  for (;;) {
    const ssize_t n = read(0, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      std::fprintf(stderr, "flashcore_compile_worker: read: %s\n", std::strerror(errno));
      return 2;
    }
    if (n == 0) break;
    input.append(buffer, static_cast<size_t>(n));
    if (input.size() > kMaxInputBytes) {
      std::fprintf(stderr, "flashcore_compile_worker: input over %zu bytes\n", kMaxInputBytes);
      return 2;
    }
  }
  flashcore::v1::SourceCompileRequest request;
  if (!request.ParseFromString(input)) {
    std::fprintf(stderr, "flashcore_compile_worker: stdin is not a SourceCompileRequest\n");
    return 2;
  }
  const std::string output = flashcore::evolve::compile_source(request).SerializeAsString();
  size_t written = 0;
  while (written < output.size()) {
    const ssize_t n = write(1, output.data() + written, output.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return 2;
    written += static_cast<size_t>(n);
  }
  return 0;
}
