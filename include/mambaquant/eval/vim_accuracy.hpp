// The Vim table: top-1 on the digits test split per method and bit width, its CSV (out/vim_accuracy.csv), and the digits data.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/eval/layer_report.hpp>
#include <mambaquant/io/safetensors.hpp>
#include <mambaquant/io/vim_config.hpp>
#include <mambaquant/nn/quantization_config.hpp>
#include <mambaquant/nn/quantized_vim_model.hpp>
#include <mambaquant/nn/vim_model.hpp>
#include <mambaquant/nn/vim_weights.hpp>
#include <mambaquant/recipe/recipe.hpp>
#include <mambaquant/recipe/vim_recipe.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iomanip>
#include <map>
#include <ostream>
#include <span>
#include <string>
#include <string_view>
#include <vector>

MQ_NAMESPACE_BEGIN

// Images of one split as the model takes them: pixel·pixel_scale, [n, C, H, W].
struct VimImages {
    std::vector<float> pixels;
    std::vector<std::uint8_t> labels;
    std::size_t count = 0, channels = 0, height = 0, width = 0;

    ImageBatch batch() const { return {pixels.data(), count, channels, height, width}; }
};

// A split ("test" or "calib") of a model directory's digits.safetensors (tools/train_vim.py
// writes it: "<split>.images" U8 [n, H, W] and "<split>.labels" U8 [n]), scaled by the config's
// pixel_scale and checked against its image size and class count.
template <class Tag = void>
VimImages load_vim_images(const dependent_t<Tag, std::filesystem::path>& file, std::string_view split,
                          const dependent_t<Tag, VimConfig>& cfg) {
    const dependent_t<Tag, SafetensorsFile> f = dependent_t<Tag, SafetensorsFile>::open(file);
    const std::string in = std::string(split) + ".images", ln = std::string(split) + ".labels";
    const TensorInfo& ti = f.info(in);
    const TensorInfo& tl = f.info(ln);
    require(ti.dtype == DType::U8 && tl.dtype == DType::U8, file.string(), ": \"", in, "\" and \"", ln, "\" must be U8");
    require(cfg.channels == 1 && ti.shape.size() == 3 && ti.shape[1] == cfg.image_height && ti.shape[2] == cfg.image_width,
            file.string(), ": \"", in, "\" must be [n, ", cfg.image_height, ", ", cfg.image_width, "] for a ", cfg.channels,
            "-channel ", cfg.image_height, "x", cfg.image_width, " model");
    require(tl.shape.size() == 1 && tl.shape[0] == ti.shape[0], file.string(), ": \"", ln, "\" must be [", ti.shape[0], "]");
    VimImages out;
    out.count = ti.shape[0], out.channels = 1, out.height = cfg.image_height, out.width = cfg.image_width;
    for (std::byte b : f.bytes(ti)) out.pixels.push_back(static_cast<float>(static_cast<std::uint8_t>(b)) * cfg.pixel_scale);
    for (std::byte b : f.bytes(tl)) {
        const auto c = static_cast<std::uint8_t>(b);
        require(c < cfg.num_classes, file.string(), ": \"", ln, "\" holds class ", int(c), ", the model has ", cfg.num_classes);
        out.labels.push_back(c);
    }
    return out;
}

// Fraction of rows whose largest logit is the label's.
template <class Tag = void>
double top1(const dependent_t<Tag, MatrixXf>& logits, std::span<const std::uint8_t> labels) {
    require(static_cast<std::size_t>(logits.rows()) == labels.size(), "top1: ", logits.rows(), " rows of logits, ",
            labels.size(), " labels");
    if (labels.empty()) return 0.0;
    std::size_t ok = 0;
    for (Eigen::Index i = 0; i < logits.rows(); ++i) {
        Eigen::Index c = 0;
        logits.row(i).maxCoeff(&c);
        ok += c == labels[static_cast<std::size_t>(i)];
    }
    return static_cast<double>(ok) / static_cast<double>(labels.size());
}

// The per-layer report (eval/layer_report.hpp) of a quantized Vim against the float Vim of the
// same transformed weights, image by image; layers are direction layers (2l forward, 2l+1
// backward of Vim layer l; shared sites appear under both), the head's input under 2·n_layer.
template <class Reference, class Quantized>
std::vector<LayerReportRow> vim_layer_report(const Reference& reference, const Quantized& quantized,
                                             const QuantizationConfig& qc, const ImageBatch& images) {
    std::map<std::pair<std::size_t, TapPoint>, LayerReportRow> rows;
    for (std::size_t i = 0; i < images.count; ++i) {
        const ImageBatch one{images.image(i), 1, images.channels, images.height, images.width};
        dependent_t<Reference, detail::TapRecorder> ref_tap, q_tap;
        (void)reference.logits(one, nullptr, nullptr, 1, &ref_tap);
        (void)quantized.logits(one, nullptr, nullptr, 1, &q_tap);
        detail::add_layer_report(rows, ref_tap, q_tap, qc, 2 * reference.config().n_layer);
    }
    return detail::layer_report_rows(rows);
}

