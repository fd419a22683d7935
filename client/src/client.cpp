#include "flashcore/client.hpp"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <cstdio>
#include <optional>
#include <sstream>
#include <utility>

#include "flashcore/v1/flashcore.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace flashcore::client {
namespace {

ErrorCode code_for(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::OUT_OF_RANGE:
      return ErrorCode::invalid_argument;
    case grpc::StatusCode::NOT_FOUND:
      return ErrorCode::not_found;
    case grpc::StatusCode::FAILED_PRECONDITION:
      return ErrorCode::failed_precondition;
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return ErrorCode::resource_exhausted;
    case grpc::StatusCode::UNAVAILABLE:
      return ErrorCode::unavailable;
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return ErrorCode::deadline_exceeded;
    case grpc::StatusCode::CANCELLED:
      return ErrorCode::cancelled;
    case grpc::StatusCode::UNAUTHENTICATED:
      return ErrorCode::unauthenticated;
    case grpc::StatusCode::PERMISSION_DENIED:
      return ErrorCode::permission_denied;
    default:
      return ErrorCode::internal;
  }
}

// The server appends its detail (an NVRTC log, say) to the status message
// for clients that only show the message; here the message keeps its first
// line and the detail travels separately.
Error rpc_error(const char* rpc, const grpc::Status& status) {
  std::string message = status.error_message();
  std::string detail = status.error_details();
  if (const auto newline = message.find('\n'); newline != std::string::npos) {
    if (detail.empty()) detail = message.substr(newline + 1);
    message.resize(newline);
  }
  return make_error(code_for(status.error_code()), std::string(rpc) + ": " + message,
                    std::move(detail));
}

Result<std::string> read_file(const char* what, const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file)
    return make_error(ErrorCode::invalid_argument,
                      std::string(what) + ": cannot read " + path + ": " + std::strerror(errno));
  std::ostringstream text;
  text << file.rdbuf();
  return text.str();
}

Result<std::shared_ptr<grpc::ChannelCredentials>> channel_credentials(
    const ConnectOptions& options, grpc::ChannelArguments& args) {
  if (options.tls_ca_file.empty()) {
    if (!options.tls_cert_file.empty())
      return make_error(ErrorCode::invalid_argument, "a client certificate needs --tls-ca too");
    return grpc::InsecureChannelCredentials();
  }
  grpc::SslCredentialsOptions ssl;
  auto ca = read_file("tls_ca", options.tls_ca_file);
  if (!ca) return ca.error();
  ssl.pem_root_certs = *ca;
  if (options.tls_cert_file.empty() != options.tls_key_file.empty())
    return make_error(ErrorCode::invalid_argument,
                      "the client certificate and key go together (both or neither)");
  if (!options.tls_cert_file.empty()) {
    auto cert = read_file("tls_cert", options.tls_cert_file);
    if (!cert) return cert.error();
    auto key = read_file("tls_key", options.tls_key_file);
    if (!key) return key.error();
    ssl.pem_cert_chain = *cert;
    ssl.pem_private_key = *key;
  }
  if (!options.tls_server_name.empty())
    args.SetSslTargetNameOverride(options.tls_server_name);
  return grpc::SslCredentials(ssl);
}

}  // namespace

struct Client::Impl {
  ConnectOptions options;
  std::string authorization;  // "Bearer <token>", or empty
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::FlashCore::Stub> stub;
  std::unique_ptr<grpc::health::v1::Health::Stub> health;

  // Every call gets the same deadline budget (a cold compile is the slowest
  // of the unary calls) unless it names its own (tune, validate).
  void prepare(grpc::ClientContext& context,
               std::chrono::milliseconds deadline = std::chrono::milliseconds(0)) const {
    context.set_deadline(std::chrono::system_clock::now() +
                         (deadline.count() > 0 ? deadline : options.call_timeout));
    if (!authorization.empty()) context.AddMetadata("authorization", authorization);
  }
};

