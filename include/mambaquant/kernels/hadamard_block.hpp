// The small dense Hadamard blocks H_m (m ∈ kHadamardBlockSizes), the size decomposition
// n = m·2^k and the seeded random signs: what the fast transform (kernels/fwht.hpp) is built from.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/rng.hpp>
#include <mambaquant/core/tensor.hpp>

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

MQ_NAMESPACE_BEGIN

// The dense block orders m of n = m·2^k. Each has a construction below; the tests prove
// H·Hᵀ = m·I with entries ±1 for every one of them.
//   1                    [1]
//   12, 20, 60, 108, 140 Paley I,  q = m − 1 prime, q ≡ 3 (mod 4)
//   28, 36, 52           Paley II, q = m/2 − 1 ∈ {13, 17, 25 = 5²}, q ≡ 1 (mod 4)
//   40                   Sylvester doubling of the 20-block: [[H20, H20], [H20, −H20]]
//   156, 172             Williamson array of order t = 39, 43 (four symmetric circulants)
inline constexpr std::array<std::size_t, 12> kHadamardBlockSizes = {1,  12, 20,  28,  36,  40,
                                                                    52, 60, 108, 140, 156, 172};

// n = m·2^k.
struct HadamardFactors {
    std::size_t m = 1;     // dense block order, one of kHadamardBlockSizes
    std::size_t pow2 = 1;  // 2^k
    unsigned log2_pow2 = 0; // k

    constexpr std::size_t size() const noexcept { return m * pow2; }
    friend constexpr bool operator==(const HadamardFactors&, const HadamardFactors&) = default;
};

constexpr bool is_power_of_two(std::size_t n) noexcept { return n != 0 && (n & (n - 1)) == 0; }

constexpr bool is_hadamard_block_size(std::size_t m) noexcept {
    for (std::size_t s : kHadamardBlockSizes)
        if (s == m) return true;
    return false;
}

// The decomposition with the smallest block (cheapest dense stage): 40·2^k is taken as 20·2^(k+1),
// so the 40-block is reached only through hadamard_block(40) or an explicit HadamardFactors.
constexpr std::optional<HadamardFactors> try_decompose_hadamard_size(std::size_t n) noexcept {
    if (n == 0) return std::nullopt;
    for (std::size_t m : kHadamardBlockSizes) {
        if (n % m != 0 || !is_power_of_two(n / m)) continue;
        HadamardFactors f;
        f.m = m;
        f.pow2 = n / m;
        while ((std::size_t{1} << f.log2_pow2) < f.pow2) ++f.log2_pow2;
        return f;
    }
    return std::nullopt;
}

template <class = void>
std::string supported_hadamard_factors_text() {
    std::string s = "n = m·2^k with m ∈ {";
    for (std::size_t i = 0; i < kHadamardBlockSizes.size(); ++i) {
        if (i) s += ", ";
        s += std::to_string(kHadamardBlockSizes[i]);
    }
    return s + "}";
}

// n → (m, 2^k), or mq::error naming n and the supported factors.
template <class = void>
HadamardFactors decompose_hadamard_size(std::size_t n) {
    const auto f = try_decompose_hadamard_size(n);
    if (!f)
        fail("hadamard: unsupported Hadamard dimension ", n, "; exact Hadamard needs ",
             supported_hadamard_factors_text(),
             " (use a block-diagonal Hadamard or a random orthogonal rotation for other sizes)");
    return *f;
}

namespace detail {

// Entries ±1 (0 only inside the construction helpers), row-major m×m. Spelled dependent on the
// constructions' Tag so that their bodies build Eigen's types only where a block is made.
template <class Tag>
using SignMatrix = dependent_t<Tag, Matrix<int>>;

constexpr std::int64_t mod_pow(std::int64_t base, std::int64_t exp, std::int64_t mod) noexcept {
    std::int64_t r = 1;
    base %= mod;
    if (base < 0) base += mod;
    while (exp > 0) {
        if (exp & 1) r = r * base % mod;
        base = base * base % mod;
        exp >>= 1;
    }
    return r;
}

// Legendre symbol (a/p) for an odd prime p: 0, +1 or −1 (Euler's criterion a^((p−1)/2)).
constexpr int legendre(std::int64_t a, std::int64_t p) noexcept {
    a %= p;
    if (a < 0) a += p;
    if (a == 0) return 0;
    return mod_pow(a, (p - 1) / 2, p) == 1 ? 1 : -1;
}

// GF(q) for q = p or p²: element index i = a + p·b stands for a + b·α with α² = r, r a
// non-residue mod p. The quadratic character of GF(p²) is the Legendre symbol of the norm
// N(a + bα) = a² − r·b² (since x^((p²−1)/2) = N(x)^((p−1)/2)).
struct SmallField {
    std::int64_t p = 0;
    int degree = 1; // 1 or 2
    std::int64_t nonresidue = 0;

