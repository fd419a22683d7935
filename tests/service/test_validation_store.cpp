// ValidationStore: the latest record per (kernel, device), bounded.
#include "service/validation_store.hpp"

#include <gtest/gtest.h>

#include <string>

namespace flashcore::service {
namespace {

v1::ValidationRecord record(const std::string& device, bool passed, const std::string& detail = "") {
  v1::ValidationRecord r;
  r.set_evaluated(true);
  r.set_device(device);
  r.set_passed(passed);
  r.set_detail(detail);
  return r;
}

TEST(ValidationStoreTest, UnknownKeyHasNoRecord) {
  ValidationStore store;
  EXPECT_FALSE(store.latest("k").has_value());
  EXPECT_FALSE(store.find("k", "H100").has_value());
}

TEST(ValidationStoreTest, KeepsOneRecordPerDeviceAndAnswersTheLatest) {
  ValidationStore store;
  store.put("k", record("H100", false, "first"));
  store.put("k", record("A100", true, "second"));
  ASSERT_TRUE(store.latest("k").has_value());
  EXPECT_EQ(store.latest("k")->detail(), "second");

  // A newer record for H100 replaces its old one and becomes the latest.
  store.put("k", record("H100", true, "third"));
  EXPECT_EQ(store.latest("k")->detail(), "third");
  EXPECT_EQ(store.find("k", "H100")->detail(), "third");
  EXPECT_EQ(store.find("k", "A100")->detail(), "second");
  EXPECT_FALSE(store.find("k", "L4").has_value());
  EXPECT_FALSE(store.latest("other").has_value());
  EXPECT_EQ(store.kernels(), 1u);
}

TEST(ValidationStoreTest, ForgetsTheKernelStoredFirstPastItsBound) {
  ValidationStore store(2);
  store.put("a", record("H100", true));
  store.put("b", record("H100", true));
  store.put("a", record("A100", true));  // an existing kernel: nothing forgotten
  EXPECT_EQ(store.kernels(), 2u);
  store.put("c", record("H100", true));
  EXPECT_EQ(store.kernels(), 2u);
  EXPECT_FALSE(store.latest("a").has_value());
  EXPECT_TRUE(store.latest("b").has_value());
  EXPECT_TRUE(store.latest("c").has_value());
}

}  // namespace
}  // namespace flashcore::service
