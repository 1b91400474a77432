// The float Vim classifier against PyTorch golden logits (tools/make_vim_golden.py), batch
// inference over threads, and the bad inputs of the model boundary.
#include <mambaquant/io/checkpoint.hpp>
#include <mambaquant/io/safetensors.hpp>
#include <mambaquant/io/vim_config.hpp>
#include <mambaquant/kernels/parallel.hpp>
#include <mambaquant/nn/vim_model.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

using doctest::Contains;

namespace {

const std::filesystem::path kRoot(MQ_SOURCE_DIR);
const std::filesystem::path kModel = kRoot / "models" / "vim-digits-192";
const std::filesystem::path kGolden = kRoot / "tests" / "golden" / "vim-digits-192.safetensors";
#if defined(__SANITIZE_ADDRESS__)
// The ASan+UBSan build (-O1) runs a Vim image in ~0.15 s of CPU: there the logits are checked on
// the first 72 of the 360 test images (every class present), everywhere else on all of them.
constexpr std::size_t kTestImages = 72;
#else
constexpr std::size_t kTestImages = 360;
#endif

const mq::VimModel& model() {
    static const mq::VimModel m = mq::VimModel::load(kModel);
    return m;
}

struct Golden {
    mq::FloatTensor images;
    std::vector<std::size_t> labels;
    mq::MatrixXf logits;
    std::vector<mq::MatrixXf> hidden;
    mq::Metadata meta;
    double number(const std::string& key) const { return std::stod(meta.at(key)); }
    mq::ImageBatch batch(std::size_t count) const {
        return {images.data.data(), count, images.shape[1], images.shape[2], images.shape[3]};
    }
};
const Golden& golden() {
    static const Golden g = [] {
        const auto f = mq::SafetensorsFile::open(kGolden);
        Golden r;
        r.meta = f.metadata();
        r.images = f.load_float("images");
        for (auto b : f.bytes("labels")) r.labels.push_back(static_cast<std::uint8_t>(b));
        r.logits = f.load_float("logits").matrix();
        for (std::size_t i = 0; f.contains("hidden." + std::to_string(i)); ++i)
            r.hidden.push_back(f.load_float("hidden." + std::to_string(i)).matrix());
        return r;
    }();
    return g;
}

// Tolerance against the float64 reference: PyTorch's own float32 forward misses it by e_t (stored
// in the golden file); the C++ forward is another float32 evaluation of the same operations in
// other summation orders (Eigen's GEMM blocking vs the reference BLAS), so its error is of the
// same size; 4·e_t leaves room for order-dependent rounding, and 2·2⁻²⁴·max|ref| covers the
// reference's own rounding to float32 in the file. A wrong tensor, direction or token position
// moves the logits by O(1), four orders above this.
double tolerance(double f32_err, double absmax) { return 4.0 * f32_err + 2.0 * std::ldexp(absmax, -24); }

} // namespace

TEST_CASE("VimModel: the bundled vim-digits-192 loads with the reference's shape") {
    const auto& c = model().config();
    CHECK(c.d_model == 192);
    CHECK(c.n_layer == 4);
    CHECK(c.d_inner == 384);
    CHECK(c.dt_rank == 12);
    CHECK(c.num_patches() == 16);
    CHECK(c.seq_len() == 17);
    CHECK(c.cls_token_position == 8); // the middle token, M/2
    CHECK(c.divide_out);
    CHECK(model().layers().size() == 4);
}