    std::int64_t order() const noexcept { return degree == 1 ? p : p * p; }
    // χ(x_i − x_j)
    int chi_of_difference(std::int64_t i, std::int64_t j) const noexcept {
        const std::int64_t a = ((i % p) - (j % p) + p) % p;
        if (degree == 1) return legendre(a, p);
        const std::int64_t b = ((i / p) - (j / p) + p) % p;
        if (a == 0 && b == 0) return 0;
        return legendre(a * a - nonresidue * b * b, p);
    }
};

template <class = void>
SmallField make_field(std::int64_t p, int degree) {
    SmallField f;
    f.p = p;
    f.degree = degree;
    for (std::int64_t r = 2; r < p; ++r)
        if (legendre(r, p) == -1) {
            f.nonresidue = r;
            break;
        }
    return f;
}

// Jacobsthal matrix Q_ij = χ(x_i − x_j), q×q.
template <class Tag = void>
SignMatrix<Tag> jacobsthal(const SmallField& f) {
    const auto q = static_cast<Eigen::Index>(f.order());
    SignMatrix<Tag> Q(q, q);
    for (Eigen::Index i = 0; i < q; ++i)
        for (Eigen::Index j = 0; j < q; ++j) Q(i, j) = f.chi_of_difference(i, j);
    return Q;
}

// Paley I, q ≡ 3 (mod 4): S = [[0, 1ᵀ], [−1, Q]] is skew with S·Sᵀ = q·I, so H = I + S has
// H·Hᵀ = I − S² = (q + 1)·I.
template <class Tag = void>
SignMatrix<Tag> paley_one(const SmallField& f) {
    const SignMatrix<Tag> Q = jacobsthal<Tag>(f);
    const Eigen::Index n = Q.rows() + 1;
    SignMatrix<Tag> H(n, n);
    H(0, 0) = 1;
    for (Eigen::Index j = 1; j < n; ++j) {
        H(0, j) = 1;
        H(j, 0) = -1;
    }
    for (Eigen::Index i = 1; i < n; ++i)
        for (Eigen::Index j = 1; j < n; ++j) H(i, j) = Q(i - 1, j - 1) + (i == j ? 1 : 0);
    return H;
}

// Paley II, q ≡ 1 (mod 4): C = [[0, 1ᵀ], [1, Q]] is a symmetric conference matrix (C² = q·I);
// H = C ⊗ [[1, 1], [1, −1]] + I ⊗ [[1, −1], [−1, −1]] has order 2(q + 1).
template <class Tag = void>
SignMatrix<Tag> paley_two(const SmallField& f) {
    const SignMatrix<Tag> Q = jacobsthal<Tag>(f);
    const Eigen::Index c = Q.rows() + 1;
    SignMatrix<Tag> C(c, c);
    C(0, 0) = 0;
    for (Eigen::Index j = 1; j < c; ++j) C(0, j) = C(j, 0) = 1;
    for (Eigen::Index i = 1; i < c; ++i)
        for (Eigen::Index j = 1; j < c; ++j) C(i, j) = Q(i - 1, j - 1);
    SignMatrix<Tag> H(2 * c, 2 * c);
    for (Eigen::Index i = 0; i < c; ++i)
        for (Eigen::Index j = 0; j < c; ++j) {
            const int v = C(i, j);
            if (v == 0) { // diagonal: I ⊗ [[1, −1], [−1, −1]]
                H(2 * i, 2 * j) = 1;
                H(2 * i, 2 * j + 1) = -1;
                H(2 * i + 1, 2 * j) = -1;
                H(2 * i + 1, 2 * j + 1) = -1;
            } else {
                H(2 * i, 2 * j) = v;
                H(2 * i, 2 * j + 1) = v;
                H(2 * i + 1, 2 * j) = v;
                H(2 * i + 1, 2 * j + 1) = -v;
            }
        }
    return H;
}

// Williamson matrices of order t (Williamson 1944; Baumert & Hall 1965): first rows of four
// symmetric ±1 circulants A, B, C, D with A² + B² + C² + D² = 4t·I. Each string lists all t
// entries; the tests check symmetry (x_i = x_{t−i}) and the zero periodic autocorrelation sum.
struct WilliamsonRows {
    std::size_t t;
    std::string_view a, b, c, d;
};
inline constexpr WilliamsonRows kWilliamson39 = {
    39, "+++--+-+-----+--++----++--+-----+-+--++", "++++---+--++----+-+--+-+----++--+---+++",
    "+++--++-+---+-+--+----+--+-+---+-++--++", "+---++-+-+-----+++-++-+++-----+-+-++---"};
inline constexpr WilliamsonRows kWilliamson43 = {
    43, "+---++--++++-+-+++-++--++-+++-+-++++--++---",
    "++-++++++----+-+--++-++-++--+-+----++++++-+", "+++-+-++--+-+-++++-+----+-++++-+-+--++-+-++",
    "++---++++-+--+--++--------++--+--+-++++---+"};

// H = [[ A,  B,  C,  D],
//      [−B,  A, −D,  C],
//      [−C,  D,  A, −B],
//      [−D, −C,  B,  A]]   (circulants commute and are symmetric, so H·Hᵀ = (A²+B²+C²+D²) ⊗ I)
template <class Tag = void>
SignMatrix<Tag> williamson(const WilliamsonRows& w) {
    const auto t = static_cast<Eigen::Index>(w.t);
    const std::string_view rows[4] = {w.a, w.b, w.c, w.d};
    // Block (r, c) of the array: which circulant and its sign.
    constexpr int which[4][4] = {{0, 1, 2, 3}, {1, 0, 3, 2}, {2, 3, 0, 1}, {3, 2, 1, 0}};
    constexpr int sign[4][4] = {{1, 1, 1, 1}, {-1, 1, -1, 1}, {-1, 1, 1, -1}, {-1, -1, 1, 1}};
    SignMatrix<Tag> H(4 * t, 4 * t);
    for (int br = 0; br < 4; ++br)
        for (int bc = 0; bc < 4; ++bc) {
            const std::string_view seq = rows[which[br][bc]];
            for (Eigen::Index i = 0; i < t; ++i)
                for (Eigen::Index j = 0; j < t; ++j) {
                    const char ch = seq[static_cast<std::size_t>((j - i + t) % t)];
                    H(br * t + i, bc * t + j) = sign[br][bc] * (ch == '+' ? 1 : -1);
                }
        }
    return H;
}

} // namespace detail

