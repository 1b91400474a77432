// QuantizedMambaModel: a Mamba model whose every site is quantized (or float) as a QuantizationConfig says; integer path or fake-quant twin; save and load.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/io/checkpoint.hpp>
#include <mambaquant/io/config.hpp>
#include <mambaquant/io/quantized_checkpoint.hpp>
#include <mambaquant/io/safetensors.hpp>
#include <mambaquant/nn/activation_tap.hpp>
#include <mambaquant/nn/mamba_block.hpp>
#include <mambaquant/nn/mamba_model.hpp>
#include <mambaquant/nn/quantization_config.hpp>
#include <mambaquant/nn/rms_norm.hpp>
#include <mambaquant/nn/site_linear.hpp>
#include <mambaquant/ssm/scan_policy.hpp>
#include <mambaquant/transform/mamba_weights.hpp>
#include <mambaquant/transform/rotation.hpp>

#include <Eigen/Core>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <span>
#include <string>
#include <variant>
#include <vector>

MQ_NAMESPACE_BEGIN

// The scan a run-time layer runs: plain, smoothed (S4) or quantized state·C (A8 per token,
// symmetric or not, with optional S4 scales and R4 rotation) — the scan policies themselves.
struct RuntimeScan {
    static constexpr const char* name = "runtime";
    static constexpr bool is_quantized = false; // per instance: quantized()
    std::variant<PlainScan, SmoothedScan, QuantizedScan<site_quantizers::ATok>, QuantizedScan<site_quantizers::ATokA>> v;

    bool quantized() const noexcept { return v.index() >= 2; }
    std::span<const float> scale() const noexcept {
        return std::visit([](const auto& s) -> std::span<const float> {
            if constexpr (requires { s.scale(); }) return s.scale();
            else return {};
        }, v);
    }
    void check(std::size_t e, std::size_t n) const {
        std::visit([&](const auto& s) { s.check(e, n); }, v);
    }
    template <class Arch, class State>
    void run(Arch arch, const SelectiveScanArgs<State>& a, ScanCache<State>& cache) const {
        std::visit([&](const auto& s) { s.run(arch, a, cache); }, v);
    }
};
static_assert(ScanPolicy<RuntimeScan>);

// One run-time layer: the generic block on AnyLinear sites and the run-time scan.
using RuntimeMambaBlock = BasicMambaBlock<AnyLinear, AnyLinear, RuntimeScan>;

struct QuantizedSequenceState : MambaSequenceState<RuntimeMambaBlock> {
    MatrixXf logits;
};

// Whether build_quantized_model makes the integer model or its fake-quant twin.
enum class FakeQuant : bool { no = false, yes = true };

class QuantizedMambaModel {
public:
    using State = QuantizedSequenceState;

    const MambaConfig& config() const noexcept { return config_; }
    const QuantizationConfig& quantization() const noexcept { return qconfig_; }
    bool fake_quant() const noexcept { return fake_; }
    const std::vector<RuntimeMambaBlock>& layers() const noexcept { return layers_; }
    const AnyLinear& lm_head() const noexcept { return head_; }
    std::size_t vocab_rows() const noexcept { return config_.padded_vocab; }

    State make_state() const {
        State s;
        for (const auto& b : layers_) s.caches.push_back(b.make_cache());
        return s;
    }

    // Bytes of everything the model holds for inference (weights, params, norms, scan constants).
    std::size_t bytes() const {
        std::size_t b = head_.bytes() + static_cast<std::size_t>(norm_f_.size()) * sizeof(float);
        b += std::visit([](const auto& e) -> std::size_t {
            using T = std::decay_t<decltype(e)>;
            if constexpr (std::is_same_v<T, std::monostate>) return 0;
            else if constexpr (std::is_same_v<T, MatrixXf>) return static_cast<std::size_t>(e.size()) * sizeof(float);
            else return e.bytes();
        }, embedding_);
        for (const auto& l : layers_) {
            b += l.in_proj().bytes() + l.x_proj().bytes() + l.dt_proj().bytes() + l.out_proj().bytes();
            b += static_cast<std::size_t>(l.norm().size() + l.conv().weight_t.size()) * sizeof(float) + l.conv().bias.size() * sizeof(float);
            const auto& s = l.scan_weights();
            b += (static_cast<std::size_t>(s.A.size()) + s.D.size() + s.dt_bias.size() + s.gate_scale.size()) * sizeof(float);
        }
        return b;
    }

