// The library's error type and the checks that setup code uses to report bad input.
#pragma once

#include <mambaquant/core/config.hpp>

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <variant>

MQ_NAMESPACE_BEGIN

// Thrown by setup code (loading, calibration, fusion, packing) when an input is wrong. The
// message names the tensor or parameter, the expected and the actual value.
class error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

namespace detail {
template <class... Parts>
std::string concat(const Parts&... parts) {
    std::ostringstream out;
    (out << ... << parts);
    return out.str();
}
} // namespace detail

// Throws mq::error whose message is the concatenation of `parts` (or aborts with it when the
// engine is built without exceptions).
template <class... Parts>
[[noreturn]] void fail(const Parts&... parts) {
    std::string message = detail::concat(parts...);
#if MQ_EXCEPTIONS
    throw error(message);
#else
    std::fprintf(stderr, "mambaquant error: %s\n", message.c_str());
    std::abort();
#endif
}

// require(cond, "quantize: group size ", g, " does not divide row length ", n);
template <class... Parts>
void require(bool condition, const Parts&... parts) {
    if (!condition) fail(parts...);
}

// Non-throwing form for engines built without exceptions: a value or the error message.
template <class T>
class result {
public:
    result(T value) : state_(std::move(value)) {}
    static result failure(std::string message) { return result(error_tag{}, std::move(message)); }

    bool ok() const noexcept { return state_.index() == 0; }
    explicit operator bool() const noexcept { return ok(); }
    T& value() & { return std::get<0>(state_); }
    const T& value() const& { return std::get<0>(state_); }
    T&& value() && { return std::get<0>(std::move(state_)); }
    const std::string& message() const { return std::get<1>(state_); }

private:
    struct error_tag {};
    result(error_tag, std::string message) : state_(std::in_place_index<1>, std::move(message)) {}
    std::variant<T, std::string> state_;
};

// Runs a throwing setup function and turns an mq::error into a result (exceptions builds only).
#if MQ_EXCEPTIONS
template <class F>
auto try_invoke(F&& f) -> result<decltype(f())> {
    try {
        return result<decltype(f())>(f());
    } catch (const error& e) {
        return result<decltype(f())>::failure(e.what());
    }
}
#endif

MQ_NAMESPACE_END
