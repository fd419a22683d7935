#include "cache/atomic_file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>
#include <string>
#include <system_error>

namespace flashcore {
namespace {

namespace fs = std::filesystem;

Error io_error(const std::string& what, const fs::path& path, int err) {
  return make_error(ErrorCode::internal, what + " " + path.string() + ": " + std::strerror(err));
}

// Unique per process and per call, so concurrent writers of one target
// (two threads, or two daemons sharing a folder) never share a temp file.
std::string temp_suffix() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return ".tmp." + std::to_string(::getpid()) + "." + std::to_string(rng());
}

Status write_all(int fd, std::string_view contents, const fs::path& path) {
  const char* data = contents.data();
  size_t left = contents.size();
  while (left > 0) {
    const ssize_t n = ::write(fd, data, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      return io_error("cannot write", path, errno);
    }
    data += n;
    left -= static_cast<size_t>(n);
  }
  return ok_status();
}

// Makes the rename itself durable; without it a crash can lose the new name.
Status sync_directory(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return io_error("cannot open folder", dir, errno);
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return io_error("cannot fsync folder", dir, err);
  return ok_status();
}

}  // namespace

Status write_file_atomically(const fs::path& path, std::string_view contents) {
  const fs::path dir = path.has_parent_path() ? path.parent_path() : fs::path(".");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec)
    return make_error(ErrorCode::internal,
                      "cannot create folder " + dir.string() + ": " + ec.message());

  // Same folder as the target: rename() is only atomic within one filesystem.
  fs::path temp = path;
  temp += temp_suffix();
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return io_error("cannot create", temp, errno);

  auto fail = [&](Error error) -> Status {
    ::unlink(temp.c_str());
    return error;
  };

  if (Status written = write_all(fd, contents, temp); !written.ok()) {
    ::close(fd);
    return fail(written.error());
  }
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    return fail(io_error("cannot fsync", temp, err));
  }
  if (::close(fd) != 0) return fail(io_error("cannot close", temp, errno));
  if (::rename(temp.c_str(), path.c_str()) != 0)
    return fail(io_error("cannot rename " + temp.string() + " to", path, errno));
  return sync_directory(dir);
}

}  // namespace flashcore