    // Runs tokens from `state`, advancing it; logits as BasicMambaModel::prefill. `tap` sees every
    // site's input (nn/activation_tap.hpp).
    MatrixXf prefill(std::span<const std::uint32_t> tokens, State& state, Logits which = Logits::all,
                     ActivationTap* tap = nullptr) const {
        run(tokens, state, which, tap);
        return which == Logits::none ? MatrixXf() : state.logits;
    }

    // One decode step into `logits` [padded vocab]; allocates nothing once the state is warm.
    void decode(std::uint32_t token, State& state, std::span<float> logits) const {
        require(logits.size() == config_.padded_vocab, "QuantizedMambaModel::decode: logits span of ", logits.size(),
                ", vocabulary is ", config_.padded_vocab);
        const std::uint32_t one[1] = {token};
        run(one, state, Logits::all, nullptr);
        std::copy(state.logits.data(), state.logits.data() + logits.size(), logits.data());
    }

    std::vector<std::uint32_t> generate_greedy(std::span<const std::uint32_t> prompt, std::size_t count) const {
        State s = make_state();
        std::vector<std::uint32_t> out;
        if (count == 0) return out;
        MatrixXf logits = prefill(prompt, s, Logits::last);
        std::vector<float> row(config_.padded_vocab);
        Eigen::Map<Eigen::RowVectorXf>(row.data(), logits.cols()) = logits.row(0);
        for (;;) {
            std::uint32_t best = 0;
            for (std::uint32_t v = 1; v < config_.vocab_size; ++v)
                if (row[v] > row[best]) best = v;
            out.push_back(best);
            if (out.size() == count) return out;
            decode(best, s, row);
        }
    }

    void set_thread_pool(ThreadPool* pool) {
        head_.set_thread_pool(pool);
        for (auto& l : layers_) l.set_thread_pool(pool);
    }

    // ---- building ----
    friend QuantizedMambaModel build_quantized_model(const MambaWeights&, const MambaConfig&, const QuantizationConfig&,
                                                     FakeQuant);
    // ---- files ----
    void save(const std::filesystem::path& dir) const;
    static QuantizedMambaModel load(const std::filesystem::path& dir, FakeQuant fake = FakeQuant::no);

private:
    using Embedding = std::variant<std::monostate, MatrixXf, PackedW8, PackedW4>; // monostate: rows of the head

    void embed(std::span<const std::uint32_t> tokens, MatrixXf& h) const {
        const auto D = static_cast<Eigen::Index>(config_.d_model);
        h.resize(static_cast<Eigen::Index>(tokens.size()), D);
        for (std::size_t t = 0; t < tokens.size(); ++t) {
            require(tokens[t] < config_.padded_vocab, "QuantizedMambaModel: token ", tokens[t], " at position ", t,
                    " is outside the vocabulary of ", config_.padded_vocab);
            float* row = h.data() + static_cast<Eigen::Index>(t) * D;
            std::visit([&](const auto& e) {
                using T = std::decay_t<decltype(e)>;
                if constexpr (std::is_same_v<T, std::monostate>)
                    head_.visit_packed([&](const auto* p) { detail::dequantize_packed_row(*p, tokens[t], row); });
                else if constexpr (std::is_same_v<T, MatrixXf>)
                    Eigen::Map<Eigen::RowVectorXf>(row, D) = e.row(tokens[t]);
                else detail::dequantize_packed_row(e, tokens[t], row);
            }, embedding_);
        }
    }