TEST_CASE("VimModel: hidden states and logits match the PyTorch golden data") {
    const Golden& g = golden();
    REQUIRE(g.hidden.size() == model().layers().size() + 1);
    SUBCASE("residual stream of the first images, after the embedding and after every layer") {
        const std::size_t n = static_cast<std::size_t>(g.hidden[0].rows()) / model().seq_len();
        std::vector<mq::MatrixXf> hidden;
        model().logits(g.batch(n), nullptr, &hidden);
        REQUIRE(hidden.size() == g.hidden.size());
        for (std::size_t i = 0; i < hidden.size(); ++i) {
            CAPTURE(i);
            const double tol = tolerance(g.number("f32_err_hidden." + std::to_string(i)),
                                         g.number("hidden_absmax." + std::to_string(i)));
            const double err = (hidden[i] - g.hidden[i]).cwiseAbs().maxCoeff();
            CAPTURE(err);
            CAPTURE(tol);
            CHECK(err <= tol);
        }
    }
    SUBCASE("logits of the test split, on both cores") {
        const auto n = std::min(kTestImages, g.labels.size());
        const mq::MatrixXf logits = model().logits(g.batch(n));
        const double tol = tolerance(g.number("f32_err_logits"), g.number("logits_absmax"));
        const double err = (logits - g.logits.topRows(static_cast<Eigen::Index>(n))).cwiseAbs().maxCoeff();
        CAPTURE(err);
        CAPTURE(tol);
        CHECK(err <= tol);
        // Top-1: the same class as the reference wherever the reference's top-2 margin exceeds
        // twice the tolerance (elsewhere the order is within rounding); report the accuracy.
        std::size_t correct = 0, ref_correct = 0, decided = 0;
        for (std::size_t i = 0; i < n; ++i) {
            Eigen::Index c = 0, r = 0;
            logits.row(static_cast<Eigen::Index>(i)).maxCoeff(&c);
            const auto ref = g.logits.row(static_cast<Eigen::Index>(i));
            ref.maxCoeff(&r);
            std::vector<float> v(ref.begin(), ref.end());
            std::nth_element(v.begin(), v.begin() + 1, v.end(), std::greater<>());
            if (v[0] - v[1] > 2 * tol) {
                ++decided;
                CHECK(c == r);
            }
            correct += static_cast<std::size_t>(c) == g.labels[i];
            ref_correct += static_cast<std::size_t>(r) == g.labels[i];
        }
        MESSAGE("C++ test top-1 ", double(correct) / double(n), " (reference ", double(ref_correct) / double(n), ", ",
                decided, " of ", n, " images decided beyond rounding)");
        // (the file holds the top-1 to 6 decimals; one image is 1/360)
        if (n == g.labels.size())
            CHECK(double(ref_correct) / double(n) == doctest::Approx(g.number("f64_top1")).epsilon(1e-5));
    }
}

TEST_CASE("VimModel: batch inference gives the same logits on 1 and on 2 threads") {
    const Golden& g = golden();
    const auto batch = g.batch(20); // 2 groups of 16, the last one short
    mq::ThreadPool two(2);
    const mq::MatrixXf serial = model().logits(batch, nullptr);
    const mq::MatrixXf parallel = model().logits(batch, &two);
    CHECK(serial == parallel); // groups are fixed by image index: bit-identical
    const auto cls = model().predict(batch, &two);
    for (std::size_t i = 0; i < cls.size(); ++i) {
        Eigen::Index c = 0;
        serial.row(static_cast<Eigen::Index>(i)).maxCoeff(&c);
        CHECK(cls[i] == static_cast<std::size_t>(c));
    }
}

TEST_CASE("VimModel: bad inputs are clear errors") {
    const Golden& g = golden();
    SUBCASE("wrong channel count") {
        auto b = g.batch(1);
        b.channels = 3;
        CHECK_THROWS_WITH_AS(model().logits(b), Contains("images have 3 channels, the model takes 1"), mq::error);
    }
    SUBCASE("wrong image size") {
        auto b = g.batch(2);
        b.height = 7;
        b.width = 9;
        CHECK_THROWS_WITH_AS(model().logits(b), Contains("images are 7x9, the model takes 8x8"), mq::error);
    }
    SUBCASE("non-finite pixel") {
        std::vector<float> img(g.images.data.begin(), g.images.data.begin() + 64);
        img[10] = std::nanf("");
        const mq::ImageBatch b{img.data(), 1, 1, 8, 8};
        CHECK_THROWS_WITH_AS(model().logits(b), Contains("pixel 10 is not finite"), mq::error);
    }
    SUBCASE("class token position outside the sequence") {
        auto cfg = model().config();
        cfg.cls_token_position = 17;
        CHECK_THROWS_WITH_AS(mq::VimModel::from_checkpoint(cfg, mq::Checkpoint::open(kModel)),
                             Contains("cls_token_position 17 is outside the sequence of 17 tokens"), mq::error);
    }
    SUBCASE("checkpoint missing a backward-direction tensor") {
        const auto dir = std::filesystem::temp_directory_path() / "mq_test_vim_no_backward";
        std::filesystem::create_directories(dir);
        std::filesystem::copy_file(kModel / "config.json", dir / "config.json",
                                   std::filesystem::copy_options::overwrite_existing);
        const auto ck = mq::Checkpoint::open(kModel);
        std::vector<mq::TensorData> kept;
        for (const auto& name : ck.names())
            if (name != "layers.2.mixer.x_proj_b.weight")
                kept.push_back({name, ck.info(name).dtype, ck.info(name).shape, ck.bytes(name)});
        mq::save_safetensors(dir / "model.safetensors", kept);
        CHECK_THROWS_WITH_AS(mq::VimModel::load(dir),
                             Contains("no backward-direction tensor \"layers.2.mixer.x_proj_b.weight\""), mq::error);
        std::filesystem::remove_all(dir);
    }
    SUBCASE("a language-model checkpoint is not a Vim") {
        CHECK_THROWS_WITH_AS(mq::VimModel::load(kRoot / "models" / "kjv-mamba-192"), Contains("model_type must be \"vim\""), mq::error);
    }
}
