// MambaModel: embedding, a stack of MambaBlocks, final RMSNorm and LM head; prefill and decode.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/rng.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/io/atomic_file.hpp>
#include <mambaquant/io/checkpoint.hpp>
#include <mambaquant/io/config.hpp>
#include <mambaquant/io/mamba_tensors.hpp>
#include <mambaquant/nn/mamba_block.hpp>
#include <mambaquant/nn/rms_norm.hpp>

#include <Eigen/Core>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

MQ_NAMESPACE_BEGIN

// Which rows of a prefill need logits: all (scoring a text) or only the last (generation; the
// LM head is a V×D GEMM per row, the largest single cost of a small model).
enum class Logits : std::uint8_t { all, last, none };

// Everything one sequence carries between calls: per-layer caches, scratch, the position.
template <class Block>
struct MambaSequenceState {
    std::vector<MambaCache> caches;
    typename Block::Workspace workspace;
    MatrixXf h;       // residual stream of the current call [L, D]
    MatrixXf normed;  // final-norm output
    std::size_t position = 0;
    // A prefill runs in chunks of at most this many tokens (plus one, so that no chunk is a
    // single row), so its workspaces stay [chunk, ·] however long the prompt: a 100 KB byte prompt
    // needs megabytes, not a gigabyte. The conv window and the scan state carry across chunks, and
    // a multiple of 4 keeps every token in the same GEMM column block (Eigen's nr) as in one pass,
    // so the float model's result is bit-identical to one pass (tests/nn). A per-tensor *dynamic*
    // activation quantizer takes its scale per call, so its result depends on the chunking, as it
    // already depends on how a sequence is split into calls.
    std::size_t chunk_tokens = 256;
    void reset() {
        for (auto& c : caches) c.reset();
        position = 0;
    }
};

namespace detail {
// Rows of the prefill chunk starting at `begin` of L: at most `chunk`, never leaving a 1-row tail.
template <class = void>
Eigen::Index prefill_chunk_rows(Eigen::Index L, Eigen::Index begin, std::size_t chunk) noexcept {
    const auto c = static_cast<Eigen::Index>(chunk);
    return L - begin <= c + 1 ? L - begin : c;
}
// normed = RMSNorm_f(rows [first, n) of h), shown to `tap` as the LM head's input (after n_layer layers).
template <class Tag = void>
void final_norm_rows(const dependent_t<Tag, MatrixXf>& h, Eigen::Index first,
                     const dependent_t<Tag, Eigen::RowVectorXf>& norm_f, float eps,
                     dependent_t<Tag, MatrixXf>& normed, ActivationTap* tap, std::size_t n_layer) {
    const Eigen::Index D = h.cols(), rows = h.rows() - first;
    normed.resize(rows, D);
    rms_norm(ConstMatrixView<float>(h.data() + first * D, static_cast<std::size_t>(rows), static_cast<std::size_t>(D)), norm_f,
             eps, view(normed));
    detail::tap(tap, n_layer, TapPoint::lm_head_input, view(std::as_const(normed)));
}
// Greedy continuation of `prompt` by `count` tokens for any model with make_state / prefill /
// decode (argmax over the first vocab_size logits, so padding rows are never produced).
template <class Model>
std::vector<std::uint32_t> greedy_continuation(const Model& m, std::span<const std::uint32_t> prompt, std::size_t count,
                                               std::size_t vocab_rows) {
    auto s = m.make_state();
    std::vector<std::uint32_t> out;
    if (count == 0) return out;
    MatrixXf logits = m.prefill(prompt, s, Logits::last);
    std::vector<float> row(vocab_rows);
    Eigen::Map<Eigen::RowVectorXf>(row.data(), logits.cols()) = logits.row(0);
    for (;;) {
        std::uint32_t best = 0;
        for (std::uint32_t v = 1; v < m.config().vocab_size; ++v)
            if (row[v] > row[best]) best = v;
        out.push_back(best);
        if (out.size() == count) return out;
        m.decode(best, s, row);
    }
}
} // namespace detail

template <class Block = MambaBlock<>>
class BasicMambaModel {
public:
    using block_type = Block;
    using State = MambaSequenceState<Block>;