    void run(std::span<const std::uint32_t> tokens, State& state, Logits which, ActivationTap* tap) const {
        require(!tokens.empty(), "QuantizedMambaModel::prefill: no tokens");
        require(state.caches.size() == layers_.size(), "QuantizedMambaModel::prefill: state made for ",
                state.caches.size(), " layers, model has ", layers_.size());
        embed(tokens, state.h);
        for (std::size_t i = 0; i < layers_.size(); ++i) layers_[i].forward(state.h, state.caches[i], state.workspace, tap, i);
        state.position += tokens.size();
        if (which == Logits::none) return;
        const auto L = state.h.rows();
        const Eigen::Index first = which == Logits::all ? 0 : L - 1;
        state.normed.resize(L - first, state.h.cols());
        rms_norm(ConstMatrixView<float>(state.h.data() + first * state.h.cols(), static_cast<std::size_t>(L - first),
                                        static_cast<std::size_t>(state.h.cols())),
                 norm_f_, config_.norm_eps, view(state.normed));
        detail::tap(tap, layers_.size(), TapPoint::lm_head_input, view(std::as_const(state.normed)));
        state.logits.resize(L - first, static_cast<Eigen::Index>(config_.padded_vocab));
        head_.forward(view(std::as_const(state.normed)), view(state.logits), state.workspace.out_lin);
    }

    MambaConfig config_;
    QuantizationConfig qconfig_;
    bool fake_ = false;
    Embedding embedding_;
    bool tied_ = true; // written to config.json's tie_embeddings
    Eigen::RowVectorXf norm_f_;
    AnyLinear head_;
    std::vector<RuntimeMambaBlock> layers_;
    // What save() needs beyond the run-time parts: conv int8 codes and their scales, R4.
    struct ConvCodes {
        std::vector<std::uint8_t> codes; // int8 bytes [E, K]
        std::vector<float> scale;        // [E]
    };
    std::vector<ConvCodes> conv_codes_;
};

namespace detail {
// int8 per-channel symmetric conv weights (METHOD.md §2): q = round(w/s), s = max|w_e|/127; the
// conv runs on ŵ = q·s (float arithmetic on the dequantized taps: the conv is K MACs per element,
// not worth an integer kernel). Returns the codes and scales, and writes ŵ into w.
inline void quantize_conv_int8(MatrixXf& w, std::vector<std::uint8_t>& codes, std::vector<float>& scale) {
    const auto E = w.rows(), K = w.cols();
    codes.assign(static_cast<std::size_t>(E * K), 0);
    scale.assign(static_cast<std::size_t>(E), 1.0f);
    for (Eigen::Index e = 0; e < E; ++e) {
        float lo = 0.0f, hi = 0.0f;
        for (Eigen::Index k = 0; k < K; ++k) {
            lo = std::min(lo, w(e, k));
            hi = std::max(hi, w(e, k));
        }
        const QuantParams p = W8PerChannel::params(lo, hi);
        scale[static_cast<std::size_t>(e)] = p.scale;
        for (Eigen::Index k = 0; k < K; ++k) {
            const int q = quantize_value<Int8SymmetricRange>(w(e, k), p);
            codes[static_cast<std::size_t>(e * K + k)] = static_cast<std::uint8_t>(static_cast<std::int8_t>(q));
            w(e, k) = static_cast<float>(q) * p.scale;
        }
    }
}
inline void dequantize_conv_int8(const std::vector<std::uint8_t>& codes, const std::vector<float>& scale, MatrixXf& w) {
    for (Eigen::Index e = 0; e < w.rows(); ++e)
        for (Eigen::Index k = 0; k < w.cols(); ++k)
            w(e, k) = static_cast<float>(static_cast<std::int8_t>(codes[static_cast<std::size_t>(e * w.cols() + k)])) *
                      scale[static_cast<std::size_t>(e)];
}
// Static params as the kernels use them: inv_scale = 1/scale exactly as params_from_range sets it,
// so a saved and reloaded model quantizes bit for bit the same.
inline std::optional<QuantParams> normalized(std::optional<QuantParams> p) {
    if (p) p->inv_scale = 1.0f / p->scale;
    return p;
}
inline bool neutral(const Eigen::VectorXf& v, float value) { return v.size() == 0 || (v.array() == value).all(); }

// The scan of a layer from its extras and the config; refuses what the config cannot run.
inline RuntimeScan make_runtime_scan(const MambaLayerWeights& w, const QuantizationConfig& qc, std::size_t layer) {
    const bool smoothed = !neutral(w.state_scale, 1.0f);
    const std::span<const float> s = smoothed ? span_of(w.state_scale) : std::span<const float>{};
    const bool rotated = w.state_rotation.size() != 0;
    require(rotated == qc.state_rotation.has_value(), "build_quantized_model: layer ", layer, ": state_rotation is ",
            rotated ? "set in the weights" : "absent from the weights", " but the config ",
            qc.state_rotation ? "names one" : "names none");
    MatrixXf H;
    if (rotated) {
        const auto N = static_cast<std::size_t>(w.state_rotation.rows());
        require(qc.state_rotation->n == N, "build_quantized_model: layer ", layer, ": state_rotation size ",
                qc.state_rotation->n, " does not match the state size ", N);
        H = rotation_matrix<double>(*qc.state_rotation).cast<float>();
        const float diff = (H - w.state_rotation).cwiseAbs().maxCoeff();
        require(diff <= 1e-6f, "build_quantized_model: layer ", layer, ": state_rotation differs from the config's ",
                rotation_kind_name(qc.state_rotation->kind), " (max |difference| ", diff, ")");
    }
    const ActQuant& a = qc[Site::scan_output].act;
    RuntimeScan r;
    if (a.quantized()) {
        const ConstMatrixView<float> hv = rotated ? view(std::as_const(H)) : ConstMatrixView<float>{};
        if (a.symmetric) r.v = QuantizedScan<site_quantizers::ATok>(hv, s);
        else r.v = QuantizedScan<site_quantizers::ATokA>(hv, s);
    } else if (smoothed) {
        r.v = SmoothedScan(s);
    }
    return r;
}
} // namespace detail

