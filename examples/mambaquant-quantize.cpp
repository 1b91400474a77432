// mambaquant-quantize: calibrate, quantize, evaluate and save any Mamba-1 checkpoint with one method.
#include <mambaquant/eval/accuracy_table.hpp>
#include <mambaquant/eval/bits_per_byte.hpp>
#include <mambaquant/eval/token_file.hpp>
#include <mambaquant/nn/mamba_model.hpp>
#include <mambaquant/nn/quantized_model.hpp>
#include <mambaquant/recipe/recipe.hpp>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string>
#include <system_error>

namespace fs = std::filesystem;

namespace {
constexpr const char* kHelp = R"(usage: mambaquant-quantize --model DIR --method METHOD --bits BITS --calib FILE --eval FILE --out DIR [options]

Calibrates a float Mamba-1 checkpoint on FILE (--calib), applies METHOD's transforms, quantizes,
scores bits per token on --eval with the integer kernels, prints the table row and writes the
quantized checkpoint (config.json with "quantization_config" + model.safetensors) to --out.

required
  --model DIR        float checkpoint directory (config.json + model.safetensors, HF or mamba_ssm layout)
  --method METHOD    rtn | smoothquant | quarot | quamba | mambaquant
  --bits BITS        w8a8 | w4a8   (W8 per channel; W4 per channel; activations A8 static per tensor,
                     the scan's state·C A8 dynamic per token)
  --calib FILE       calibration text (see FILE below); at least one window long
  --eval FILE        evaluation text (see FILE below); at least 2 tokens
  --out DIR          output directory; must not exist (written to DIR.tmp-PID, renamed at the end)

options
  --gptq             GPTQ for the weights of in_proj, x_proj, dt_proj, out_proj (damping 0.01,
                     blocks of 128, act-order off; Hessians from the final calibration pass)
  --seed N           seed of the randomized Hadamard signs (quarot, mambaquant); default 0
  --window N         calibration window in tokens; default 2048
  --calib-windows N  number of windows, evenly spaced over the calibration text; default 8
  --chunk N          evaluation chunk in tokens, each from a zero state; default 2048
  --fallback KIND    sizes with no exact Hadamard (n ≠ m·2^k): error (default) | block | random
  -h, --help         this text

FILE: raw bytes (one token per byte, for byte-level models), or a token-id file:
  bytes 0..7 "MQTOKENS", u32 version = 1, u32 reserved = 0, u64 count, then count u32 token ids
  (all little-endian).
The same model, data, method, bits and seed give a bit-identical checkpoint.
)";

struct Args {
    std::string model, method, bits, calib, eval, out;
    bool gptq = false;
    std::uint64_t seed = 0;
    std::size_t window = 2048, windows = 8, chunk = 2048;
    mq::UnsupportedSize fallback = mq::UnsupportedSize::error;
};

std::size_t to_size(const std::string& opt, const std::string& v) {
    mq::require(!v.empty() && v.find_first_not_of("0123456789") == std::string::npos, opt,
                ": expected a non-negative integer, got \"", v, "\"");
    return static_cast<std::size_t>(std::stoull(v));
}

Args parse(int argc, char** argv) {
    Args a;
    for (int i = 1; i < argc; ++i) {
        const std::string o = argv[i];
        auto value = [&]() -> std::string {
            mq::require(i + 1 < argc, o, " needs a value (see --help)");
            return argv[++i];
        };
        if (o == "-h" || o == "--help") {
            std::cout << kHelp;
            std::exit(0);
        } else if (o == "--model") a.model = value();
        else if (o == "--method") a.method = value();
        else if (o == "--bits") a.bits = value();
        else if (o == "--calib") a.calib = value();
        else if (o == "--eval") a.eval = value();
        else if (o == "--out") a.out = value();
        else if (o == "--gptq") a.gptq = true;
        else if (o == "--seed") a.seed = to_size(o, value());
        else if (o == "--window") a.window = to_size(o, value());
        else if (o == "--calib-windows") a.windows = to_size(o, value());
        else if (o == "--chunk") a.chunk = to_size(o, value());
        else if (o == "--fallback") {
            const std::string f = value();
            if (f == "error") a.fallback = mq::UnsupportedSize::error;
            else if (f == "block") a.fallback = mq::UnsupportedSize::block_hadamard;
            else if (f == "random") a.fallback = mq::UnsupportedSize::random_orthogonal;
            else mq::fail("--fallback: unknown kind \"", f, "\" (expected error, block or random)");
        } else mq::fail("unknown option \"", o, "\" (see --help)");
    }
    for (auto [name, v] : {std::pair{"--model", &a.model}, {"--method", &a.method}, {"--bits", &a.bits},
                           {"--calib", &a.calib}, {"--eval", &a.eval}, {"--out", &a.out}})
        mq::require(!v->empty(), name, " is required (see --help)");
    return a;
}
} // namespace

