// SIGTERM/SIGINT reach the daemon only through main's wait below, never a
// handler. A handler is not enough here: NVRTC installs its own SIGINT and
// SIGTERM handlers (they exit(4)) for part of every compile, so a SIGTERM
// landing mid-compile killed the process instead of draining it. Blocked in
// every thread, the signal stays pending until main takes it with sigwait,
// whatever handler NVRTC has installed at that moment.
#pragma once

#include <functional>

#include "common/result.hpp"

namespace flashcore {

// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread, and so in every
// thread it starts afterwards: call first thing in main. Children spawned
// later inherit the mask across exec and must unblock the signals
// (posix_spawnattr_setsigmask).
Status block_shutdown_signals();

// Waits for SIGTERM or SIGINT and returns its number. Each SIGHUP on the way
// calls `on_reload` (the daemon re-reads what can change while it runs) and
// goes on waiting: a hang-up never stops the daemon.
int wait_for_shutdown_signal(const std::function<void()>& on_reload = {});

}  // namespace flashcore
