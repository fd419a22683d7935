// Bad input answered with the exact status code and a message naming the
// field. None of these may reach NVRTC: the suite ends by checking that the
// daemon's cache is still empty.
#include <gtest/gtest.h>

#include <string>

#include "rpc/translate.hpp"
#include "rpc_test_support.hpp"

namespace flashcore {
namespace {

using namespace rpc_testing;

struct BadCompile {
  const char* name;
  void (*change)(v1::KernelRequest&);
  const char* field;   // the message starts with it
  const char* reason;  // and says this somewhere
};

const BadCompile kBadCompiles[] = {
    {"HeadDimZero", [](v1::KernelRequest& r) { r.mutable_problem()->set_head_dim(0); },
     "problem.head_dim", "not supported"},
    {"HeadDimSeven", [](v1::KernelRequest& r) { r.mutable_problem()->set_head_dim(7); },
     "problem.head_dim", "7"},
    {"SeqQZero", [](v1::KernelRequest& r) { r.mutable_problem()->set_seq_q(0); }, "problem.seq_q",
     ">= 1"},
    {"BatchNegative", [](v1::KernelRequest& r) { r.mutable_problem()->set_batch(-1); },
     "problem.batch", "-1"},
    {"HeadsZero", [](v1::KernelRequest& r) { r.mutable_problem()->set_heads(0); }, "problem.heads",
     ">= 1"},
    {"KvHeadsNotDividingHeads",
     [](v1::KernelRequest& r) {
       r.mutable_problem()->set_heads(8);
       r.mutable_problem()->set_kv_heads(3);
     },
     "problem.kv_heads", "divide"},
    {"BlockMNotMultipleOf16", [](v1::KernelRequest& r) { r.mutable_config()->set_block_m(100); },
     "config.block_m", "multiple of 16"},
    {"BlockMTooSmallForWarps",
     [](v1::KernelRequest& r) {
       r.mutable_config()->set_block_m(16);
       r.mutable_config()->set_warps(4);
     },
     "config.block_m", "4 warps"},
    {"WarpsThree", [](v1::KernelRequest& r) { r.mutable_config()->set_warps(3); }, "config.warps",
     "3"},
    {"StagesZero", [](v1::KernelRequest& r) { r.mutable_config()->set_stages(0); }, "config.stages",
     "0"},
    {"UnknownTemplate", [](v1::KernelRequest& r) { r.set_template_id("nope"); }, "template_id",
     "nope"},
    {"EmptyTemplate", [](v1::KernelRequest& r) { r.clear_template_id(); }, "template_id",
     "must be set"},
    {"DtypeUnspecified",
     [](v1::KernelRequest& r) { r.mutable_problem()->set_dtype(v1::DTYPE_UNSPECIFIED); },
     "problem.dtype", "must be set"},
    {"DtypeUnknownValue",
     [](v1::KernelRequest& r) { r.mutable_problem()->set_dtype(static_cast<v1::DType>(9)); },
     "problem.dtype", "9"},
    {"NoProblemAtAll", [](v1::KernelRequest& r) { r.clear_problem(); }, "problem.dtype",
     "must be set"},
    {"LayoutUnknownValue",
     [](v1::KernelRequest& r) { r.mutable_problem()->set_layout(static_cast<v1::Layout>(7)); },
     "problem.layout", "7"},
    {"ArchSm70", [](v1::KernelRequest& r) { r.set_arch("sm_70"); }, "arch", "sm_70"},
    {"QPlacementUnknownValue",
     [](v1::KernelRequest& r) {
       r.mutable_config()->set_q_placement(static_cast<v1::QPlacement>(7));
     },
     "config.q_placement", "7"},
    {"SmemLayoutUnknownValue",
     [](v1::KernelRequest& r) {
       r.mutable_config()->set_smem_layout(static_cast<v1::SmemLayout>(7));
     },
     "config.smem_layout", "7"},
    {"PaddedD96OverTheSm86Limit",  // the same tile fits swizzled (rows 16 bytes shorter)
     [](v1::KernelRequest& r) {
       r.mutable_problem()->set_head_dim(96);
       r.mutable_config()->set_block_n(96);
       r.mutable_config()->set_smem_layout(v1::SMEM_LAYOUT_PADDED);
       r.set_arch("sm_86");
     },
     "config", "shared memory"},
    {"SharedMemoryOverTheSm86Limit",
     [](v1::KernelRequest& r) {
       r.mutable_problem()->set_head_dim(256);
       r.mutable_config()->set_block_n(256);
       r.mutable_config()->set_stages(4);
       r.set_arch("sm_86");
     },
     "config", "shared memory"},
};

class InvalidRequestTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = start_small_template_daemon().release();
    ASSERT_NE(server_, nullptr);
  }
  static void TearDownTestSuite() { delete server_; }

  static void expect_invalid(const grpc::Status& status, const std::string& field,
                             const std::string& reason) {
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
    EXPECT_EQ(status.error_message().rfind(field + ":", 0), 0u)
        << "message does not start with '" << field << ":': " << status.error_message();
    EXPECT_NE(status.error_message().find(reason), std::string::npos)
        << "message lacks '" << reason << "': " << status.error_message();
  }

  static SmallTemplateDaemon* server_;
};

