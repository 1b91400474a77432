// Must not compile: a plain struct as a Linear's weight policy.
// expect: QuantizerPolicy: missing member `static constexpr int bits`
#include <mambaquant/nn/linear.hpp>

struct MyWeights {};

int main() {
    const mq::MatrixXf w = mq::MatrixXf::Ones(8, 32);
    mq::Linear<MyWeights, mq::A8PerToken> layer(mq::view(w));
    return static_cast<int>(layer.out_features());
}