struct VimAccuracyRow {
    std::string model, method, bits;
    double top1 = 0.0;         // percent of the test split
    double delta_points = 0.0; // top1 − top1_float, in percentage points
};

inline constexpr const char* kVimAccuracyCsvHeader = "model,method,bits,top1,delta_points";

// Writes rows to `path` through a temporary file renamed into place.
template <class Tag = void>
void write_vim_accuracy_csv(const dependent_t<Tag, std::filesystem::path>& path,
                            const dependent_t<Tag, std::vector<VimAccuracyRow>>& rows) {
    const std::filesystem::path tmp = path.string() + ".tmp";
    {
        std::ofstream f(tmp);
        require(static_cast<bool>(f), "vim accuracy table: cannot write '", tmp.string(), "'");
        f << kVimAccuracyCsvHeader << '\n' << std::setprecision(6);
        for (const auto& r : rows) f << r.model << ',' << r.method << ',' << r.bits << ',' << r.top1 << ',' << r.delta_points << '\n';
        require(static_cast<bool>(f), "vim accuracy table: writing '", tmp.string(), "' failed");
    }
    std::filesystem::rename(tmp, path);
}

template <class Tag = void>
void print_vim_accuracy_header(dependent_t<Tag, std::ostream>& out) {
    out << std::left << std::setw(24) << "model" << std::setw(16) << "method" << std::setw(6) << "bits" << std::right
        << std::setw(9) << "top1%" << std::setw(9) << "delta" << '\n';
}
template <class Tag = void>
void print_vim_accuracy_row(dependent_t<Tag, std::ostream>& out, const dependent_t<Tag, VimAccuracyRow>& r) {
    out << std::left << std::setw(24) << r.model << std::setw(16) << r.method << std::setw(6) << r.bits << std::right
        << std::fixed << std::setprecision(2) << std::setw(9) << r.top1 << std::setw(9) << r.delta_points << '\n'
        << std::defaultfloat << std::setprecision(6);
}

struct VimTableOptions {
    std::vector<std::string> methods{"rtn", "smoothquant", "quarot", "quamba", "mambaquant"};
    std::vector<std::string> bits{"w8a8", "w4a8"};
    std::vector<std::uint64_t> seeds{0}; // for the methods with random Hadamard signs
    std::function<void(std::string_view, std::size_t, std::size_t)> progress;
    // Called with every quantized result (e.g. to write a per-layer report); may be empty.
    std::function<void(const std::string& method, const std::string& bits, const QuantizedVimRecipe&)> on_result;
};

// The Vim table of one model directory (config.json, model.safetensors, digits.safetensors):
// calibrated on the "calib" split, scored on the integer path over the "test" split. Rows: the
// float model, then per bits and method one row (methods with random signs: a "method@seed" row
// per seed, then the mean named "method"), as out/accuracy.csv names them. `table` (optional)
// receives the rows printed as the table (float and the means). (A template never spelled by
// callers: instantiated only where called.)
template <class Tag = void>
std::vector<VimAccuracyRow> vim_accuracy_rows(const dependent_t<Tag, std::filesystem::path>& dir,
                                              const dependent_t<Tag, VimTableOptions>& o,
                                              std::vector<VimAccuracyRow>* table = nullptr) {
    const VimConfig cfg = load_vim_config(dir);
    const VimWeights fw = load_vim_weights(dir);
    const VimImages test = load_vim_images(dir / "digits.safetensors", "test", cfg);
    const VimImages calib = load_vim_images(dir / "digits.safetensors", "calib", cfg);
    const std::string name = dir.filename().string();
    std::vector<VimAccuracyRow> rows;
    auto score = [&](const dependent_t<Tag, QuantizedVimModel>& m) {
        return 100.0 * top1(m.logits(test.batch()), test.labels);
    };
    const double fp = score(build_quantized_vim_model(fw, cfg, QuantizationConfig{}));
    rows.push_back({name, "fp", "fp32", fp, 0.0});
    if (table) table->push_back(rows.back());
    for (const std::string& bits : o.bits)
        for (const std::string& method : o.methods) {
            const Recipe recipe = recipe_by_name(method);
            const std::vector<std::uint64_t> seeds = recipe.random_signs ? o.seeds : std::vector<std::uint64_t>{0};
            double sum = 0.0;
            for (std::uint64_t seed : seeds) {
                QuantizeOptions qo;
                qo.bits = bits_by_name(bits);
                qo.seed = seed;
                qo.progress = o.progress;
                const QuantizedVimRecipe q = run_vim_recipe(recipe, fw, cfg, calib.batch(), qo);
                const double t = score(build_quantized_vim_model(q.weights, cfg, q.config));
                if (o.on_result && seed == seeds.front()) o.on_result(method, bits, q);
                sum += t;
                if (recipe.random_signs) rows.push_back({name, method + "@" + std::to_string(seed), bits, t, t - fp});
            }
            const double mean = sum / static_cast<double>(seeds.size());
            rows.push_back({name, method, bits, mean, mean - fp});
            if (table) table->push_back(rows.back());
        }
    return rows;
}

MQ_NAMESPACE_END
