// The FlashCore client library: asks a flashcored daemon for compiled kernels
// over gRPC, and (launcher.hpp) launches them in the caller's process.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "common/result.hpp"
#include "flashcore/launcher.hpp"
#include "flashcore/v1/flashcore.pb.h"

namespace flashcore::client {

struct ConnectOptions {
  std::string address = "127.0.0.1:50051";
  std::chrono::milliseconds connect_timeout{5000};
  std::chrono::milliseconds call_timeout{300000};  // a cold compile takes seconds
  size_t max_message_bytes = size_t{64} << 20;     // cubins are a few hundred KB
  // Bearer token sent with every call ("authorization: Bearer <token>");
  // empty: $FLASHCORE_TOKEN, if set.
  std::string token;
  // TLS: the PEM CA bundle that signed the daemon's certificate. Empty: a
  // plaintext channel (loopback).
  std::string tls_ca_file;
  // Mutual TLS: this client's PEM certificate chain and key (both or neither).
  std::string tls_cert_file, tls_key_file;
  // The name the daemon's certificate must carry; empty: the address's host.
  std::string tls_server_name;
};

// Cancels a Tune from another thread (a Ctrl-C handler, a UI): the daemon
// then stops the job and records it cancelled. Usable before the call starts.
class TuneCancel {
 public:
  void cancel();
  bool cancelled() const;

 private:
  friend class Client;
  void attach(void* context);  // grpc::ClientContext*; null detaches
  mutable std::mutex mutex_;
  void* context_ = nullptr;
  bool cancelled_ = false;
};

// One channel to the daemon; calls are thread-safe. Errors keep the server's
// code (mapped to ErrorCode), "<RPC>: <server message>" as message and the
// server's detail (an NVRTC log, say) as detail.
class Client {
 public:
  // unavailable naming the address if the daemon does not answer within
  // connect_timeout.
  static Result<Client> connect(const ConnectOptions& options);

  Client(Client&&) noexcept;
  Client& operator=(Client&&) noexcept;
  ~Client();

  Result<v1::KernelHandle> compile(const v1::KernelRequest& request);
  // Compiles or fetches the kernel like compile(), then has the daemon run
  // the validation matrix on one of its GPUs; the record is the handle's
  // validation(). A kernel that fails validation (wrong, faulting, hanging)
  // is a value with validation().passed() false, not an error; a daemon
  // without GPU workers answers failed_precondition. Evaluation takes tens
  // of seconds and may queue behind other jobs on the GPU, so the call gets
  // `deadline` (zero: ConnectOptions::call_timeout), as tune() does.
  Result<v1::KernelHandle> validate(
      const v1::ValidateRequest& request,
      std::chrono::milliseconds deadline = std::chrono::milliseconds(0));
  // `shape`: run-time shape to compute the handle's launch geometry for.
  Result<v1::KernelHandle> get_kernel(const std::string& key, bool omit_cubin = false,
                                      const v1::Problem* shape = nullptr);
  Result<v1::ListKernelsResponse> list_kernels(int page_size, const std::string& page_token);
  Result<v1::ServerInfo> server_info();

  // Runs a tuning job, calling `on_progress` (on this thread) for every
  // streamed message, done included, and returns the result. The call gets
  // `deadline` (zero: ConnectOptions::call_timeout); `cancel` may stop it.
  Result<v1::TuningResult> tune(const v1::TuneRequest& request,
                                const std::function<void(const v1::TuneProgress&)>& on_progress,
                                std::shared_ptr<TuneCancel> cancel = nullptr,
                                std::chrono::milliseconds deadline = std::chrono::milliseconds(0));
  Result<v1::TuningResult> get_tuning_result(const v1::GetTuningResultRequest& request);
  Result<v1::ListTuningResultsResponse> list_tuning_results(int page_size,
                                                            const std::string& page_token);
  // The tuning database's recorded jobs (any status), and one job with every
  // trial it measured (not_found for an unknown id).
  Result<v1::ListTuningJobsResponse> list_tuning_jobs(int page_size,
                                                      const std::string& page_token);
  Result<v1::TuningJobTrials> get_tuning_job(int64_t job_id);
  // Tune jobs queued or running: this client's own (an admin's: all).
  Result<v1::ListTuneJobsResponse> list_tune_jobs();
  // Cancels one by its TuneJob.id: this client's own, or any for an admin.
  Result<v1::TuneJob> cancel_tune_job(int64_t id);
  // Admin role: empties the daemon's memory and disk tiers (and the fleet's
  // shared tier with include_shared), or evicts by key or down to a size.
  Result<v1::CacheChange> clear_cache(bool include_shared = false);
  Result<v1::CacheChange> evict_cache(const v1::EvictCacheRequest& request);
  // grpc.health.v1 status name: "SERVING", "NOT_SERVING", "UNKNOWN", ...
  Result<std::string> health(const std::string& service = "");

  const ConnectOptions& options() const;

  struct Impl;

 private:
  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Multi-line human summary of a handle: key, kernel name, cache tier, compile
// time, arch, launch geometry, resources and cubin size.
std::string describe(const v1::KernelHandle& handle);

// Multi-line human summary of a handle's validation record: the error
// against fp64, determinism, stability, the ptxas resources (spills and stack
// are part of the verdict), passed yes/no and the detail.
std::string describe_validation(const v1::KernelHandle& handle);

// "fp16" / "bf16" / "unspecified"; "bshd" / "bhsd".
std::string dtype_label(v1::DType dtype);
std::string layout_label(v1::Layout layout);

}  // namespace flashcore::client