    BasicMambaModel() = default;

    // From a checkpoint directory (config.json + model.safetensors or a sharded index).
    // (The checkpoint's and config's types are spelled dependent on Block: their members are then
    // compiled only where a model is loaded, not in every includer; core/config.hpp.)
    static BasicMambaModel load(const dependent_t<Block, std::filesystem::path>& dir) {
        require_float_checkpoint(dir);
        return from_checkpoint(load_mamba_config(dir), dependent_t<Block, Checkpoint>::open(dir));
    }

    // Tensor names are Hugging Face's (METHOD §1); both embedding spellings are accepted, the LM
    // head is `lm_head.weight` when present and the embedding when absent and tied.
    static BasicMambaModel from_checkpoint(const MambaConfig& cfg, const dependent_t<Block, Checkpoint>& ck);

    // A random model in the reference initialisation's spirit (for benchmarks and tests): weights
    // ~ U with the fan-in scale, A = −(1..N), Δ bias = softplus⁻¹ of log-uniform [1e−3, 1e−1].
    static BasicMambaModel random(const MambaConfig& cfg, std::uint64_t seed);

    // Writes config.json (in `layout`) and model.safetensors with Hugging Face names, F32,
    // A_log as loaded (A = −exp(A_log) lives in the scan weights). The embedding takes `layout`'s spelling; the head is
    // written only when untied.
    void save(const std::filesystem::path& dir, ConfigLayout layout = ConfigLayout::transformers,
              const Metadata& metadata = {{"format", "pt"}}) const
        requires(Block::is_float);

    // Every block's thread pool (nullptr: the calling thread only; see MambaBlock::set_thread_pool).
    void set_thread_pool(ThreadPool* pool) {
        for (auto& b : layers_) b.set_thread_pool(pool);
    }

    const MambaConfig& config() const noexcept { return config_; }
    const std::vector<Block>& layers() const noexcept { return layers_; }
    const MatrixXf& embedding() const noexcept { return embedding_; }
    const MatrixXf& lm_head() const noexcept { return tied_ ? embedding_ : lm_head_; }
    const Eigen::RowVectorXf& norm_f() const noexcept { return norm_f_; }
    bool tied() const noexcept { return tied_; }

    State make_state() const {
        State s;
        for (const auto& b : layers_) s.caches.push_back(b.make_cache());
        return s;
    }

    // Runs tokens through the model from `state` (empty at start), advancing it. Returns logits
    // [L, V] (Logits::all), [1, V] (last) or an empty matrix (none). `hidden`, when given,
    // receives the residual stream after each layer ([L, D] each); `tap`, when given, sees every
    // quantization site's input (nn/activation_tap.hpp).
    MatrixXf prefill(std::span<const std::uint32_t> tokens, State& state, Logits which = Logits::all,
                     std::vector<MatrixXf>* hidden = nullptr, ActivationTap* tap = nullptr) const;

    // One decode step: the logits [V] after `token`, the state advanced by one.
    void decode(std::uint32_t token, State& state, std::span<float> logits) const {
        require(logits.size() == static_cast<std::size_t>(lm_head().rows()), "MambaModel::decode: logits span of ",
                logits.size(), ", vocabulary is ", lm_head().rows());
        const std::uint32_t one[1] = {token};
        const MatrixXf out = prefill(one, state, Logits::all);
        Eigen::Map<Eigen::RowVectorXf>(logits.data(), out.cols()) = out.row(0);
    }

