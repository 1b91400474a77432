// Orthogonal rotations for computational invariance: which Q (Hadamard, randomized, block-diagonal,
// random orthogonal), its materialized matrix, folding it into weights, and the online-rotation
// policies (NoRotation, HadamardOnline) that a Linear takes as its InputRotation.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/rng.hpp>
#include <mambaquant/core/simd.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/kernels/fwht.hpp>
#include <mambaquant/kernels/quantized_activations.hpp>
#include <mambaquant/quant/quantizer.hpp>
#include <mambaquant/transform/hadamard.hpp>

#include <Eigen/QR> // HouseholderQR (random_orthogonal); not Dense, which drags in Eigenvalues, SVD, Geometry

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

MQ_NAMESPACE_BEGIN

// Computational invariance: for orthogonal Q,  x·Wᵀ = (x·Q)·(W·Q)ᵀ.
// Offline, Q is folded into the weights on both sides of a tensor (W_consumer ← W·Q,
// W_producer ← Qᵀ·W); online, the activation is rotated at run time (x ← x·Q) and Q is folded
// into the consuming weight only.

enum class RotationKind {
    hadamard,            // (H_m ⊗ H_2^k)/√n, n = m·2^k (hadamard_matrix)
    randomized_hadamard, // diag(s)·H, s = random_signs(n, seed)
    block_hadamard,      // diag(H_b, …, H_b), b a supported Hadamard size dividing n
    random_orthogonal,   // Q of the QR of a seeded Gaussian matrix (Haar distributed)
};

template <class = void>
const char* rotation_kind_name(RotationKind k) noexcept {
    switch (k) {
    case RotationKind::hadamard: return "hadamard";
    case RotationKind::randomized_hadamard: return "randomized_hadamard";
    case RotationKind::block_hadamard: return "block_hadamard";
    case RotationKind::random_orthogonal: return "random_orthogonal";
    }
    return "unknown";
}

// A rotation, said as data (what the recipes and the export metadata carry).
struct RotationSpec {
    RotationKind kind = RotationKind::hadamard;
    std::size_t n = 0;
    std::uint64_t seed = 0;  // randomized_hadamard, random_orthogonal
    std::size_t block = 0;   // block_hadamard

    friend bool operator==(const RotationSpec&, const RotationSpec&) = default;
};

// What to do when exact Hadamard does not exist for n (n ≠ m·2^k for a supported m).
enum class UnsupportedSize {
    error,             // mq::error naming n and the supported factors
    block_hadamard,    // the largest supported Hadamard block that divides n
    random_orthogonal, // a seeded random orthogonal matrix
};

// The largest supported Hadamard size b ≥ 2 with b | n, or 0 if none (odd n).
template <class = void>
std::size_t largest_hadamard_block(std::size_t n) noexcept {
    std::size_t best = 0;
    for (std::size_t b = 2; b <= n; ++b)
        if (n % b == 0 && try_decompose_hadamard_size(b)) best = b;
    return best;
}

// Exact Hadamard (randomized when `randomized`) when n allows it, otherwise the caller's fallback.
template <class = void>
RotationSpec choose_rotation(std::size_t n, UnsupportedSize fallback, std::uint64_t seed = 0,
                             bool randomized = false) {
    require(n > 0, "choose_rotation: size must be positive");
    RotationSpec spec;
    spec.n = n;
    spec.seed = seed;
    if (try_decompose_hadamard_size(n)) {
        spec.kind = randomized ? RotationKind::randomized_hadamard : RotationKind::hadamard;
        return spec;
    }
    switch (fallback) {
    case UnsupportedSize::error: decompose_hadamard_size(n); break; // throws with the message
    case UnsupportedSize::block_hadamard:
        spec.kind = RotationKind::block_hadamard;
        spec.block = largest_hadamard_block(n);
        require(spec.block >= 2, "choose_rotation: no Hadamard block divides the odd size ", n,
                "; use UnsupportedSize::random_orthogonal");
        return spec;
    case UnsupportedSize::random_orthogonal: spec.kind = RotationKind::random_orthogonal; return spec;
    }
    return spec;
}

// diag(H_b, …, H_b) with orthonormal b×b Hadamard blocks.
template <class T = double>
Matrix<T> block_diagonal_hadamard(std::size_t n, std::size_t block) {
    require(block > 0 && n % block == 0, "block_diagonal_hadamard: block size ", block, " does not divide n = ", n);
    const Matrix<T> h = hadamard_matrix<T>(block); // throws for an unsupported block size
    Matrix<T> Q = Matrix<T>::Zero(static_cast<Eigen::Index>(n), static_cast<Eigen::Index>(n));
    const auto b = static_cast<Eigen::Index>(block);
    for (Eigen::Index k = 0; k < static_cast<Eigen::Index>(n); k += b) Q.block(k, k, b, b) = h;
    return Q;
}

