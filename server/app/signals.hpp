// SIGTERM/SIGINT reach the daemon only through main's wait below, never a
// handler. A handler is not enough here: NVRTC installs its own SIGINT and
// SIGTERM handlers (they exit(4)) for part of every compile, so a SIGTERM
// landing mid-compile killed the process instead of draining it. Blocked in
// every thread, the signal stays pending until main takes it with sigwait,
// whatever handler NVRTC has installed at that moment.
#pragma once

#include "common/result.hpp"

namespace flashcore {

// Blocks SIGTERM and SIGINT in the calling thread, and so in every thread it
// starts afterwards: call first thing in main. Children spawned later inherit
// the mask across exec and must unblock the signals (posix_spawnattr_setsigmask).
Status block_shutdown_signals();

// Waits for SIGTERM or SIGINT and returns its number.
int wait_for_shutdown_signal();

}  // namespace flashcore
