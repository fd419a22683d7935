// The server's drain: Server::Shutdown(deadline), which refuses new calls
// and waits for those in flight until the deadline, then cancels them. It
// cannot tell a call the daemon is answering from one that gRPC holds and
// nothing will ever answer, and it waits for both. gRPC 1.51 (Debian 12)
// holds two kinds:
//  - a Compile or GetKernel call read off its connection just before the
//    shutdown and matched just after it. PublishNewRpc checks
//    ShutdownCalled() before RealRequestMatcher::MatchOrQueue takes the
//    server's call lock; if Shutdown's KillPendingWorkLocked runs in
//    between (a preempted thread on a loaded box), the call finds no call
//    asked for and waits on the matcher's pending list, which only a later
//    MaybeFinishShutdown sweeps. That runs when a connection closes, and the
//    call keeps its own connection open: where it is the last, nothing
//    sweeps it. The daemon never sees the call; its client waits until its
//    deadline, and Shutdown with it (the GetKernel that hit its 30 s
//    deadline in KernelQueuesTest.ShutdownLetsCompileMissesFinishWithin-
//    TheDrainWhileHitsRun; a call held 100 ms inside MatchOrQueue as the
//    shutdown begins does it every time);
//  - a stream of a service gRPC serves for the daemon (reflection) that
//    its client keeps open.
// So the drain also ends once the daemon holds no call of its own for
// `settle`: the calls left are cancelled then, as Shutdown cancels them at
// the deadline (grpc_server_cancel_all_calls), and their clients see
// UNAVAILABLE at once instead of waiting for a deadline.
#pragma once

#include <grpcpp/server.h>

#include <chrono>
#include <functional>

namespace flashcore {

// Shuts `server` down, giving the calls in flight until `deadline`, and
// returns once Shutdown has. `holds_calls` says whether the daemon still
// holds a call (one it is answering, or one gRPC has handed it); it must
// stay true until Shutdown has begun (the completion queues' idle() is).
// It is polled every few milliseconds from a thread of this function's.
void drain_server(grpc::Server& server, std::chrono::system_clock::time_point deadline,
                  const std::function<bool()>& holds_calls, std::chrono::milliseconds settle);

}  // namespace flashcore