Result<Client> Client::connect(const ConnectOptions& options) {
  grpc::ChannelArguments args;
  const int max_bytes = static_cast<int>(
      std::min<size_t>(options.max_message_bytes, static_cast<size_t>(INT32_MAX)));
  args.SetMaxReceiveMessageSize(max_bytes);
  args.SetMaxSendMessageSize(max_bytes);
  auto credentials = channel_credentials(options, args);
  if (!credentials) return credentials.error();
  auto channel = grpc::CreateCustomChannel(options.address, *credentials, args);
  if (!channel->WaitForConnected(std::chrono::system_clock::now() + options.connect_timeout)) {
    return make_error(ErrorCode::unavailable,
                      "cannot reach flashcored at " + options.address + " within " +
                          std::to_string(options.connect_timeout.count()) + " ms" +
                          (options.tls_ca_file.empty()
                               ? ""
                               : " (TLS: check --tls-ca and the daemon's certificate name)"));
  }
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  std::string token = options.token;
  if (token.empty())
    if (const char* from_env = std::getenv("FLASHCORE_TOKEN")) token = from_env;
  if (!token.empty()) impl->authorization = "Bearer " + token;
  impl->stub = v1::FlashCore::NewStub(channel);
  impl->health = grpc::health::v1::Health::NewStub(channel);
  impl->channel = std::move(channel);
  return Client(std::move(impl));
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::Client(Client&&) noexcept = default;
Client& Client::operator=(Client&&) noexcept = default;
Client::~Client() = default;

const ConnectOptions& Client::options() const { return impl_->options; }

void TuneCancel::cancel() {
  std::lock_guard lock(mutex_);
  cancelled_ = true;
  if (context_ != nullptr) static_cast<grpc::ClientContext*>(context_)->TryCancel();
}

bool TuneCancel::cancelled() const {
  std::lock_guard lock(mutex_);
  return cancelled_;
}

void TuneCancel::attach(void* context) {
  std::lock_guard lock(mutex_);
  context_ = context;
  if (context_ != nullptr && cancelled_) static_cast<grpc::ClientContext*>(context_)->TryCancel();
}

Result<v1::TuningResult> Client::tune(
    const v1::TuneRequest& request,
    const std::function<void(const v1::TuneProgress&)>& on_progress,
    std::shared_ptr<TuneCancel> cancel, std::chrono::milliseconds deadline) {
  grpc::ClientContext context;
  impl_->prepare(context, deadline);
  if (cancel) cancel->attach(&context);
  auto reader = impl_->stub->Tune(&context, request);
  v1::TuneProgress progress;
  std::optional<v1::TuningResult> result;
  while (reader->Read(&progress)) {
    if (on_progress) on_progress(progress);
    if (progress.has_done()) result = progress.done();
  }
  const grpc::Status status = reader->Finish();
  if (cancel) cancel->attach(nullptr);
  if (!status.ok()) return rpc_error("Tune", status);
  if (!result) return make_error(ErrorCode::internal, "Tune: the stream ended without a result");
  return *result;
}

Result<v1::TuningResult> Client::get_tuning_result(const v1::GetTuningResultRequest& request) {
  grpc::ClientContext context;
  impl_->prepare(context);
  v1::TuningResult result;
  const grpc::Status status = impl_->stub->GetTuningResult(&context, request, &result);
  if (!status.ok()) return rpc_error("GetTuningResult", status);
  return result;
}

Result<v1::ListTuningResultsResponse> Client::list_tuning_results(int page_size,
                                                                  const std::string& page_token) {
  v1::ListTuningResultsRequest request;
  request.set_page_size(page_size);
  request.set_page_token(page_token);
  grpc::ClientContext context;
  impl_->prepare(context);
  v1::ListTuningResultsResponse response;
  const grpc::Status status = impl_->stub->ListTuningResults(&context, request, &response);
  if (!status.ok()) return rpc_error("ListTuningResults", status);
  return response;
}

Result<v1::ListTuningJobsResponse> Client::list_tuning_jobs(int page_size,
                                                            const std::string& page_token) {
  v1::ListTuningJobsRequest request;
  request.set_page_size(page_size);
  request.set_page_token(page_token);
  grpc::ClientContext context;
  impl_->prepare(context);
  v1::ListTuningJobsResponse response;
  const grpc::Status status = impl_->stub->ListTuningJobs(&context, request, &response);
  if (!status.ok()) return rpc_error("ListTuningJobs", status);
  return response;
}

Result<v1::TuningJobTrials> Client::get_tuning_job(int64_t job_id) {
  v1::GetTuningJobRequest request;
  request.set_job_id(job_id);
  grpc::ClientContext context;
  impl_->prepare(context);
  v1::TuningJobTrials response;
  const grpc::Status status = impl_->stub->GetTuningJob(&context, request, &response);
  if (!status.ok()) return rpc_error("GetTuningJob", status);
  return response;
}

Result<v1::ListTuneJobsResponse> Client::list_tune_jobs() {
  grpc::ClientContext context;
  impl_->prepare(context);
  v1::ListTuneJobsResponse response;
  const grpc::Status status =
      impl_->stub->ListTuneJobs(&context, v1::ListTuneJobsRequest{}, &response);
  if (!status.ok()) return rpc_error("ListTuneJobs", status);
  return response;
}

Result<v1::TuneJob> Client::cancel_tune_job(int64_t id) {
  v1::CancelTuneJobRequest request;
  request.set_id(id);
  grpc::ClientContext context;
  impl_->prepare(context);
  v1::CancelTuneJobResponse response;
  const grpc::Status status = impl_->stub->CancelTuneJob(&context, request, &response);
  if (!status.ok()) return rpc_error("CancelTuneJob", status);
  return response.job();
}

Result<v1::CacheChange> Client::clear_cache(bool include_shared) {
  v1::ClearCacheRequest request;
  request.set_include_shared(include_shared);
  grpc::ClientContext context;
  impl_->prepare(context);
  v1::CacheChange response;
  const grpc::Status status = impl_->stub->ClearCache(&context, request, &response);
  if (!status.ok()) return rpc_error("ClearCache", status);
  return response;
}

Result<v1::CacheChange> Client::evict_cache(const v1::EvictCacheRequest& request) {
  grpc::ClientContext context;
  impl_->prepare(context);
  v1::CacheChange response;
  const grpc::Status status = impl_->stub->EvictCache(&context, request, &response);
  if (!status.ok()) return rpc_error("EvictCache", status);
  return response;
}

Result<v1::KernelHandle> Client::compile(const v1::KernelRequest& request) {
  grpc::ClientContext context;
  impl_->prepare(context);
  v1::KernelHandle handle;
  const grpc::Status status = impl_->stub->Compile(&context, request, &handle);
  if (!status.ok()) return rpc_error("Compile", status);
  return handle;
}

Result<v1::KernelHandle> Client::validate(const v1::ValidateRequest& request,
                                          std::chrono::milliseconds deadline) {
  grpc::ClientContext context;
  impl_->prepare(context, deadline);
  v1::KernelHandle handle;
  const grpc::Status status = impl_->stub->Validate(&context, request, &handle);
  if (!status.ok()) return rpc_error("Validate", status);
  return handle;
}

Result<v1::KernelHandle> Client::get_kernel(const std::string& key, bool omit_cubin,
                                            const v1::Problem* shape) {
  v1::GetKernelRequest request;
  request.set_key(key);
  request.set_omit_cubin(omit_cubin);
  if (shape != nullptr) *request.mutable_problem() = *shape;
  grpc::ClientContext context;
  impl_->prepare(context);
  v1::KernelHandle handle;
  const grpc::Status status = impl_->stub->GetKernel(&context, request, &handle);
  if (!status.ok()) return rpc_error("GetKernel", status);
  return handle;
}

Result<v1::ListKernelsResponse> Client::list_kernels(int page_size,
                                                     const std::string& page_token) {
  v1::ListKernelsRequest request;
  request.set_page_size(page_size);
  request.set_page_token(page_token);
  grpc::ClientContext context;
  impl_->prepare(context);
  v1::ListKernelsResponse response;
  const grpc::Status status = impl_->stub->ListKernels(&context, request, &response);
  if (!status.ok()) return rpc_error("ListKernels", status);
  return response;
}

Result<v1::ServerInfo> Client::server_info() {
  grpc::ClientContext context;
  impl_->prepare(context);
  v1::ServerInfo info;
  const grpc::Status status =
      impl_->stub->GetServerInfo(&context, v1::GetServerInfoRequest(), &info);
  if (!status.ok()) return rpc_error("GetServerInfo", status);
  return info;
}

Result<std::string> Client::health(const std::string& service) {
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::ClientContext context;
  impl_->prepare(context);
  grpc::health::v1::HealthCheckResponse response;
  const grpc::Status status = impl_->health->Check(&context, request, &response);
  if (!status.ok()) return rpc_error("Health.Check", status);
  return grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status());
}

