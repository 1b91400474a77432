// The main job: every bundled model × method × bit width, calibrated on KJV's training split and
// scored on its held-out split; prints the table and writes out/accuracy.csv and per-layer reports.
//
//   accuracy_table --text .cache/kjv.txt --out out [--full] [--models DIR,DIR]
//
// Data (as tools/mamba_common.py): the text is the stdout of `bible "Gen1:1-Rev22:21"` (Debian's
// bible-kjv); the first ⌊0.9·n⌋ bytes are the training split, the rest is held out.
// Calibration: `--calib-windows` windows of 2048 bytes at evenly spaced offsets over the training
// split (calib/calibrate.hpp: calibration_windows), the same on every run.
// Evaluation: consecutive 2048-byte chunks from a zero state (models/*/metrics.json). Default run:
// the first `--eval-bytes` bytes of the held-out split and seed 0 only, to stay under 10 minutes on
// 2 cores; --full: the whole held-out split, seeds 0, 1, 2 for the methods with random Hadamard
// signs, and GPTQ rows for every method at w4a8.
// The second table (Vim): each `--vim-models` directory (default models/vim-digits-192) × method ×
// {w8a8, w4a8} → top-1 on its digits test split and the change in points, calibrated on its 128
// calibration images; out/vim_accuracy.csv and out/<model>/<method>-<bits>/layers.csv. Seeds as
// above. `--vim-only` skips the language-model table (and the text).
#include <mambaquant/eval/accuracy_table.hpp>
#include <mambaquant/eval/bits_per_byte.hpp>
#include <mambaquant/eval/layer_report.hpp>
#include <mambaquant/eval/token_file.hpp>
#include <mambaquant/eval/vim_accuracy.hpp>
#include <mambaquant/nn/mamba_model.hpp>
#include <mambaquant/nn/quantized_model.hpp>
#include <mambaquant/recipe/recipe.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {
constexpr const char* kHelp = R"(usage: accuracy_table [--full] [--text FILE] [--out DIR] [--models D1,D2] [--methods M1,M2]
                      [--calib-windows N] [--eval-bytes N] [--seeds N] [--vim-models D1,D2] [--vim-only]

Every model x method x bit width: calibrate on the training split (the first 90 % of FILE),
quantize, score bits per byte on the held-out split with the integer kernels; print the table,
write DIR/accuracy.csv and DIR/<model>/<method>-<bits>/layers.csv (per-layer SQNR / cosine).
Rows are printed as they finish and DIR/accuracy.csv is rewritten (temporary file + rename) after
each, so an interrupted run leaves the rows it finished.

  --full             the whole study: the whole held-out split, seeds 0, 1, 2 for the methods with
                     random Hadamard signs (quarot, mambaquant; the CSV gets one row per seed,
                     method@seed, and the mean row), GPTQ rows for every method at w4a8
  --seeds N          seeds 0..N-1 for the methods with random Hadamard signs (default 1; --full: 3)
  --text FILE        the corpus (default .cache/kjv.txt, as scripts/demo makes it)
  --out DIR          output directory (default out; created if missing, files replaced atomically)
  --models D1,D2     checkpoint directories (default models/kjv-mamba-192,models/kjv-mamba-192-outlier)
  --methods M1,M2    subset of rtn,smoothquant,quarot,quamba,mambaquant (default all)
  --calib-windows N  calibration windows of 2048 bytes, evenly spaced over the training split (default 4)
  --eval-bytes N     score only the first N held-out bytes (default 65536; scripts/demo passes 32768;
                     0 = the whole split; --full: the whole split unless --eval-bytes is given)
  --vim-models D1,D2 Vision Mamba checkpoints for the second table, DIR/vim_accuracy.csv (default
                     models/vim-digits-192; each directory holds digits.safetensors with its calibration
                     and test images)
  --vim-only         only the Vim table
  -h, --help         this text
)";

