#include "jit/compile_pool.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <set>
#include <thread>

namespace flashcore {
namespace {

using namespace std::chrono_literals;

// Holds pool threads inside their tasks until released, so the queue state
// is known exactly when the test submits.
class Gate {
 public:
  void enter() {
    std::unique_lock lock(mutex_);
    ++entered_;
    changed_.notify_all();
    changed_.wait(lock, [this] { return open_; });
  }
  bool wait_entered(int n) {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, 10s, [&] { return entered_ >= n; });
  }
  void open() {
    std::lock_guard lock(mutex_);
    open_ = true;
    changed_.notify_all();
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  int entered_ = 0;
  bool open_ = false;
};

// Opens the gate on every exit path, so a failed assertion cannot leave a
// pool thread blocked and the pool's destructor waiting on it forever.
struct OpenOnExit {
  Gate& gate;
  ~OpenOnExit() { gate.open(); }
};

TEST(CompilePool, RunsTasksOnItsThreads) {
  CompilePool pool(2, 16);
  EXPECT_EQ(pool.threads(), 2u);
  std::mutex mutex;
  std::set<std::thread::id> ids;
  std::vector<std::future<void>> done;
  for (int i = 0; i < 8; ++i) {
    auto promise = std::make_shared<std::promise<void>>();
    done.push_back(promise->get_future());
    ASSERT_TRUE(pool.submit([&, promise] {
      {
        std::lock_guard lock(mutex);
        ids.insert(std::this_thread::get_id());
      }
      promise->set_value();
    }).ok());
  }
  for (auto& f : done) ASSERT_EQ(f.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(ids.count(std::this_thread::get_id()), 0u);
  EXPECT_LE(ids.size(), 2u);
}

TEST(CompilePool, RefusesPastTheQueueLimit) {
  Gate gate;
  CompilePool pool(2, 3);
  OpenOnExit opener{gate};
  ASSERT_TRUE(pool.submit([&] { gate.enter(); }).ok());
  ASSERT_TRUE(pool.submit([&] { gate.enter(); }).ok());
  ASSERT_TRUE(gate.wait_entered(2));  // both threads busy, nothing waiting

  for (int i = 0; i < 3; ++i) EXPECT_TRUE(pool.submit([] {}).ok()) << i;
  EXPECT_EQ(pool.queued(), 3u);
  const Status refused = pool.submit([] {});
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, ErrorCode::resource_exhausted);
  EXPECT_EQ(pool.queued(), 3u);

  gate.open();
}

TEST(CompilePool, IdleThreadsDoNotCountAgainstTheQueue) {
  // No waiting allowed, but an idle thread still takes work.
  Gate gate;
  CompilePool pool(1, 0);
  OpenOnExit opener{gate};
  ASSERT_TRUE(pool.submit([&] { gate.enter(); }).ok());
  ASSERT_TRUE(gate.wait_entered(1));
  const Status refused = pool.submit([] {});
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, ErrorCode::resource_exhausted);
  gate.open();
}

TEST(CompilePool, DestructorFinishesQueuedTasks) {
  std::atomic<int> ran{0};
  Gate gate;
  {
    CompilePool pool(1, 10);
    OpenOnExit opener{gate};
    ASSERT_TRUE(pool.submit([&] {
      gate.enter();
      ++ran;
    }).ok());
    ASSERT_TRUE(gate.wait_entered(1));
    for (int i = 0; i < 5; ++i)
      ASSERT_TRUE(pool.submit([&] {
        std::this_thread::sleep_for(1ms);
        ++ran;
      }).ok());
    EXPECT_EQ(pool.queued(), 5u);
    gate.open();
  }  // joins only after all six ran
  EXPECT_EQ(ran.load(), 6);
}

TEST(CompilePool, ATaskThatThrowsDoesNotStopThePool) {
  CompilePool pool(1, 4);
  ASSERT_TRUE(pool.submit([] { throw std::runtime_error("boom"); }).ok());
  std::promise<void> after;
  ASSERT_TRUE(pool.submit([&] { after.set_value(); }).ok());
  EXPECT_EQ(after.get_future().wait_for(10s), std::future_status::ready);
}

}  // namespace
}  // namespace flashcore