int main(int argc, char** argv) {
    fs::path tmp;
    try {
        const Args a = parse(argc, argv);
        // Check everything cheap before the expensive part.
        const mq::Recipe recipe = mq::recipe_by_name(a.method);
        mq::QuantizeOptions qo;
        qo.bits = mq::bits_by_name(a.bits);
        mq::require(qo.bits.weight_bits > 0, "--bits: ", a.bits, " is the float model; choose w8a8 or w4a8");
        mq::require(!fs::exists(a.out), "--out: '", a.out, "' already exists; choose a new directory");
        const fs::path parent = fs::absolute(a.out).parent_path();
        mq::require(fs::exists(parent), "--out: parent directory '", parent.string(), "' does not exist");
        mq::require(fs::is_directory(parent), "--out: parent '", parent.string(), "' is not a directory");
        mq::require(::access(parent.c_str(), W_OK) == 0, "--out: parent directory '", parent.string(), "' is not writable");
        const std::vector<std::uint32_t> calib = mq::read_tokens(a.calib);
        const std::vector<std::uint32_t> eval = mq::read_tokens(a.eval);
        mq::require(!eval.empty(), "--eval: '", a.eval, "' is empty");
        mq::require(eval.size() >= 2, "--eval: '", a.eval, "' holds one token; at least 2 are needed to predict one");
        const auto windows = mq::calibration_windows(calib, a.window, a.windows);

        mq::MambaModel fmodel = mq::MambaModel::load(a.model);
        const mq::MambaWeights fw = mq::mamba_weights(fmodel);
        qo.seed = a.seed;
        qo.gptq = a.gptq;
        qo.fallback = a.fallback;
        qo.progress = [](std::string_view what, std::size_t d, std::size_t t) { mq::progress_bar(what, d, t); };
        const mq::QuantizedRecipe q = mq::run_recipe(recipe, fw, fmodel.config(), windows, qo);
        mq::QuantizedMambaModel model = mq::build_quantized_model(q.weights, fmodel.config(), q.config);

        // The evaluation threads run their chunks without a pool under them (nested pools on the
        // same cores serialize and oversubscribe); decode is measured on the default pool.
        fmodel.set_thread_pool(nullptr);
        model.set_thread_pool(nullptr);
        const mq::EvalResult fr = mq::evaluate(fmodel, eval, {a.chunk, 2}, [](std::size_t d, std::size_t t) {
            mq::progress_bar("evaluate float", d, t);
        });
        const auto t0 = std::chrono::steady_clock::now();
        const mq::EvalResult r = mq::evaluate(model, eval, {a.chunk, 2}, [](std::size_t d, std::size_t t) {
            mq::progress_bar("evaluate quantized", d, t);
        });
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        model.set_thread_pool(&mq::default_thread_pool());
        mq::AccuracyRow row;
        row.model = fs::path(a.model).filename().string();
        row.method = a.method + (a.gptq ? "+gptq" : "");
        row.bits = a.bits;
        row.bpb = r.bits_per_token();
        row.delta_pct = (r.bits_per_token() - fr.bits_per_token()) / fr.bits_per_token() * 100.0;
        row.size_mib = static_cast<double>(model.bytes()) / (1024.0 * 1024.0);
        row.prefill_tok_s = static_cast<double>(eval.size()) / secs;
        if (eval.size() > 1) row.decode_tok_s = mq::decode_tokens_per_second(model, eval, std::min<std::size_t>(256, eval.size() - 1));
        mq::print_accuracy_header(std::cout);
        mq::print_accuracy_row(std::cout, row);
        std::cout << "(float: " << fr.bits_per_token() << " bits per token over " << fr.predicted << " predicted tokens)\n";

        tmp = a.out + ".tmp-" + std::to_string(::getpid());
        model.save(tmp);
        fs::rename(tmp, a.out);
        std::cout << "wrote " << a.out << '\n';
        return 0;
    } catch (const std::exception& e) {
        std::error_code ec;
        if (!tmp.empty()) fs::remove_all(tmp, ec);
        std::cerr << "\nmambaquant-quantize: error: " << e.what() << '\n';
        return 1;
    }
}