struct Options {
    std::vector<std::string> models{"models/kjv-mamba-192", "models/kjv-mamba-192-outlier"};
    std::string text = ".cache/kjv.txt";
    std::string out = "out";
    bool full = false;
    std::size_t calib_windows = 4;
    std::size_t eval_bytes = 65536;
    bool eval_bytes_given = false;
    std::size_t seeds = 0; // 0: 1, or 3 with --full
    std::vector<std::string> methods{"rtn", "smoothquant", "quarot", "quamba", "mambaquant"};
    std::vector<std::string> vim_models{"models/vim-digits-192"};
    bool vim_only = false;
};

std::vector<std::string> split_commas(const std::string& s) {
    std::vector<std::string> out;
    std::stringstream ss(s);
    for (std::string item; std::getline(ss, item, ',');)
        if (!item.empty()) out.push_back(item);
    return out;
}

std::size_t count(const std::string& opt, const std::string& v) {
    mq::require(!v.empty() && v.find_first_not_of("0123456789") == std::string::npos, opt,
                ": expected a non-negative integer, got \"", v, "\"");
    return static_cast<std::size_t>(std::stoull(v));
}

Options parse(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto value = [&]() -> std::string {
            mq::require(i + 1 < argc, "option ", a, " needs a value");
            return argv[++i];
        };
        if (a == "--full") o.full = true;
        else if (a == "--text") o.text = value();
        else if (a == "--out") o.out = value();
        else if (a == "--models") o.models = split_commas(value());
        else if (a == "--methods") o.methods = split_commas(value());
        else if (a == "--calib-windows") o.calib_windows = count(a, value());
        else if (a == "--eval-bytes") o.eval_bytes = count(a, value()), o.eval_bytes_given = true;
        else if (a == "--seeds") o.seeds = count(a, value());
        else if (a == "--vim-models") o.vim_models = split_commas(value());
        else if (a == "--vim-only") o.vim_only = true;
        else if (a == "--help" || a == "-h") {
            std::cout << kHelp;
            std::exit(0);
        } else mq::fail("unknown option ", a);
    }
    if (o.full && !o.eval_bytes_given) o.eval_bytes = 0; // whole held-out split
    if (o.seeds == 0) o.seeds = o.full ? 3 : 1;
    mq::require(o.calib_windows >= 1, "--calib-windows must be at least 1");
    return o;
}

// Evaluation spreads the chunks over 2 threads, each running its chunk's layers on the calling
// thread (no thread pool under it: two chunk threads sharing the library's 2-thread pool serialize
// on it and oversubscribe the cores); decode is one sequence, measured on the default pool.
template <class Model>
mq::AccuracyRow score(Model& model, const std::string& model_name, const std::string& method, const std::string& bits,
                      std::span<const std::uint32_t> held, double fp_bpb, double size_bytes) {
    const auto t0 = std::chrono::steady_clock::now();
    model.set_thread_pool(nullptr);
    const mq::EvalResult r = mq::evaluate(model, held, {2048, 2}, [&](std::size_t d, std::size_t t) {
        mq::progress_bar("evaluate " + method + " " + bits, d, t);
    });
    model.set_thread_pool(&mq::default_thread_pool());
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    mq::AccuracyRow row;
    row.model = model_name;
    row.method = method;
    row.bits = bits;
    row.bpb = r.bits_per_token();
    row.delta_pct = fp_bpb > 0 ? (row.bpb - fp_bpb) / fp_bpb * 100.0 : 0.0;
    row.size_mib = size_bytes / (1024.0 * 1024.0);
    row.prefill_tok_s = static_cast<double>(held.size()) / secs;
    row.decode_tok_s = mq::decode_tokens_per_second(model, held, 256);
    return row;
}