    // Greedy continuation of `prompt` by `count` tokens (argmax over the first vocab_size logits,
    // so padding rows are never produced).
    std::vector<std::uint32_t> generate_greedy(std::span<const std::uint32_t> prompt, std::size_t count) const {
        return detail::greedy_continuation(*this, prompt, count, static_cast<std::size_t>(lm_head().rows()));
    }
private:
    // A quantized checkpoint (nn/quantized_model.hpp) says so in config.json; refuse it by name.
    static void require_float_checkpoint(const std::filesystem::path& dir) {
        const auto file = std::filesystem::is_directory(dir) ? dir / "config.json" : dir;
        if (!std::filesystem::exists(file)) return; // load_mamba_config reports it
        const dependent_t<Block, nlohmann::json> j = detail::parse_untrusted_json(detail::read_text_file(file), file.string(), 1);
        require(!(j.is_object() && j.contains("quantization_config")), file.string(),
                ": a quantized checkpoint (\"quantization_config\" present); load it with QuantizedMambaModel::load");
    }
    static MatrixXf load_matrix(const dependent_t<Block, Checkpoint>& ck, const std::string& name, const std::vector<std::size_t>& shape,
                                std::size_t rows, std::size_t cols) {
        MatrixXf m;
        allocating(ck.source_of(name), detail::concat("tensor \"", name, "\" (", rows * cols * sizeof(float), " bytes)"),
                   [&] { m.resize(static_cast<Eigen::Index>(rows), static_cast<Eigen::Index>(cols)); });
        ck.load_float_into(name, shape, std::span<float>(m.data(), rows * cols));
        return m;
    }
    static Eigen::RowVectorXf row_vector(const dependent_t<Block, FloatTensor>& t) {
        return Eigen::Map<const dependent_t<Block, Eigen::RowVectorXf>>(t.data.data(), static_cast<Eigen::Index>(t.data.size()));
    }

    MambaConfig config_;
    MatrixXf embedding_; // [V, D]
    MatrixXf lm_head_;   // [V, D], empty when tied
    bool tied_ = true;
    Eigen::RowVectorXf norm_f_;
    std::vector<Block> layers_;
};

// The heavy members, defined out of the class so that `extern template` (MQ_EXTERN_TEMPLATE, with
// MQ_COMPILED) keeps an including translation unit from compiling them: in-class definitions are
// inline, and compilers instantiate inline members despite `extern template`.
template <class Block>
BasicMambaModel<Block> BasicMambaModel<Block>::from_checkpoint(const MambaConfig& cfg, const dependent_t<Block, Checkpoint>& ck) {
    // Every tensor present with the config's shape, float, and none left unread: checked on the
    // file's real sizes before anything below allocates (io/mamba_tensors.hpp).
    const MambaTensorNames names = check_mamba_checkpoint(cfg, ck);
    BasicMambaModel m;
    m.config_ = cfg;
    const std::size_t D = cfg.d_model, E = cfg.d_inner, N = cfg.d_state, R = cfg.dt_rank, K = cfg.d_conv,
                      V = cfg.padded_vocab;
    m.embedding_ = load_matrix(ck, names.embedding, {V, D}, V, D);
    if (names.lm_head) {
        m.lm_head_ = load_matrix(ck, "lm_head.weight", {V, D}, V, D);
        m.tied_ = false;
    } else {
        require(cfg.tie_embeddings, ck.path().string(),
                ": tensor \"lm_head.weight\" not found and the config does not tie embeddings");
        m.tied_ = true;
    }
    m.norm_f_ = row_vector(ck.load_float("backbone.norm_f.weight", {D}));
    m.layers_.reserve(cfg.n_layer);
    for (std::size_t i = 0; i < cfg.n_layer; ++i) {
        const std::string p = "backbone.layers." + std::to_string(i) + ".";
        const std::string mx = p + "mixer.";
        MambaLayerWeights w;
        w.norm = row_vector(ck.load_float(p + "norm.weight", {D})).transpose();
        w.in_proj = load_matrix(ck, mx + "in_proj.weight", {2 * E, D}, 2 * E, D);
        w.conv_w = load_matrix(ck, mx + "conv1d.weight", {E, 1, K}, E, K);
        if (cfg.conv_bias) w.conv_b = row_vector(ck.load_float(mx + "conv1d.bias", {E})).transpose();
        else w.conv_b = Eigen::VectorXf::Zero(static_cast<Eigen::Index>(E));
        w.x_proj = load_matrix(ck, mx + "x_proj.weight", {R + 2 * N, E}, R + 2 * N, E);
        w.dt_proj = load_matrix(ck, mx + "dt_proj.weight", {E, R}, E, R);
        w.dt_bias = row_vector(ck.load_float(mx + "dt_proj.bias", {E})).transpose();
        w.A_log = load_matrix(ck, mx + "A_log", {E, N}, E, N);
        w.D = row_vector(ck.load_float(mx + "D", {E})).transpose();
        w.out_proj = load_matrix(ck, mx + "out_proj.weight", {D, E}, D, E);
        w.reset_extras();
        allocating(ck.path().string(), detail::concat("layer ", i), [&] {
            m.layers_.emplace_back(w, D, E, N, R, K, cfg.norm_eps, typename Block::scan_policy{},
                                   make_rotation<typename Block::rotation_policy>(E)); // sizes from the config
        });
    }
    return m;
}