// Q of G = Q·R for a Gaussian G drawn from Rng(seed) row by row, with the signs fixed so that
// diag(R) > 0 (Q is then Haar distributed and unique). Computed in double; the same seed gives the
// same matrix on every machine up to the last bits of log/sin/cos (see mq::Rng::normal).
template <class T = double>
Matrix<T> random_orthogonal(std::size_t n, std::uint64_t seed) {
    require(n > 0, "random_orthogonal: size must be positive");
    const auto N = static_cast<Eigen::Index>(n);
    Rng rng(seed);
    using ColMajor = dependent_t<T, Eigen::MatrixXd>; // the QR's types are built only where it is called
    ColMajor G(N, N);
    for (Eigen::Index i = 0; i < N; ++i)
        for (Eigen::Index j = 0; j < N; ++j) G(i, j) = rng.normal();
    Eigen::HouseholderQR<ColMajor> qr(G);
    ColMajor Q = qr.householderQ() * ColMajor::Identity(N, N);
    const ColMajor& R = qr.matrixQR();
    for (Eigen::Index j = 0; j < N; ++j)
        if (R(j, j) < 0) Q.col(j) *= -1.0;
    return Q.template cast<T>();
}

// Materialize any rotation (n×n, orthogonal).
template <class T = double>
Matrix<T> rotation_matrix(const RotationSpec& spec) {
    require(spec.n > 0, "rotation_matrix: size must be positive");
    switch (spec.kind) {
    case RotationKind::hadamard: return hadamard_matrix<T>(spec.n);
    case RotationKind::randomized_hadamard: return randomized_hadamard_matrix<T>(spec.n, spec.seed);
    case RotationKind::block_hadamard: return block_diagonal_hadamard<T>(spec.n, spec.block);
    case RotationKind::random_orthogonal: return random_orthogonal<T>(spec.n, spec.seed);
    }
    fail("rotation_matrix: unknown rotation kind");
}
// Compiled once in the companion library with MQ_COMPILED (src/transform.cpp; core/config.hpp).
MQ_EXTERN_TEMPLATE(Matrix<double> random_orthogonal<double>(std::size_t, std::uint64_t))
MQ_EXTERN_TEMPLATE(Matrix<double> rotation_matrix<double>(const RotationSpec&))
MQ_EXTERN_TEMPLATE(Matrix<float> rotation_matrix<float>(const RotationSpec&))

// W ← W·Q, W: [out × n] (a consumer of the rotated activation, e.g. W_out of an online R2, or
// W_in of the residual rotation R1). Computed in the wider of the two scalar types.
template <class TW, class TQ>
void fold_rotation_right(Matrix<TW>& W, const Matrix<TQ>& Q, const char* name = "weight") {
    require(Q.rows() == Q.cols(), "fold_rotation_right: rotation must be square, got ", Q.rows(), " x ", Q.cols());
    require(W.cols() == Q.rows(), name, ": fold_rotation_right expects ", Q.rows(), " columns (the rotated dimension), got ",
            W.cols());
    using A = std::conditional_t<(sizeof(TW) > sizeof(TQ)), TW, TQ>;
    W = (W.template cast<A>() * Q.template cast<A>()).template cast<TW>();
}

// W ← Qᵀ·W, W: [n × in] (a producer of the rotated dimension, e.g. W_out feeding the residual).
template <class TQ, class TW>
void fold_rotation_left(const Matrix<TQ>& Q, Matrix<TW>& W, const char* name = "weight") {
    require(Q.rows() == Q.cols(), "fold_rotation_left: rotation must be square, got ", Q.rows(), " x ", Q.cols());
    require(W.rows() == Q.rows(), name, ": fold_rotation_left expects ", Q.rows(), " rows (the rotated dimension), got ",
            W.rows());
    using A = std::conditional_t<(sizeof(TW) > sizeof(TQ)), TW, TQ>;
    W = (Q.template cast<A>().transpose() * W.template cast<A>()).template cast<TW>();
}

// ---------------------------------------------------------------------------------------------
// Online rotation policies (Linear<WeightPolicy, ActPolicy, InputRotation>).
// ---------------------------------------------------------------------------------------------

