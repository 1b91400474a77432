// Must not compile: a quantizer policy with every documented member but `range`.
// expect: QuantizerPolicy: missing member `range`
#include <mambaquant/nn/linear.hpp>

#include <cstdint>

struct NoRange {
    static constexpr int bits = 8;
    static constexpr bool is_float = false;
    using granularity = mq::per_token;
    using symmetry = mq::asymmetric;
    using code_type = std::uint8_t;
    static mq::QuantParams params(float lo, float hi) noexcept { return mq::params_from_range<8, mq::asymmetric>(lo, hi); }
};

int main() {
    const mq::MatrixXf w = mq::MatrixXf::Ones(8, 32);
    mq::Linear<mq::W8PerChannel, NoRange> layer(mq::view(w));
    return static_cast<int>(layer.out_features());
}
