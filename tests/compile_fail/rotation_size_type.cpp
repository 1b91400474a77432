// Must not compile: a rotation whose size() returns a float instead of std::size_t.
// expect: Rotation: member `size\(\)` must return std::size_t
#include <mambaquant/nn/linear.hpp>

struct FloatSizedRotation {
    static constexpr bool is_identity = false;
    explicit FloatSizedRotation(std::size_t n) : n_(static_cast<float>(n)) {}
    float size() const noexcept { return n_; }
    void apply(mq::MatrixView<float>) const noexcept {}
    template <class T>
    void fold_into_weight(mq::Matrix<T>&) const {}
    float n_;
};

int main() {
    const mq::MatrixXf w = mq::MatrixXf::Ones(8, 32);
    mq::Linear<mq::W8PerChannel, mq::A8PerToken, FloatSizedRotation> layer(mq::view(w), {}, FloatSizedRotation(32));
    return static_cast<int>(layer.out_features());
}