// The contract of an InputRotation R of a Linear y = x·Wᵀ with W: [out × n] (open: any type with
// these members is a Rotation):
//   R::is_identity          true only for NoRotation (lets Linear skip the calls at compile time)
//   r.size()                std::size_t n, the rotated (input) dimension (0 = any, for NoRotation)
//   R(std::size_t n)        (non-identity rotations) the rotation of size n, which a model loaded
//                           from a checkpoint builds from the config's d_inner
//   r.apply(MatrixView<float> x) noexcept
//                           x ← x·Q on every row, in place, at run time (no allocation)
//   r.fold_into_weight(Matrix<float>& W)
//                           W ← W·Q once at setup, before W is quantized; throws mq::error when
//                           W's column count is not n
// so that apply(x)·fold_into_weight(W)ᵀ = x·Wᵀ. A rotation may also offer the fused
//   r.fuses_quantization()  whether the fused path below applies to this instance
//   r.template apply_quantize<Q>(ConstMatrixView<float> x, ActBuffer<Code>& act,
//                                std::span<float> scratch) noexcept
// (rotate and quantize per token in one pass into the integer GEMM's activation layout; scratch
// ≥ r.scratch_size() floats), which Linear uses for its per-token activation quantization.
// A model built from a checkpoint makes its rotations from their size (the config's d_inner):
// make_rotation<R>(n) is R{} for an identity rotation and R(n) otherwise.
namespace detail {
template <class R>
concept rotation_has_is_identity = requires { { R::is_identity } -> std::convertible_to<bool>; };
template <class R>
concept rotation_has_size = requires(const R& r) { r.size(); };
template <class R>
concept rotation_size_is_size_t = requires(const R& r) { { r.size() } -> std::same_as<std::size_t>; };
template <class R>
concept rotation_has_apply = requires(const R& r, MatrixView<float> x) { { r.apply(x) } noexcept; };
template <class R>
concept rotation_has_fold = requires(const R& r, Matrix<float>& w) { r.fold_into_weight(w); };
} // namespace detail

template <class R>
concept Rotation = detail::rotation_has_is_identity<R> && detail::rotation_size_is_size_t<R> &&
                   detail::rotation_has_apply<R> && detail::rotation_has_fold<R>;

// One static_assert naming the Rotation concept and the member R lacks or gets wrong.
template <class R>
consteval bool check_rotation() {
    if constexpr (!detail::rotation_has_is_identity<R>) {
        static_assert(detail::rotation_has_is_identity<R>, "Rotation: missing member `static constexpr bool is_identity`");
        return false;
    } else if constexpr (!detail::rotation_has_size<R>) {
        static_assert(detail::rotation_has_size<R>, "Rotation: missing member `std::size_t size() const noexcept`");
        return false;
    } else if constexpr (!detail::rotation_size_is_size_t<R>) {
        static_assert(detail::rotation_size_is_size_t<R>, "Rotation: member `size()` must return std::size_t");
        return false;
    } else if constexpr (!detail::rotation_has_apply<R>) {
        static_assert(detail::rotation_has_apply<R>, "Rotation: missing member `void apply(MatrixView<float> x) const noexcept`");
        return false;
    } else if constexpr (!detail::rotation_has_fold<R>) {
        static_assert(detail::rotation_has_fold<R>, "Rotation: missing member `void fold_into_weight(Matrix<float>& W) const`");
        return false;
    } else if constexpr (!R::is_identity && !std::constructible_from<R, std::size_t>) {
        static_assert(R::is_identity, "Rotation: a non-identity rotation needs a constructor `R(std::size_t n)` "
                                      "(a model makes it from the config's size)");
        return false;
    } else {
        return true;
    }
}

template <class R>
concept FusedQuantRotation = Rotation<R> && requires(const R& r, ConstMatrixView<float> x, ActBuffer<std::int16_t>& a,
                                                     std::span<float> s) {
    { r.fuses_quantization() } -> std::convertible_to<bool>;
    { r.template apply_quantize<A8PerToken>(x, a, s) } noexcept;
    { r.scratch_size() } -> std::convertible_to<std::size_t>;
};

// No rotation: the float/plain-quantized Linear.
struct NoRotation {
    static constexpr bool is_identity = true;
    static constexpr const char* name = "none";
    std::size_t size() const noexcept { return 0; }
    void apply(MatrixView<float>) const noexcept {}
    template <class T>
    void fold_into_weight(Matrix<T>&) const noexcept {}
};

// Online Hadamard Q = H (or diag(s)·H, or a block-diagonal diag(H_b, …)) applied to every token
// row with the fast kernel (kernels/fwht.hpp) — the R2 rotation at the out_proj input.
class HadamardOnline {
public:
    static constexpr bool is_identity = false;
    static constexpr const char* name = "hadamard_online";

