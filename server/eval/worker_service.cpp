#include "eval/worker_service.hpp"

#include "eval/sanitizer_run.hpp"

#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <cerrno>
#include <cstring>
#include <system_error>

namespace flashcore::eval {
namespace {

// Cubins are a few hundred KB; a request carries at most kMaxTimedKernels.
constexpr int kMaxMessageBytes = 64 << 20;

}  // namespace

// ---- StopLatch ----

void StopLatch::set(StopReason reason) {
  {
    std::lock_guard lock(mutex_);
    if (reason_) return;
    reason_ = reason;
  }
  changed_.notify_all();
}

StopReason StopLatch::wait() {
  std::unique_lock lock(mutex_);
  changed_.wait(lock, [this] { return reason_.has_value(); });
  return *reason_;
}

std::optional<StopReason> StopLatch::reason() const {
  std::lock_guard lock(mutex_);
  return reason_;
}

// ---- WorkerService ----

WorkerService::WorkerService(Evaluator& evaluator, std::shared_ptr<StopLatch> latch)
    : evaluator_(evaluator), latch_(std::move(latch)) {}

grpc::Status WorkerService::Evaluate(grpc::ServerContext* context,
                                     const v1::EvaluateRequest* request,
                                     v1::EvaluateResponse* response) {
  if (!request->sanitizer_tool().empty() && request->kernels_size() == 0) {
    // In a child under compute-sanitizer; this worker's context is untouched
    // (a fault there ends only the child).
    auto sanitized = evaluate_under_sanitizer(*request, evaluator_.info().gpu_index(),
                                              std::chrono::minutes(5));
    if (!sanitized) return grpc::Status(to_grpc_code(sanitized.error().code), sanitized.error().message);
    *response = std::move(sanitized).value();
    return grpc::Status::OK;
  }
  auto result = evaluator_.evaluate(*request, [context] { return context->IsCancelled(); });
  if (result) {
    *response = std::move(result.value());
    return grpc::Status::OK;
  }
  const Error& error = result.error();
  if (error.code == ErrorCode::internal && evaluator_.context_lost()) {
    // The reply still goes out: main shuts the server down with a drain
    // deadline, which waits for this call to finish, then exits 3.
    spdlog::error("kernel {} faulted: {}; exiting for a fresh context",
                  request_kernels_label(*request), error.message);
    latch_->set(StopReason::context_lost);
  } else {
    spdlog::warn("evaluate {}: {}", request_kernels_label(*request), error.message);
  }
  return grpc::Status(to_grpc_code(error.code), error.message);
}

grpc::Status WorkerService::Info(grpc::ServerContext*, const v1::WorkerInfoRequest*,
                                 v1::WorkerInfo* response) {
  *response = evaluator_.info();
  return grpc::Status::OK;
}

// ---- WorkerServer ----

WorkerServer::WorkerServer(std::filesystem::path socket, std::unique_ptr<WorkerService> service,
                           std::unique_ptr<grpc::Server> server)
    : socket_(std::move(socket)), service_(std::move(service)), server_(std::move(server)) {}

WorkerServer::~WorkerServer() { shutdown(std::chrono::milliseconds(0)); }

Result<std::unique_ptr<WorkerServer>> WorkerServer::start(const std::filesystem::path& socket,
                                                          Evaluator& evaluator,
                                                          std::shared_ptr<StopLatch> latch) {
  const std::string path = socket.string();
  if (path.empty()) return make_error(ErrorCode::invalid_argument, "--socket: empty path");
  if (path.size() >= sizeof(sockaddr_un::sun_path))
    return make_error(ErrorCode::invalid_argument,
                      "--socket: " + path + " is " + std::to_string(path.size()) +
                          " bytes; a Unix socket path has at most " +
                          std::to_string(sizeof(sockaddr_un::sun_path) - 1));
  // A socket left by a worker that died: bind would fail on it. Anything
  // else at that path is not ours to remove.
  std::error_code ec;
  if (std::filesystem::is_socket(socket, ec)) std::filesystem::remove(socket, ec);

  auto service = std::make_unique<WorkerService>(evaluator, std::move(latch));
  grpc::ServerBuilder builder;
  builder.AddListeningPort("unix:" + path, grpc::InsecureServerCredentials());
  builder.RegisterService(service.get());
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder.SetMaxSendMessageSize(kMaxMessageBytes);
  // The socket is created by bind() under the umask: 0077 makes it 0600
  // from the start, so no other user can connect even briefly.
  const mode_t previous = ::umask(0077);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ::umask(previous);
  if (!server)
    return make_error(ErrorCode::unavailable, "cannot listen on unix:" + path +
                                                  " (is the folder there and writable?)");
  if (::chmod(path.c_str(), 0600) != 0)
    spdlog::warn("chmod 0600 {}: {}", path, std::strerror(errno));
  return std::unique_ptr<WorkerServer>(
      new WorkerServer(socket, std::move(service), std::move(server)));
}

void WorkerServer::shutdown(std::chrono::milliseconds drain) {
  if (shut_down_) return;
  shut_down_ = true;
  server_->Shutdown(std::chrono::system_clock::now() + drain);
  server_->Wait();
  std::error_code ec;
  if (std::filesystem::is_socket(socket_, ec)) std::filesystem::remove(socket_, ec);
}

}  // namespace flashcore::eval