// The Vim table: rows to out/vim_accuracy.csv, the table printed, a per-layer report per result
// (its fake-quant twin against the float Vim of the same transformed weights, on 16 test images).
void vim_table(const Options& opt, const std::vector<std::uint64_t>& seeds) {
    std::vector<mq::VimAccuracyRow> csv, table;
    for (const std::string& dir : opt.vim_models) {
        mq::VimTableOptions o;
        o.methods = opt.methods;
        o.seeds = seeds;
        o.progress = [](std::string_view what, std::size_t d, std::size_t t) { mq::progress_bar(what, d, t); };
        const std::string name = fs::path(dir).filename().string();
        const mq::VimConfig cfg = mq::load_vim_config(dir);
        const mq::VimImages test = mq::load_vim_images(fs::path(dir) / "digits.safetensors", "test", cfg);
        o.on_result = [&](const std::string& method, const std::string& bits, const mq::QuantizedVimRecipe& q) {
            const fs::path d = fs::path(opt.out) / name / (method + "-" + bits);
            fs::create_directories(d);
            const auto twin = mq::build_quantized_vim_model(q.weights, cfg, q.config, mq::FakeQuant::yes);
            const auto ref = mq::build_quantized_vim_model(mq::without_online_rotations(q.weights), cfg, mq::QuantizationConfig{});
            mq::ImageBatch some = test.batch();
            some.count = std::min<std::size_t>(some.count, 16);
            mq::write_layer_report(d / "layers.csv", mq::vim_layer_report(ref, twin, q.config, some));
        };
        const auto rows = mq::vim_accuracy_rows(dir, o, &table);
        csv.insert(csv.end(), rows.begin(), rows.end());
    }
    std::cout << '\n';
    mq::print_vim_accuracy_header(std::cout);
    for (const auto& r : table) mq::print_vim_accuracy_row(std::cout, r);
    mq::write_vim_accuracy_csv(fs::path(opt.out) / "vim_accuracy.csv", csv);
    std::cout << "wrote " << (fs::path(opt.out) / "vim_accuracy.csv").string() << '\n';
}
} // namespace

