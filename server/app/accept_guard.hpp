// Keeps the listening socket alive when the process runs out of file
// descriptors. gRPC 1.51 (Debian 12) treats any accept4 error other than
// EAGAIN/ECONNABORTED as fatal for the listener (tcp_server_posix.cc on_read:
// "Failed accept4", then the port is dropped): after one EMFILE the daemon
// never accepts again, even once descriptors are free (grpc/grpc#16058,
// #20418; later gRPC releases retry on a timer). This file defines accept4
// for the process, so gRPC's calls come here: on EMFILE or ENFILE a spare
// descriptor held for the purpose is given up, the waiting connections are
// accepted and closed at once (their clients see the connection end and
// retry, instead of hanging in the backlog of a socket nobody reads), the
// spare is taken back, and gRPC is told EAGAIN, so its listener stays armed.
#pragma once

#include <cstddef>

namespace flashcore {

// Opens the spare descriptor. Idempotent; called by Daemon::start (which also
// links this file in, so the accept4 below replaces libc's).
void install_accept_guard();

// Connections closed for lack of descriptors since the start.
size_t connections_shed_for_descriptors();

}  // namespace flashcore