    HadamardOnline() = default;
    // Exact Hadamard of size n (throws mq::error for an unsupported n), randomized with a seed.
    template <class = void>
    explicit HadamardOnline(std::size_t n, std::optional<std::uint64_t> seed = std::nullopt)
        : n_(n), block_(n), plan_(make_fwht_plan(n, seed)) {
        spec_ = {seed ? RotationKind::randomized_hadamard : RotationKind::hadamard, n, seed.value_or(0), 0};
    }
    // diag(H_b, …, H_b): each run of `block` features rotated on its own.
    template <class = void>
    static HadamardOnline block_diagonal(std::size_t n, std::size_t block) {
        require(block > 0 && n % block == 0, "HadamardOnline::block_diagonal: block size ", block,
                " does not divide n = ", n);
        HadamardOnline r;
        r.n_ = n;
        r.block_ = block;
        r.plan_ = make_fwht_plan(block);
        r.spec_ = {RotationKind::block_hadamard, n, 0, block};
        return r;
    }
    // From a spec of kind hadamard, randomized_hadamard or block_hadamard.
    template <class Tag = void>
    static HadamardOnline from_spec(const dependent_t<Tag, RotationSpec>& spec) {
        switch (spec.kind) {
        case RotationKind::hadamard: return HadamardOnline(spec.n);
        case RotationKind::randomized_hadamard: return HadamardOnline(spec.n, spec.seed);
        case RotationKind::block_hadamard: return block_diagonal(spec.n, spec.block);
        default: fail("HadamardOnline: a ", rotation_kind_name(spec.kind), " rotation has no fast online form");
        }
    }

    std::size_t size() const noexcept { return n_; }
    const RotationSpec& spec() const noexcept { return spec_; }
    const FwhtPlan& plan() const noexcept { return plan_; }
    std::size_t scratch_size() const noexcept { return fwht_quantize_scratch_size(block_); }

    // The SIMD arch its kernels run on: mq::active_arch() when it was constructed.
    arch_id arch() const noexcept { return arch_; }

    // x ← x·Q on every row. A template never spelled by callers: a non-template member would
    // instantiate the FWHT for every arch in each translation unit that includes this header.
    template <class = void>
    void apply(MatrixView<float> x) const noexcept {
        MQ_ASSERT(x.cols == n_, "HadamardOnline::apply: row length must equal the rotation size");
        dispatch(arch_, [&](auto arch) { fwht(arch, blocks_of(x), plan_); });
    }

    // Rotate and quantize each token in one pass, only for block == n (a per-token range needs the
    // whole row); block-diagonal rotations apply() then quantize.
    bool fuses_quantization() const noexcept { return block_ == n_; }
    // Into int8 codes and per-row parameters (kernels/fwht.hpp: fwht_quantize).
    template <Symmetry S>
    void apply_quantize(ConstMatrixView<float> x, MatrixView<int8_code_t<S>> q, std::span<QuantParams> p,
                        std::span<float> scratch) const noexcept {
        MQ_ASSERT(fuses_quantization(), "HadamardOnline::apply_quantize: needs a full (not block-diagonal) rotation");
        dispatch(arch_, [&](auto arch) { fwht_quantize<S>(arch, x, plan_, q, p, scratch); });
    }
    // Into the integer GEMM's activation layout (kernels/quantized_activations.hpp).
    template <A8Policy Q, class Code>
        requires std::same_as<typename Q::granularity, per_token>
    void apply_quantize(ConstMatrixView<float> x, ActBuffer<Code>& act, std::span<float> scratch) const noexcept {
        MQ_ASSERT(fuses_quantization(), "HadamardOnline::apply_quantize: needs a full (not block-diagonal) rotation");
        dispatch(arch_, [&](auto arch) { fwht_quantize_activations<Q>(arch, x, plan_, scratch, act); });
    }

    // W ← W·Q in double precision (W: [out × n], rows transformed by the reference transform).
    template <class T>
    void fold_into_weight(Matrix<T>& W) const {
        require(static_cast<std::size_t>(W.cols()) == n_, "HadamardOnline::fold_into_weight: weight has ", W.cols(),
                " columns, the rotation size is ", n_);
        Matrix<double> Wd = W.template cast<double>();
        fwht_ref<double>(blocks_of(view(Wd)), plan_);
        W = Wd.template cast<T>();
    }

private:
    // A row of n = (n / block) runs of `block`: the same memory as a taller matrix when contiguous.
    template <class T>
    MatrixView<T> blocks_of(MatrixView<T> x) const noexcept {
        if (block_ == n_) return x;
        MQ_ASSERT(x.contiguous() || x.rows <= 1, "HadamardOnline: a block-diagonal rotation needs contiguous rows");
        return MatrixView<T>(x.data, x.rows * (n_ / block_), block_);
    }

    // Picked once, here, not per call (README "SIMD arch").
    arch_id arch_ = active_arch();
    std::size_t n_ = 0;
    std::size_t block_ = 0;
    FwhtPlan plan_;
    RotationSpec spec_;
};

// The rotation of size n a model's block needs (NoRotation ignores n).
template <Rotation R>
R make_rotation(std::size_t n) {
    if constexpr (R::is_identity) {
        (void)n;
        return R{};
    } else {
        return R(n);
    }
}

static_assert(Rotation<NoRotation>);
static_assert(Rotation<HadamardOnline>);
static_assert(FusedQuantRotation<HadamardOnline>);

MQ_NAMESPACE_END
