// The quantized Vim from the same templates: VimBlock with W8 per-channel weights and int8
// per-token activations on the integer kernels (both directions' x_proj/dt_proj, the shared
// in_proj/out_proj), against the float model on the digits test split. Its own translation unit:
// the integer GEMM instantiations are heavy.
#include <mambaquant/io/safetensors.hpp>
#include <mambaquant/nn/vim_model.hpp>
#include <mambaquant/quant/quantizer.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cstddef>
#include <filesystem>

namespace {
const std::filesystem::path kRoot(MQ_SOURCE_DIR);
#if defined(__SANITIZE_ADDRESS__)
constexpr std::size_t kTestImages = 72; // ASan+UBSan (-O1): ~0.15 s of CPU per image and model
#else
constexpr std::size_t kTestImages = 360; // the whole test split
#endif

double top1(const mq::MatrixXf& logits, const mq::SafetensorsFile& f) {
    const auto labels = f.bytes("labels");
    std::size_t ok = 0;
    for (Eigen::Index i = 0; i < logits.rows(); ++i) {
        Eigen::Index c = 0;
        logits.row(i).maxCoeff(&c);
        ok += static_cast<std::uint8_t>(labels[static_cast<std::size_t>(i)]) == c;
    }
    return double(ok) / double(logits.rows());
}
} // namespace

TEST_CASE("VimModel: W8A8 (per-channel weights, dynamic per-token activations) keeps the float top-1") {
    using W8A8Vim = mq::BasicVimModel<mq::VimBlock<mq::W8PerChannel, mq::A8PerToken>>;
    const auto f = mq::SafetensorsFile::open(kRoot / "tests" / "golden" / "vim-digits-192.safetensors");
    const mq::FloatTensor images = f.load_float("images");
    const mq::ImageBatch batch{images.data.data(), std::min(kTestImages, images.shape[0]), 1, 8, 8};
    const auto fp = mq::VimModel::load(kRoot / "models" / "vim-digits-192");
    const auto q = W8A8Vim::load(kRoot / "models" / "vim-digits-192");
    const mq::MatrixXf lf = fp.logits(batch), lq = q.logits(batch);
    const double acc_fp = top1(lf, f), acc_q = top1(lq, f);
    // Logit error: int8 rounding of each activation row (±½ step of max|x|/127-ish) and weight row,
    // through 4 layers; measured, not assumed — the test pins the accuracy, which is what W8A8 must keep.
    MESSAGE("float top-1 ", acc_fp, ", W8A8 top-1 ", acc_q, ", max |logit diff| ",
            (lf - lq).cwiseAbs().maxCoeff(), " (|logits| ≤ ", lf.cwiseAbs().maxCoeff(), ")");
    // The paper's W8A8 claim (< 1 point lost); 1 point = 3.6 of the 360 images (of 72: none may be lost).
    CHECK(acc_q >= acc_fp - 0.01);
    CHECK((lf - lq).cwiseAbs().maxCoeff() > 0.0f); // it really ran the integer path
}