// The unnormalized m×m Hadamard block (entries ±1, H·Hᵀ = m·I) for m ∈ kHadamardBlockSizes.
template <class Tag = void>
Matrix<int> hadamard_block(std::size_t m) {
    using detail::make_field;
    switch (m) {
    case 1: return detail::SignMatrix<Tag>::Ones(1, 1);
    case 12: return detail::paley_one<Tag>(make_field(11, 1));
    case 20: return detail::paley_one<Tag>(make_field(19, 1));
    case 28: return detail::paley_two<Tag>(make_field(13, 1));
    case 36: return detail::paley_two<Tag>(make_field(17, 1));
    case 40: {
        const detail::SignMatrix<Tag> h = hadamard_block<Tag>(20);
        detail::SignMatrix<Tag> H(40, 40);
        H << h, h, h, -h;
        return H;
    }
    case 52: return detail::paley_two<Tag>(make_field(5, 2));
    case 60: return detail::paley_one<Tag>(make_field(59, 1));
    case 108: return detail::paley_one<Tag>(make_field(107, 1));
    case 140: return detail::paley_one<Tag>(make_field(139, 1));
    case 156: return detail::williamson<Tag>(detail::kWilliamson39);
    case 172: return detail::williamson<Tag>(detail::kWilliamson43);
    default:
        fail("hadamard_block: no construction for block order ", m, "; supported block orders are ",
             supported_hadamard_factors_text());
    }
}

// The seeded random signs s ∈ {±1}^n of the randomized Hadamard: s_i = Rng(seed).sign() drawn in
// order i = 0..n−1, the same on every machine.
template <class = void>
std::vector<float> random_signs(std::size_t n, std::uint64_t seed) {
    Rng rng(seed);
    std::vector<float> s(n);
    for (auto& v : s) v = static_cast<float>(rng.sign());
    return s;
}

MQ_NAMESPACE_END