// The float weights of a loaded (float) model, as the transforms and build_quantized_model take them.
template <class Block>
MambaWeights mamba_weights(const BasicMambaModel<Block>& m)
    requires(Block::is_float)
{
    MambaWeights w;
    w.embedding = m.embedding();
    w.tied = m.tied();
    if (!m.tied()) w.lm_head = m.lm_head();
    w.norm_f = m.norm_f().transpose();
    for (const auto& l : m.layers()) w.layers.push_back(l.weights());
    return w;
}

// The quantized model (FakeQuant::no: integer kernels) or its fake-quant twin (FakeQuant::yes)
// from transformed float weights (MambaWeights with the run-time extras the transforms set) and a
// quantization config with its static params. Every extra is applied or refused:
//   out_rotation ⇔ config.out_rotation (checked to be that matrix; W_out already holds it),
//   state_rotation ⇔ config.state_rotation (checked; needs a quantized scan_output),
//   state_scale → the smoothed / quantized scan carries it, gate_scale → S-SiLU, dt_shift → x_proj bias.
// A float config gives the float model through the same classes (bit-identical to MambaModel).
inline QuantizedMambaModel build_quantized_model(const MambaWeights& w, const MambaConfig& cfg,
                                                 const QuantizationConfig& qc, FakeQuant fake = FakeQuant::no) {
    validate(w);
    qc.validate(w.layers.size());
    require(w.layers.size() == cfg.n_layer, "build_quantized_model: ", w.layers.size(), " layers, the config says ",
            cfg.n_layer);
    require(static_cast<std::size_t>(w.embedding.rows()) == cfg.padded_vocab &&
                static_cast<std::size_t>(w.embedding.cols()) == cfg.d_model,
            "build_quantized_model: embedding is [", w.embedding.rows(), " x ", w.embedding.cols(), "], the config says [",
            cfg.padded_vocab, " x ", cfg.d_model, "]");
    const bool is_fake = fake == FakeQuant::yes;
    QuantizedMambaModel m;
    m.config_ = cfg;
    m.qconfig_ = qc;
    m.fake_ = is_fake;
    m.tied_ = w.tied;
    m.norm_f_ = w.norm_f.transpose();
    const std::size_t D = cfg.d_model, E = cfg.d_inner, N = cfg.d_state, R = cfg.dt_rank, K = cfg.d_conv;
    m.head_ = AnyLinear::build(view(w.head()), {}, qc[Site::lm_head], std::nullopt, detail::normalized(qc.head_act), is_fake);
    // Embedding rows: the head's own packed rows when tied and quantized alike (one copy in memory).
    const SiteQuant& eq = qc[Site::embedding];
    const SiteQuant& hq = qc[Site::lm_head];
    // Tied and quantized alike: the embedding rows are the head's packed rows (one copy in memory).
    const auto same_spec = [](const QuantSpec& x, const QuantSpec& y) {
        return x.bits == y.bits && x.symmetric == y.symmetric && x.granularity == y.granularity &&
               (x.granularity != GranularityKind::per_group || x.group == y.group);
    };
    const bool share = w.tied && eq.weight && hq.weight && same_spec(*eq.weight, *hq.weight);
    if (share) {
        if (is_fake) m.embedding_ = std::get<FakeQuantLinear>(m.head_.variant()).weights(); // the same ŵ rows
        else m.embedding_ = std::monostate{};
    } else if (eq.weight) {
        detail::visit_site_weight(*eq.weight, [&]<class W>(std::type_identity<W>) {
            auto packed = pack_weights<W>(view(w.embedding));
            if (is_fake) m.embedding_ = detail::dequantize_packed(packed);
            else m.embedding_ = std::move(packed);
        });
    } else {
        m.embedding_ = w.embedding;
    }
    m.layers_.reserve(w.layers.size());
    m.conv_codes_.resize(w.layers.size());
    for (std::size_t i = 0; i < w.layers.size(); ++i) {
        const MambaLayerWeights& lw = w.layers[i];
        require(lw.d_inner() == E && lw.d_state() == N && lw.dt_rank() == R && lw.d_conv() == K,
                "build_quantized_model: layer ", i, " shape differs from the config");
        const bool has_out_rot = lw.out_rotation.size() != 0;
        require(has_out_rot == qc.out_rotation.has_value(), "build_quantized_model: layer ", i, ": out_rotation is ",
                has_out_rot ? "set in the weights" : "absent from the weights", " but the config ",
                qc.out_rotation ? "names one" : "names none");
        if (has_out_rot) {
            require(qc.out_rotation->n == E, "build_quantized_model: out_rotation size ", qc.out_rotation->n,
                    " does not match d_inner ", E);
            detail::require_same_rotation(lw.out_rotation, HadamardOnline::from_spec(*qc.out_rotation),
                                          "build_quantized_model");
        }
        const LayerActParams lp = qc.layers.empty() ? LayerActParams{} : qc.layers[i];
        const aligned_vector<float> xb = detail::dt_shift_bias(lw);
        auto site = [&](Site s, const MatrixXf& weight, std::span<const float> bias = {},
                        const std::optional<RotationSpec>& rot = std::nullopt) {
            return AnyLinear::build(view(weight), bias, qc[s], rot, detail::normalized(lp[s]), is_fake);
        };
        MatrixXf conv_w = lw.conv_w;
        if (qc[Site::conv1d].weight) detail::quantize_conv_int8(conv_w, m.conv_codes_[i].codes, m.conv_codes_[i].scale);
        ScanWeights sw = ScanWeights::from_A_log(view(lw.A_log), detail::span_of(lw.D), detail::span_of(lw.dt_bias));
        if (!detail::neutral(lw.gate_scale, 1.0f)) sw.set_gate_scale(detail::span_of(lw.gate_scale));
        RuntimeMambaBlock::Parts parts{lw.norm.transpose(),
                                       site(Site::in_proj, lw.in_proj),
                                       site(Site::x_proj, lw.x_proj, std::span<const float>(xb.data(), xb.size())),
                                       site(Site::dt_proj, lw.dt_proj),
                                       site(Site::out_proj, lw.out_proj, {}, qc.out_rotation),
                                       ConvWeights::from(view(conv_w), detail::span_of(lw.conv_b)),
                                       std::move(sw),
                                       detail::make_runtime_scan(lw, qc, i)};
        m.layers_.emplace_back(D, E, N, R, K, cfg.norm_eps, std::move(parts));
    }
    return m;
}

MQ_NAMESPACE_END
