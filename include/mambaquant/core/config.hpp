// Version, namespace and assertion macros shared by every header of the library.
#pragma once

#define MQ_VERSION_MAJOR 0
#define MQ_VERSION_MINOR 1
#define MQ_VERSION_PATCH 0

// Every symbol lives in mq::v0 so that two versions of the header-only library can coexist in
// one program without ODR clashes.
#define MQ_NAMESPACE_BEGIN \
    namespace mq {         \
    inline namespace v0 {
#define MQ_NAMESPACE_END \
    }                    \
    }

// Exceptions may be disabled by the consuming engine (-fno-exceptions); errors then abort with
// the message, and the non-throwing `result` API is the one to use.
#if defined(__cpp_exceptions) || defined(__EXCEPTIONS) || defined(_CPPUNWIND)
#define MQ_EXCEPTIONS 1
#else
#define MQ_EXCEPTIONS 0
#endif

// Kernels check their preconditions with MQ_ASSERT, never with exceptions. A user may define
// MQ_ASSERT before including any header (e.g. to route into their own logging); by default it
// follows NDEBUG like assert().
#ifndef MQ_ASSERT
#ifdef NDEBUG
#define MQ_ASSERT(cond, msg) ((void)0)
#else
#include <cstdio>
#include <cstdlib>
#define MQ_ASSERT(cond, msg)                                                                   \
    ((cond) ? (void)0                                                                          \
            : (std::fprintf(stderr, "%s:%d: MQ_ASSERT(%s) failed: %s\n", __FILE__, __LINE__, \
                            #cond, msg),                                                       \
               std::abort()))
#endif
#endif

#if defined(__GNUC__) || defined(__clang__)
#define MQ_RESTRICT __restrict__
#define MQ_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define MQ_RESTRICT
#define MQ_ALWAYS_INLINE inline
#endif

// Separate compilation (optional). The library is header-only; a program may also link the
// companion library `mambaquant::compiled` (CMake target, sources in src/), which compiles the
// heavy common instantiations once — the float model, the quantized model and its run-time layer
// set, the JSON readers and writers, the eigensolver — and defines MQ_COMPILED for its users.
// Each such instantiation is followed in its header by MQ_EXTERN_TEMPLATE(declaration): with
// MQ_COMPILED an `extern template` declaration, so an including translation unit links to the
// companion's copy instead of compiling its own; without it, nothing. Functions that would
// otherwise be plain inline functions are written `template <class = void>` (never spelled by
// callers) for this, which also instantiates them only in translation units that call them.
// Non-template classes whose members call Eigen, JSON or standard-library templates are written
// the same way: `template <class = void> class BasicX {...}; using X = BasicX<>;` (users spell X),
// so a file that includes the header but never uses X compiles none of X's members.
#ifdef MQ_COMPILED
#define MQ_EXTERN_TEMPLATE(...) extern template __VA_ARGS__;
#else
#define MQ_EXTERN_TEMPLATE(...)
#endif

MQ_NAMESPACE_BEGIN
// dependent_t<Tag, T> is T, spelled so that it depends on Tag. A template's body is analysed where
// it is defined as far as it does not depend on a template parameter: a `template <class = void>`
// function with a plain `const MatrixXf&` parameter still builds every Eigen expression type and
// resolves every call of its body in each includer (only the final instantiation is deferred).
// Written `template <class Tag = void> f(const dependent_t<Tag, MatrixXf>& w)` (Tag is never
// deduced nor spelled: it defaults to void, and callers see f(const MatrixXf&)), the body waits
// until a caller instantiates it.
template <class Tag, class T>
struct dependent_type {
    using type = T;
};
template <class Tag, class T>
using dependent_t = typename dependent_type<Tag, T>::type;
MQ_NAMESPACE_END
