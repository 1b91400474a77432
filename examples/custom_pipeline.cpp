// A quantization pipeline assembled from the library's transforms and scored with the evaluation
// harness: a recipe of my own (dt shift + S-SiLU gate smoothing, then a KLT-enhanced residual
// rotation R1 = K1·H, online Hadamard at out_proj) beside the built-in RTN and MambaQuant, each at
// W8A8, calibrated and evaluated on short passages of the King James text (small inputs: a real
// run calibrates on thousands of bytes — see examples/accuracy_table.cpp and scripts/demo).
//   ./custom_pipeline [MODEL_DIR]
#include <mambaquant/eval/bits_per_byte.hpp>
#include <mambaquant/nn/mamba_model.hpp>
#include <mambaquant/nn/quantized_model.hpp>
#include <mambaquant/recipe/recipe.hpp>

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#ifndef MQ_SOURCE_DIR
#define MQ_SOURCE_DIR "."
#endif

namespace {
// Genesis 1:1–8 (calibration) and Psalm 23 (evaluation), public domain.
const char* kCalibration =
    "In the beginning God created the heaven and the earth. And the earth was without form, and void; and "
    "darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters. And God "
    "said, Let there be light: and there was light. And God saw the light, that it was good: and God divided the "
    "light from the darkness. And God called the light Day, and the darkness he called Night. And the evening and "
    "the morning were the first day. And God said, Let there be a firmament in the midst of the waters, and let it "
    "divide the waters from the waters. And God made the firmament, and divided the waters which were under the "
    "firmament from the waters which were above the firmament: and it was so. And God called the firmament Heaven.";
const char* kEvaluation =
    "The LORD is my shepherd; I shall not want. He maketh me to lie down in green pastures: he leadeth me beside "
    "the still waters. He restoreth my soul: he leadeth me in the paths of righteousness for his name's sake. Yea, "
    "though I walk through the valley of the shadow of death, I will fear no evil: for thou art with me; thy rod "
    "and thy staff they comfort me. Thou preparest a table before me in the presence of mine enemies: thou "
    "anointest my head with oil; my cup runneth over.";

std::vector<std::uint32_t> bytes_of(const std::string& s) { return {s.begin(), s.end()}; }

// My recipe: each stage's steps see statistics of the weights as the previous stage left them.
mq::Recipe my_recipe() {
    mq::Recipe r;
    r.name = "my-recipe";
    r.stages.push_back({{mq::steps::shift_dt(), mq::steps::smooth_gate(0.5)}, {}});
    mq::CalibrationPlan klt; // R1 = K1·H needs the in_proj input covariance
    klt.covariance[static_cast<std::size_t>(mq::TapPoint::in_proj_input)] = true;
    r.stages.push_back({{mq::steps::rotate_residual(mq::steps::R1Basis::klt_pooled)}, klt});
    r.online = {mq::steps::rotate_out_proj_input()};
    r.range = mq::RangeRule::minmax;
    return r;
}
} // namespace

int main(int argc, char** argv) {
    const std::string dir = argc > 1 ? argv[1] : std::string(MQ_SOURCE_DIR) + "/models/kjv-mamba-192";
    try {
        const auto model = mq::MambaModel::load(dir);
        const mq::MambaConfig& cfg = model.config();
        const mq::MambaWeights w = mq::mamba_weights(model);
        const auto calib = bytes_of(kCalibration), eval = bytes_of(kEvaluation);
        const auto windows = mq::calibration_windows(calib, 128, 4);
        mq::EvalOptions eo;
        eo.chunk = eval.size(); // one chunk: the whole passage from a zero state
        eo.threads = 1;
        const double fp = mq::evaluate(mq::build_quantized_model(w, cfg, mq::QuantizationConfig{}), eval, eo).bits_per_token();
        std::printf("%-12s %6s  %8s  %s\n", "method", "bits", "bpb", "vs float");
        std::printf("%-12s %6s  %8.4f\n", "float", "fp32", fp);
        for (const mq::Recipe& recipe : {mq::recipe_by_name("rtn"), mq::recipe_by_name("mambaquant"), my_recipe()}) {
            mq::QuantizeOptions o;
            o.bits = mq::bits_by_name("w8a8");
            const mq::QuantizedRecipe q = mq::run_recipe(recipe, w, cfg, windows, o);
            const double bpb = mq::evaluate(mq::build_quantized_model(q.weights, cfg, q.config), eval, eo).bits_per_token();
            std::printf("%-12s %6s  %8.4f  %+6.2f %%\n", recipe.name.c_str(), "w8a8", bpb, 100.0 * (bpb - fp) / fp);
        }
    } catch (const mq::error& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return 0;
}
