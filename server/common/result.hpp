// A value or an error, never both. Errors carry a code the RPC layer maps to
// a gRPC status, a one-line message naming what is wrong, and an optional
// detail (the NVRTC log, say) that travels up unchanged.
#pragma once

#include <string>
#include <utility>
#include <variant>

namespace flashcore {

enum class ErrorCode {
  invalid_argument,
  not_found,
  failed_precondition,
  resource_exhausted,
  internal,
  unavailable,
  deadline_exceeded,
  cancelled,
  unauthenticated,    // no or an unknown credential
  permission_denied,  // a known caller asking beyond its role
};

struct Error {
  ErrorCode code = ErrorCode::internal;
  std::string message;
  std::string detail;
};

inline Error make_error(ErrorCode code, std::string message, std::string detail = {}) {
  return Error{code, std::move(message), std::move(detail)};
}

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : state_(std::move(value)) {}          // NOLINT: implicit by design
  Result(Error error) : state_(std::move(error)) {}      // NOLINT

  bool ok() const { return std::holds_alternative<T>(state_); }
  explicit operator bool() const { return ok(); }

  const T& value() const& { return std::get<T>(state_); }
  T& value() & { return std::get<T>(state_); }
  T&& value() && { return std::get<T>(std::move(state_)); }
  const T& operator*() const& { return value(); }
  T& operator*() & { return value(); }
  const T* operator->() const { return &value(); }
  T* operator->() { return &value(); }

  const Error& error() const { return std::get<Error>(state_); }

 private:
  std::variant<T, Error> state_;
};

// For operations that return nothing but may fail.
struct Unit {};
using Status = Result<Unit>;
inline Status ok_status() { return Unit{}; }

}  // namespace flashcore