template <class Block>
BasicMambaModel<Block> BasicMambaModel<Block>::random(const MambaConfig& cfg, std::uint64_t seed) {
    Rng rng(seed);
    const auto D = static_cast<Eigen::Index>(cfg.d_model), E = static_cast<Eigen::Index>(cfg.d_inner),
               N = static_cast<Eigen::Index>(cfg.d_state), R = static_cast<Eigen::Index>(cfg.dt_rank),
               K = static_cast<Eigen::Index>(cfg.d_conv), V = static_cast<Eigen::Index>(cfg.padded_vocab);
    auto uni = [&](Eigen::Index r, Eigen::Index c, double scale) {
        MatrixXf m(r, c);
        for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<float>(rng.uniform(-scale, scale));
        return m;
    };
    BasicMambaModel m;
    m.config_ = cfg;
    m.embedding_ = uni(V, D, 0.5);
    m.tied_ = true;
    m.norm_f_ = Eigen::RowVectorXf::Ones(D);
    for (std::size_t i = 0; i < cfg.n_layer; ++i) {
        MambaLayerWeights w;
        w.norm = Eigen::VectorXf::Ones(D);
        w.in_proj = uni(2 * E, D, std::sqrt(3.0 / static_cast<double>(D)));
        w.conv_w = uni(E, K, 0.5);
        w.conv_b = uni(E, 1, 0.1);
        w.x_proj = uni(R + 2 * N, E, std::sqrt(3.0 / static_cast<double>(E)));
        w.dt_proj = uni(E, R, 1.0 / std::sqrt(static_cast<double>(R)));
        w.dt_bias.resize(E);
        for (Eigen::Index e = 0; e < E; ++e) {
            const double dt = std::exp(rng.uniform(std::log(1e-3), std::log(1e-1)));
            w.dt_bias[e] = static_cast<float>(dt + std::log(-std::expm1(-dt)));
        }
        w.A_log.resize(E, N);
        for (Eigen::Index e = 0; e < E; ++e)
            for (Eigen::Index n = 0; n < N; ++n) w.A_log(e, n) = std::log(static_cast<float>(n + 1));
        w.D = Eigen::VectorXf::Ones(E);
        w.out_proj = uni(D, E, std::sqrt(3.0 / static_cast<double>(E)));
        w.reset_extras();
        m.layers_.emplace_back(w, cfg.d_model, cfg.d_inner, cfg.d_state, cfg.dt_rank, cfg.d_conv, cfg.norm_eps,
                               typename Block::scan_policy{}, make_rotation<typename Block::rotation_policy>(cfg.d_inner));
    }
    return m;
}

