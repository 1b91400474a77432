// Must not compile: int4 weights in groups of 48 (the kernel works in 32-k superchunks).
// expect: W4Policy: member `granularity` must be per_channel or per_group<G> with G % 32 == 0
#include <mambaquant/nn/linear.hpp>

int main() {
    const mq::MatrixXf w = mq::MatrixXf::Ones(8, 96);
    mq::Linear<mq::Quantizer<4, mq::per_group<48>, mq::symmetric>, mq::A8PerToken> layer(mq::view(w));
    return static_cast<int>(layer.out_features());
}