std::string dtype_label(v1::DType dtype) {
  switch (dtype) {
    case v1::DTYPE_FP16:
      return "fp16";
    case v1::DTYPE_BF16:
      return "bf16";
    default:
      return "unspecified";
  }
}

std::string layout_label(v1::Layout layout) {
  return layout == v1::LAYOUT_BHSD ? "bhsd" : "bshd";
}

namespace {

std::string tier_label(v1::CacheTier tier) {
  switch (tier) {
    case v1::CACHE_TIER_MEMORY:
      return "memory cache";
    case v1::CACHE_TIER_DISK:
      return "disk cache";
    case v1::CACHE_TIER_COMPILED:
      return "compiled now";
    case v1::CACHE_TIER_SHARED:
      return "shared cache (fleet)";
    default:
      return "unspecified";
  }
}

std::string fixed(double value, int decimals) {
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), "%.*f", decimals, value);
  return buffer;
}

// Errors span 1e-7 (fp16 against fp64) to 1e+0 (a wrong kernel).
std::string scientific(double value) {
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), "%.3e", value);
  return buffer;
}

}  // namespace

std::string describe(const v1::KernelHandle& h) {
  std::ostringstream out;
  const auto& p = h.problem();
  const auto& c = h.config();
  const auto& l = h.launch();
  const auto& r = h.resources();
  out << "key          " << h.key() << "\n";
  out << "kernel       " << h.name_expression() << "\n";
  out << "symbol       " << h.lowered_name() << "\n";
  out << "template     " << h.template_id() << " (ABI " << h.abi().params_struct() << " v"
      << h.abi().abi_version() << ", " << h.abi().params_size() << " bytes)\n";
  out << "problem      " << dtype_label(p.dtype()) << " head_dim=" << p.head_dim()
      << (p.causal() ? " causal" : " non-causal") << "; shape batch=" << p.batch()
      << " heads=" << p.heads() << " kv_heads=" << (p.kv_heads() == 0 ? p.heads() : p.kv_heads())
      << " seq_q=" << p.seq_q() << " seq_k=" << (p.seq_k() == 0 ? p.seq_q() : p.seq_k()) << " "
      << layout_label(p.layout()) << "\n";
  out << "config       block_m=" << c.block_m() << " block_n=" << c.block_n()
      << " warps=" << c.warps() << " stages=" << c.stages()
      << " q_placement=" << v1::QPlacement_Name(c.q_placement())
      << " smem_layout=" << v1::SmemLayout_Name(c.smem_layout()) << "\n";
  out << "arch         " << h.arch() << "\n";
  out << "source       " << tier_label(h.tier()) << ", compile " << fixed(h.compile_ms(), 1)
      << " ms, NVRTC " << h.toolchain().nvrtc_version() << "\n";
  out << "launch       grid (" << l.grid().x() << ", " << l.grid().y() << ", " << l.grid().z()
      << ")  block (" << l.block().x() << ", " << l.block().y() << ", " << l.block().z()
      << ")  dynamic smem " << l.dynamic_smem_bytes() << " B\n";
  out << "grid         " << l.grid_formula() << "\n";
  out << "resources    " << r.registers() << " registers, " << r.spill_store_bytes()
      << " B spill stores, " << r.spill_load_bytes() << " B spill loads, "
      << r.stack_frame_bytes() << " B stack, " << r.static_smem_bytes() << " B static smem\n";
  out << "cubin        " << fixed(static_cast<double>(h.cubin_size()) / 1024.0, 1) << " KB"
      << (h.cubin().empty() ? " (not transferred)" : "") << ", sha256 " << h.cubin_sha256()
      << "\n";
  return out.str();
}

