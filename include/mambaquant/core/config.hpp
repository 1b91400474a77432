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
