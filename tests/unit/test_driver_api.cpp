// The Driver API loader and the attention params helpers. This build machine
// has no libcuda.so.1, so the no-driver path is what runs here; on a machine
// with a driver those tests skip and the driver-present ones run instead.
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "cuda/attention_launch.hpp"
#include "cuda/driver_api.hpp"

namespace flashcore::cuda {
namespace {

// Asked independently of the code under test: is the driver library here?
bool libcuda_present() {
  void* handle = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (handle != nullptr) dlclose(handle);
  return handle != nullptr;
}

#define SKIP_IF_DRIVER_PRESENT()                                                        \
  if (libcuda_present()) GTEST_SKIP() << "libcuda.so.1 is present: the no-driver path " \
                                         "cannot run on this machine"

template <typename T>
void expect_no_driver(const Result<T>& result, const char* what) {
  ASSERT_FALSE(result.ok()) << what << " succeeded without a driver";
  EXPECT_EQ(result.error().code, ErrorCode::failed_precondition) << what;
  EXPECT_NE(result.error().message.find("libcuda.so.1"), std::string::npos)
      << what << ": " << result.error().message;
}

TEST(DriverApi, NoDriverIsFailedPreconditionNamingLibcuda) {
  SKIP_IF_DRIVER_PRESENT();
  auto api = driver();
  expect_no_driver(api, "driver()");
  // The failure is remembered, not retried into a different answer.
  auto again = driver();
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().message, api.error().message);
}

TEST(DriverApi, NoDriverEveryEntryPointFailsCleanly) {
  SKIP_IF_DRIVER_PRESENT();
  expect_no_driver(probe_devices(), "probe_devices()");
  expect_no_driver(Context::retain_primary(0), "Context::retain_primary");
  expect_no_driver(Module::load(std::string(64, '\0')), "Module::load");
  expect_no_driver(DeviceBuffer::allocate(1024), "DeviceBuffer::allocate");
  expect_no_driver(Stream::create(), "Stream::create");
  expect_no_driver(Event::create(), "Event::create");
}

TEST(DriverApi, CheckNamesTheApiAndMapsTheCode) {
  EXPECT_TRUE(check(CUDA_SUCCESS, "cuInit").ok());

  const Status oom = check(CUDA_ERROR_OUT_OF_MEMORY, "cuMemAlloc");
  ASSERT_FALSE(oom.ok());
  EXPECT_EQ(oom.error().code, ErrorCode::resource_exhausted);
  EXPECT_EQ(oom.error().message.rfind("cuMemAlloc: ", 0), 0u) << oom.error().message;
  // The name comes from the driver when one is loaded, else the number.
  const bool have_driver = driver().ok();
  const std::string expected = have_driver ? "CUDA_ERROR_OUT_OF_MEMORY" : "CUresult 2";
  EXPECT_NE(oom.error().message.find(expected), std::string::npos) << oom.error().message;

  const Status bad_image = check(CUDA_ERROR_INVALID_IMAGE, "cuModuleLoadData");
  ASSERT_FALSE(bad_image.ok());
  EXPECT_EQ(bad_image.error().code, ErrorCode::internal);
}

TEST(DriverApi, EmptyBufferNeedsNoDriverAndRangesAreChecked) {
  auto buffer = DeviceBuffer::allocate(0);
  ASSERT_TRUE(buffer.ok()) << buffer.error().message;
  EXPECT_EQ(buffer->get(), 0u);
  EXPECT_EQ(buffer->bytes(), 0u);
  EXPECT_TRUE(buffer->fill_bytes(0xff).ok());
  char byte = 0;
  const Status upload = buffer->upload(&byte, 1);
  ASSERT_FALSE(upload.ok());
  EXPECT_EQ(upload.error().code, ErrorCode::invalid_argument);
  const Status download = buffer->download(&byte, 1, 0);
  ASSERT_FALSE(download.ok());
  EXPECT_EQ(download.error().code, ErrorCode::invalid_argument);
}

TEST(DriverApi, WithDriverProbeReportsUsableDevices) {
  if (!libcuda_present()) GTEST_SKIP() << "no libcuda.so.1 on this machine";
  auto api = driver();
  if (!api.ok()) GTEST_SKIP() << "driver present but unusable: " << api.error().message;
  auto devices = probe_devices();
  ASSERT_TRUE(devices.ok()) << devices.error().message;
  ASSERT_FALSE(devices->empty());
  for (const auto& device : *devices) {
    EXPECT_FALSE(device.name.empty());
    EXPECT_GE(device.cc_major, 5);
    EXPECT_GT(device.sm_count, 0);
    EXPECT_GT(device.total_memory_bytes, size_t{1} << 30);
    EXPECT_GE(device.max_smem_optin_bytes, 48 * 1024);
    EXPECT_GT(device.l2_bytes, 0);
    if (device.cc_major == 9 && device.cc_minor == 0)
      EXPECT_EQ(device.arch, "sm_90a");
    else
      EXPECT_EQ(device.arch, "sm_" + std::to_string(device.cc_major * 10 + device.cc_minor));
  }
}

// ---- attention params ----

constexpr CUdeviceptr kQ = 0x10000, kK = 0x20000, kV = 0x30000, kO = 0x40000;

long long offset(long long b, long long h, long long s, long long d, long long batch_stride,
                 long long head_stride, long long row_stride) {
  return b * batch_stride + h * head_stride + s * row_stride + d;
}

// Every (b, h, s, d) of a small tensor lands where the layout's own index
// formula puts it: checks the strides without restating them.
template <typename Index>
void expect_dense(long long batch, long long heads, long long seq, long long dim,
                  long long batch_stride, long long head_stride, long long row_stride,
                  Index index, const char* what) {
  long long max_offset = -1;
  for (long long b = 0; b < batch; ++b)
    for (long long h = 0; h < heads; ++h)
      for (long long s = 0; s < seq; ++s)
        for (long long d = 0; d < dim; ++d) {
          const long long got = offset(b, h, s, d, batch_stride, head_stride, row_stride);
          ASSERT_EQ(got, index(b, h, s, d)) << what << " at b=" << b << " h=" << h << " s=" << s
                                            << " d=" << d;
          max_offset = std::max(max_offset, got);
        }
  EXPECT_EQ(max_offset + 1, batch * heads * seq * dim) << what << " is not densely packed";
}

TEST(AttentionParams, BshdStridesMatchTheLayout) {
  AttentionShape shape;
  shape.batch = 2;
  shape.heads = 3;
  shape.seq_q = 5;
  shape.head_dim = 32;
  shape.layout = TensorLayout::bshd;
  const AttentionParams p = make_attention_params(shape, kQ, kK, kV, kO);
  const auto bshd = [&](long long b, long long h, long long s, long long d) {
    return ((b * 5 + s) * 3 + h) * 32 + d;
  };
  expect_dense(2, 3, 5, 32, p.q_batch_stride, p.q_head_stride, p.q_row_stride, bshd, "q");
  expect_dense(2, 3, 5, 32, p.k_batch_stride, p.k_head_stride, p.k_row_stride, bshd, "k");
  expect_dense(2, 3, 5, 32, p.v_batch_stride, p.v_head_stride, p.v_row_stride, bshd, "v");
  expect_dense(2, 3, 5, 32, p.o_batch_stride, p.o_head_stride, p.o_row_stride, bshd, "o");
  // Defaults: kv_heads 0 -> heads, seq_k 0 -> seq_q.
  EXPECT_EQ(p.kv_heads, 3);
  EXPECT_EQ(p.seq_k, 5);
  EXPECT_EQ(p.batch, 2);
  EXPECT_EQ(p.seq_q, 5);
  EXPECT_EQ(p.q, reinterpret_cast<const void*>(kQ));
  EXPECT_EQ(p.o, reinterpret_cast<void*>(kO));
  EXPECT_EQ(p.lse, nullptr);
  EXPECT_TRUE(attention_params_error(p).ok());
}

TEST(AttentionParams, BhsdStridesMatchTheLayout) {
  AttentionShape shape;
  shape.batch = 2;
  shape.heads = 3;
  shape.seq_q = 7;
  shape.seq_k = 4;
  shape.head_dim = 64;
  shape.layout = TensorLayout::bhsd;
  const AttentionParams p = make_attention_params(shape, kQ, kK, kV, kO);
  const auto q_index = [](long long b, long long h, long long s, long long d) {
    return ((b * 3 + h) * 7 + s) * 64 + d;
  };
  const auto kv_index = [](long long b, long long h, long long s, long long d) {
    return ((b * 3 + h) * 4 + s) * 64 + d;
  };
  expect_dense(2, 3, 7, 64, p.q_batch_stride, p.q_head_stride, p.q_row_stride, q_index, "q");
  expect_dense(2, 3, 7, 64, p.o_batch_stride, p.o_head_stride, p.o_row_stride, q_index, "o");
  expect_dense(2, 3, 4, 64, p.k_batch_stride, p.k_head_stride, p.k_row_stride, kv_index, "k");
  expect_dense(2, 3, 4, 64, p.v_batch_stride, p.v_head_stride, p.v_row_stride, kv_index, "v");
  EXPECT_EQ(p.seq_k, 4);
}

TEST(AttentionParams, GroupedQueryAttentionUsesKvHeadsForKAndV) {
  AttentionShape shape;
  shape.batch = 1;
  shape.heads = 8;
  shape.kv_heads = 2;
  shape.seq_q = 3;
  shape.seq_k = 6;
  shape.head_dim = 16;
  for (const TensorLayout layout : {TensorLayout::bshd, TensorLayout::bhsd}) {
    shape.layout = layout;
    const AttentionParams p = make_attention_params(shape, kQ, kK, kV, kO);
    EXPECT_EQ(p.heads, 8);
    EXPECT_EQ(p.kv_heads, 2);
    const bool bshd = layout == TensorLayout::bshd;
    const auto kv_index = [&](long long b, long long h, long long s, long long d) {
      return bshd ? ((b * 6 + s) * 2 + h) * 16 + d : ((b * 2 + h) * 6 + s) * 16 + d;
    };
    const auto q_index = [&](long long b, long long h, long long s, long long d) {
      return bshd ? ((b * 3 + s) * 8 + h) * 16 + d : ((b * 8 + h) * 3 + s) * 16 + d;
    };
    expect_dense(1, 2, 6, 16, p.k_batch_stride, p.k_head_stride, p.k_row_stride, kv_index, "k");
    expect_dense(1, 2, 6, 16, p.v_batch_stride, p.v_head_stride, p.v_row_stride, kv_index, "v");
    expect_dense(1, 8, 3, 16, p.q_batch_stride, p.q_head_stride, p.q_row_stride, q_index, "q");
    EXPECT_TRUE(attention_params_error(p).ok());
  }
}

TEST(AttentionParams, SoftmaxScaleIsInverseSqrtHeadDimAndLog2Scaled) {
  for (const int d : {32, 64, 128, 256}) {
    AttentionShape shape;
    shape.head_dim = d;
    const AttentionParams p = make_attention_params(shape, kQ, kK, kV, kO);
    EXPECT_NEAR(double(p.softmax_scale) * p.softmax_scale * d, 1.0, 1e-6) << "D=" << d;
    // The kernel computes exp2(x * scale_log2); it must equal exp(x * scale).
    for (const double x : {-3.0, 0.5, 7.25}) {
      EXPECT_NEAR(std::exp2(x * p.softmax_scale_log2), std::exp(x * p.softmax_scale),
                  1e-6 * std::exp(x * p.softmax_scale))
          << "D=" << d << " x=" << x;
    }
  }
}

AttentionParams valid_params() {
  AttentionShape shape;
  shape.batch = 2;
  shape.heads = 8;
  shape.kv_heads = 4;
  shape.seq_q = 100;
  shape.head_dim = 64;
  return make_attention_params(shape, kQ, kK, kV, kO);
}

void expect_invalid(const AttentionParams& p, const std::string& field) {
  const Status s = attention_params_error(p);
  ASSERT_FALSE(s.ok()) << "accepted bad " << field;
  EXPECT_EQ(s.error().code, ErrorCode::invalid_argument);
  EXPECT_NE(s.error().message.find(field), std::string::npos) << s.error().message;
}

TEST(AttentionParams, ValidationNamesTheBadField) {
  ASSERT_TRUE(attention_params_error(valid_params()).ok());

  AttentionParams p = valid_params();
  p.k = nullptr;
  expect_invalid(p, "params.k");
  p = valid_params();
  p.o = nullptr;
  expect_invalid(p, "params.o");
  p = valid_params();
  p.seq_q = 0;
  expect_invalid(p, "params.seq_q");
  p = valid_params();
  p.batch = -1;
  expect_invalid(p, "params.batch");
  p = valid_params();
  p.kv_heads = 3;  // does not divide 8
  expect_invalid(p, "params.kv_heads");
  p = valid_params();
  p.heads = 70000;
  p.kv_heads = 70000;
  expect_invalid(p, "params.heads");
  p = valid_params();
  p.v_row_stride = 68;  // 16-byte vector loads need multiples of 8 elements
  expect_invalid(p, "params.v_row_stride");

  // A head_dim of 4 in BHSD makes the row stride 4: rejected by name.
  AttentionShape narrow;
  narrow.heads = 2;
  narrow.seq_q = 2;
  narrow.head_dim = 4;
  narrow.layout = TensorLayout::bhsd;
  expect_invalid(make_attention_params(narrow, kQ, kK, kV, kO), "params.q_row_stride");
}

TEST(AttentionLaunch, InvalidParamsAreRejectedBeforeTheDriver) {
  AttentionParams p = valid_params();
  p.q = nullptr;
  AttentionLaunchConfig config{128, 128, 1, 1, 49152};
  const Status s = launch_attention(nullptr, config, p, nullptr);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code, ErrorCode::invalid_argument);
  EXPECT_NE(s.error().message.find("params.q"), std::string::npos);

  const Status no_config = launch_attention(nullptr, AttentionLaunchConfig{}, valid_params(),
                                            nullptr);
  ASSERT_FALSE(no_config.ok());
  EXPECT_EQ(no_config.error().code, ErrorCode::failed_precondition);
}

TEST(AttentionLaunch, NoDriverValidLaunchIsFailedPrecondition) {
  SKIP_IF_DRIVER_PRESENT();
  // Never dereferenced: without a driver the launch stops at driver().
  const auto fake = reinterpret_cast<CUfunction>(uintptr_t{0x1000});
  const Status s = launch_attention(fake, AttentionLaunchConfig{128, 128, 1, 1, 49152},
                                    valid_params(), nullptr);
  expect_no_driver(s, "launch_attention");
}

}  // namespace
}  // namespace flashcore::cuda