SmallTemplateDaemon* InvalidRequestTest::server_ = nullptr;

TEST_F(InvalidRequestTest, CompileRejectsEachBadFieldByName) {
  for (const BadCompile& bad : kBadCompiles) {
    SCOPED_TRACE(bad.name);
    v1::KernelRequest request = quick_request();
    bad.change(request);
    v1::KernelHandle handle;
    const grpc::Status status = compile(*server_->stub, request, &handle, 10);
    expect_invalid(status, bad.field, bad.reason);
  }
}

TEST_F(InvalidRequestTest, GetKernelOfAnUnknownKeyIsNotFound) {
  v1::GetKernelRequest request;
  request.set_key(std::string(64, 'a'));
  v1::KernelHandle handle;
  const grpc::Status status = get_kernel(*server_->stub, request, &handle);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND) << status.error_message();
  EXPECT_NE(status.error_message().find(std::string(64, 'a')), std::string::npos);
}

TEST_F(InvalidRequestTest, GetKernelOfAMalformedKeyIsInvalid) {
  for (const std::string& key :
       {std::string("not-a-key"), std::string(63, 'a'), std::string(64, 'A'),
        std::string("../") + std::string(61, 'a'), std::string()}) {
    SCOPED_TRACE(key);
    v1::GetKernelRequest request;
    request.set_key(key);
    v1::KernelHandle handle;
    expect_invalid(get_kernel(*server_->stub, request, &handle), "key", key.empty() ? "must be set" : key);
  }
}

TEST_F(InvalidRequestTest, ListKernelsRejectsBadPaging) {
  v1::ListKernelsResponse response;
  expect_invalid(list_kernels(*server_->stub, -1, "", &response), "page_size", "-1");
  expect_invalid(list_kernels(*server_->stub, 1001, "", &response), "page_size", "1001");
  expect_invalid(list_kernels(*server_->stub, 10, "garbage", &response), "page_token", "garbage");
  // The largest page is allowed.
  EXPECT_TRUE(list_kernels(*server_->stub, 1000, "", &response).ok());
}

TEST_F(InvalidRequestTest, ListTuningResultsNamesABadTokenOnce) {
  v1::ListTuningResultsRequest request;
  request.set_page_token("zzz");
  v1::ListTuningResultsResponse response;
  grpc::ClientContext context;
  const grpc::Status status = server_->stub->ListTuningResults(&context, request, &response);
  expect_invalid(status, "page_token", "zzz");
  const std::string& message = status.error_message();
  EXPECT_EQ(message.find("page_token", 1), std::string::npos) << "repeated prefix: " << message;
}

// Request strings echoed into a status are escaped and capped: a 64 KB
// template id or key with control characters gets a bounded INVALID_ARGUMENT,
// and the connection it came on keeps serving the calls after it.
TEST_F(InvalidRequestTest, HugeOrControlCharacterFieldsGetABoundedStatus) {
  const std::string huge = std::string("\x01\x1b[31m") + std::string(64 * 1024, 'x');
  v1::KernelRequest request = quick_request();
  request.set_template_id(huge);
  v1::KernelHandle handle;
  const grpc::Status compiled = compile(*server_->stub, request, &handle, 10);
  EXPECT_EQ(compiled.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(compiled.error_message().rfind("template_id:", 0), 0u) << compiled.error_message();
  EXPECT_LE(compiled.error_message().size(), rpc::kMaxStatusMessageBytes + 64);
  EXPECT_NE(compiled.error_message().find("more bytes"), std::string::npos);
  EXPECT_NE(compiled.error_message().find("\\x01"), std::string::npos) << "control character not escaped";
  EXPECT_EQ(compiled.error_message().find('\x1b'), std::string::npos);

  v1::GetKernelRequest get;
  get.set_key(huge);
  const grpc::Status got = get_kernel(*server_->stub, get, &handle);
  EXPECT_EQ(got.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_LE(got.error_message().size(), rpc::kMaxStatusMessageBytes + 64);
  v1::ListKernelsResponse page;
  const grpc::Status listed = list_kernels(*server_->stub, 10, huge, &page);
  EXPECT_EQ(listed.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_LE(listed.error_message().size(), rpc::kMaxStatusMessageBytes + 64);

  // The same channel still serves.
  v1::ServerInfo info;
  EXPECT_TRUE(server_info(*server_->stub, &info).ok());
}

// Runs last in this suite (gtest keeps declaration order): nothing above
// compiled anything.
TEST_F(InvalidRequestTest, NoBadRequestReachedTheCompiler) {
  v1::ListKernelsResponse response;
  ASSERT_TRUE(list_kernels(*server_->stub, 0, "", &response).ok());
  EXPECT_EQ(response.kernels_size(), 0);
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(server_->cache.path(), ec);
       it != std::filesystem::recursive_directory_iterator(); ++it) {
    // The tuning database lives in the cache folder too, and the candidate
    // store beside it (KernelEvolution); they hold no kernels.
    if (it->path().filename().string().rfind("tuning.db", 0) == 0) continue;
    if (it->path().filename().string().rfind("candidates.db", 0) == 0) continue;
    EXPECT_FALSE(it->is_regular_file()) << "cache file " << it->path();
  }
}

}  // namespace
}  // namespace flashcore