int main(int argc, char** argv) try {
    const Options opt = parse(argc, argv);
    if (opt.vim_only) {
        fs::create_directories(opt.out);
        std::vector<std::uint64_t> seeds(opt.seeds);
        for (std::size_t i = 0; i < seeds.size(); ++i) seeds[i] = i;
        vim_table(opt, seeds);
        return 0;
    }
    const std::vector<std::uint32_t> text = mq::read_tokens(opt.text);
    mq::require(text.size() > 4096, "the text '", opt.text, "' is too short (", text.size(), " bytes)");
    const std::size_t split = (9 * text.size()) / 10;
    const std::span<const std::uint32_t> train(text.data(), split);
    std::span<const std::uint32_t> held(text.data() + split, text.size() - split);
    if (opt.eval_bytes && opt.eval_bytes < held.size()) held = held.first(opt.eval_bytes);
    const auto windows = mq::calibration_windows(train, 2048, opt.calib_windows);
    std::vector<std::uint64_t> seeds(opt.seeds);
    for (std::size_t i = 0; i < seeds.size(); ++i) seeds[i] = i;
    std::cout << "held-out: " << held.size() << " bytes ("
              << (held.size() + split == text.size() ? "whole split" : "first part, --full for all")
              << "); calibration: " << windows.size() << " x 2048 bytes of the training split; seeds: " << seeds.size()
              << std::endl;

    std::vector<mq::AccuracyRow> csv, table;
    fs::create_directories(opt.out);
    const fs::path csv_path = fs::path(opt.out) / "accuracy.csv";
    // Each finished row is printed at once and the CSV rewritten whole (temporary file + rename).
    auto emit = [&](const mq::AccuracyRow& r, bool to_csv, bool print) {
        if (to_csv) {
            csv.push_back(r);
            mq::write_accuracy_csv(csv_path, csv);
        }
        if (print) mq::print_accuracy_row(std::cout, r);
        std::cout.flush();
    };
    for (const std::string& dir : opt.models) {
        const std::string name = fs::path(dir).filename().string();
        const mq::MambaModel fmodel = mq::MambaModel::load(dir);
        const mq::MambaWeights fw = mq::mamba_weights(fmodel);
        const mq::MambaConfig& cfg = fmodel.config();
        double float_bytes = 0;
        mq::AccuracyRow fp;
        {
            mq::QuantizedMambaModel m = mq::build_quantized_model(fw, cfg, mq::QuantizationConfig{});
            float_bytes = static_cast<double>(m.bytes());
            fp = score(m, name, "fp", "fp32", held, 0.0, float_bytes);
        }
        table.push_back(fp);
        emit(fp, true, true);
        for (const std::string& bits : {std::string("w8a8"), std::string("w4a8")}) {
            for (const std::string& method : opt.methods) {
                const mq::Recipe recipe = mq::recipe_by_name(method);
                for (int with_gptq = 0; with_gptq < 2; ++with_gptq) {
                    if (with_gptq && (bits != "w4a8" || (!opt.full && method != "rtn" && method != "mambaquant"))) continue;
                    const std::string label = method + (with_gptq ? "+gptq" : "");
                    const auto& use_seeds = recipe.random_signs ? seeds : std::vector<std::uint64_t>{0};
                    mq::AccuracyRow mean;
                    for (std::uint64_t seed : use_seeds) {
                        mq::QuantizeOptions qo;
                        qo.bits = mq::bits_by_name(bits);
                        qo.seed = seed;
                        qo.gptq = with_gptq != 0;
                        qo.progress = [&](std::string_view what, std::size_t d, std::size_t t) {
                            mq::progress_bar(std::string(what) + " " + label, d, t);
                        };
                        const mq::QuantizedRecipe q = mq::run_recipe(recipe, fw, cfg, windows, qo);
                        mq::QuantizedMambaModel im = mq::build_quantized_model(q.weights, cfg, q.config);
                        mq::AccuracyRow row = score(im, name, label, bits, held, fp.bpb, static_cast<double>(im.bytes()));
                        if (recipe.random_signs) row.method = label + "@" + std::to_string(seed);
                        emit(row, true, use_seeds.size() > 1);
                        // Per-layer report (first seed): the fake-quant twin against the float model
                        // in the same transformed basis, on the first calibration window.
                        if (seed == use_seeds.front()) {
                            const fs::path d = fs::path(opt.out) / name / (label + "-" + bits);
                            fs::create_directories(d);
                            const mq::QuantizedMambaModel twin = mq::build_quantized_model(q.weights, cfg, q.config, mq::FakeQuant::yes);
                            const mq::QuantizationConfig float_cfg;
                            const mq::MambaWeights offline = mq::without_online_rotations(q.weights);
                            const mq::QuantizedMambaModel ref = mq::build_quantized_model(offline, cfg, float_cfg);
                            const auto rep = mq::layer_report(ref, twin, q.config, std::span(windows).first(1));
                            mq::write_layer_report(d / "layers.csv", rep);
                        }
                        if (mean.model.empty()) mean = row;
                        else {
                            mean.bpb += row.bpb, mean.prefill_tok_s += row.prefill_tok_s, mean.decode_tok_s += row.decode_tok_s;
                        }
                    }
                    const double k = static_cast<double>(use_seeds.size());
                    mean.method = label;
                    mean.bpb /= k, mean.prefill_tok_s /= k, mean.decode_tok_s /= k;
                    mean.delta_pct = (mean.bpb - fp.bpb) / fp.bpb * 100.0;
                    table.push_back(mean);
                    emit(mean, recipe.random_signs, true); // in the CSV: the mean row; the @seed rows are above
                }
            }
        }
    }
    std::cout << '\n';
    mq::print_accuracy_header(std::cout);
    for (const auto& r : table) mq::print_accuracy_row(std::cout, r);
    std::cout << "wrote " << csv_path.string() << '\n';
    if (!opt.vim_models.empty()) vim_table(opt, seeds);
    return 0;
} catch (const std::exception& e) {
    std::cerr << "\naccuracy_table: error: " << e.what() << '\n';
    return 1;
}