template <class Block>
void BasicMambaModel<Block>::save(const std::filesystem::path& dir, ConfigLayout layout, const Metadata& metadata) const
    requires(Block::is_float)
{
    std::filesystem::create_directories(dir);
    std::vector<MambaLayerWeights> owned; // per layer, kept alive until the write
    owned.reserve(layers_.size());
    std::vector<TensorData> ts;
    const auto D = config_.d_model, E = config_.d_inner, N = config_.d_state, R = config_.dt_rank,
               K = config_.d_conv, V = config_.padded_vocab;
    auto add = [&](std::string name, const auto& m, std::vector<std::size_t> shape) {
        ts.push_back({std::move(name), DType::F32, std::move(shape),
                      std::as_bytes(std::span<const float>(m.data(), static_cast<std::size_t>(m.size())))});
    };
    add(layout == ConfigLayout::mamba_ssm ? "backbone.embedding.weight" : "backbone.embeddings.weight", embedding_, {V, D});
    if (!tied_) add("lm_head.weight", lm_head_, {V, D});
    add("backbone.norm_f.weight", norm_f_, {D});
    for (std::size_t i = 0; i < layers_.size(); ++i) {
        owned.push_back(layers_[i].weights());
        auto& w = owned.back();
        const std::string p = "backbone.layers." + std::to_string(i) + ".";
        add(p + "norm.weight", w.norm, {D});
        add(p + "mixer.in_proj.weight", w.in_proj, {2 * E, D});
        add(p + "mixer.conv1d.weight", w.conv_w, {E, 1, K});
        if (config_.conv_bias) add(p + "mixer.conv1d.bias", w.conv_b, {E});
        add(p + "mixer.x_proj.weight", w.x_proj, {R + 2 * N, E});
        add(p + "mixer.dt_proj.weight", w.dt_proj, {E, R});
        add(p + "mixer.dt_proj.bias", w.dt_bias, {E});
        add(p + "mixer.A_log", w.A_log, {E, N});
        add(p + "mixer.D", w.D, {E});
        add(p + "mixer.out_proj.weight", w.out_proj, {D, E});
    }
    MambaConfig c = config_;
    c.tie_embeddings = tied_;
    write_file_atomically(dir / "config.json", mamba_config_json(c, layout) + '\n');
    save_safetensors(dir / kSafetensorsSingleName, ts, metadata);
}

template <class Block>
MatrixXf BasicMambaModel<Block>::prefill(std::span<const std::uint32_t> tokens, State& state, Logits which,
                                        std::vector<MatrixXf>* hidden, ActivationTap* tap) const {
    require(!tokens.empty(), "MambaModel::prefill: no tokens");
    require(state.caches.size() == layers_.size(), "MambaModel::prefill: state made for ", state.caches.size(),
            " layers, model has ", layers_.size());
    require(state.chunk_tokens > 0 && state.chunk_tokens % 4 == 0, "MambaModel::prefill: chunk_tokens must be a positive multiple of 4, got ",
            state.chunk_tokens);
    // Every token checked before the state advances, so a bad one leaves the state as it was.
    for (std::size_t t = 0; t < tokens.size(); ++t)
        require(tokens[t] < static_cast<std::uint32_t>(embedding_.rows()), "MambaModel: token ", tokens[t],
                " at position ", t, " is outside the vocabulary of ", embedding_.rows());
    const auto L = static_cast<Eigen::Index>(tokens.size()), D = embedding_.cols();
    MatrixXf logits;
    if (which == Logits::all) logits.resize(L, lm_head().rows());
    if (hidden) hidden->assign(layers_.size(), MatrixXf(L, D));
    for (Eigen::Index begin = 0; begin < L;) {
        const Eigen::Index n = detail::prefill_chunk_rows(L, begin, state.chunk_tokens);
        state.h.resize(n, D);
        for (Eigen::Index t = 0; t < n; ++t) state.h.row(t) = embedding_.row(tokens[static_cast<std::size_t>(begin + t)]);
        for (std::size_t i = 0; i < layers_.size(); ++i) {
            layers_[i].forward(state.h, state.caches[i], state.workspace, tap, i);
            if (hidden) (*hidden)[i].middleRows(begin, n) = state.h;
        }
        begin += n;
        if (which == Logits::none || (which == Logits::last && begin < L)) continue;
        // rows of this chunk that need logits: all, or the last
        detail::final_norm_rows(state.h, which == Logits::all ? 0 : n - 1, norm_f_, config_.norm_eps, state.normed, tap,
                                layers_.size());
        if (which == Logits::all) logits.middleRows(begin - n, n).noalias() = state.normed * lm_head().transpose();
        else logits.noalias() = state.normed * lm_head().transpose();
    }
    state.position += tokens.size();
    return logits;
}

// Compiled once in the companion library (src/float_model.cpp): the float model and the
// W8A8 per-channel / per-token one.
MQ_EXTERN_TEMPLATE(class BasicMambaModel<MambaBlock<>>)
MQ_EXTERN_TEMPLATE(class BasicMambaModel<MambaBlock<W8PerChannel, A8PerToken>>)

using MambaModel = BasicMambaModel<MambaBlock<>>;

MQ_NAMESPACE_END