std::string describe_validation(const v1::KernelHandle& h) {
  std::ostringstream out;
  const auto& v = h.validation();
  const auto& r = h.resources();
  out << "key            " << h.key() << "\n";
  out << "kernel         " << h.name_expression() << "\n";
  out << "device         " << (v.device().empty() ? "-" : v.device()) << "\n";
  if (!v.evaluated()) {
    // A faulting or hanging kernel is still evaluated; this is a record the
    // daemon could not produce at all.
    out << "evaluated      no\n";
  } else {
    out << "rel error      " << scientific(v.rel_error()) << "  (vs fp64, worst trial)\n";
    out << "max abs error  " << scientific(v.max_abs_error()) << "\n";
    out << "determinism    " << (v.deterministic() ? "deterministic" : "NOT deterministic")
        << " over " << v.determinism_runs() << " runs, hash "
        << (v.determinism_hash().empty() ? "-" : v.determinism_hash()) << "\n";
    out << "stability      " << v.stability_passed() << "/" << v.stability_trials()
        << " trials passed\n";
  }
  if (r.ptxas_log().empty()) {
    // The figures come from ptxas' report; without one their zeros mean
    // nothing (seen when NVRTC's compute cache answered instead of ptxas).
    out << "resources      unknown: the handle carries no ptxas report\n";
  } else {
    out << "registers      " << r.registers() << "\n";
    out << "spills         " << r.spill_store_bytes() << " B stored, " << r.spill_load_bytes()
        << " B loaded\n";
    out << "stack (local)  " << r.stack_frame_bytes() << " B per thread\n";
  }
  out << "shared memory  " << h.launch().dynamic_smem_bytes() << " B dynamic, "
      << r.static_smem_bytes() << " B static\n";
  out << "passed         " << (v.passed() ? "yes" : "no") << "\n";
  out << "detail         " << (v.detail().empty() ? "-" : v.detail()) << "\n";
  return out.str();
}

}  // namespace flashcore::client
