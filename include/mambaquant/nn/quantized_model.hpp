// QuantizedMambaModel: a Mamba model whose every site is quantized (or float) as a QuantizationConfig says; integer path or fake-quant twin; save and load.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/io/atomic_file.hpp>
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
#include <cstring>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <variant>
#include <vector>

MQ_NAMESPACE_BEGIN

// The scan a run-time layer runs: plain, smoothed (S4) or quantized state·C (A8 per token,
// symmetric or not, with optional S4 scales and R4 rotation) — the scan policies themselves.
// This header's run-time types are class templates used through aliases (RuntimeScan =
// BasicRuntimeScan<>, QuantizedMambaModel = BasicQuantizedMambaModel<>, …) whose members depend on
// the parameter: a translation unit that includes the header but builds no quantized model does
// not build their variants, layers and workspaces (core/config.hpp, dependent_t).
template <class Defer = void>
struct BasicRuntimeScan {
    static constexpr const char* name = "runtime";
    static constexpr bool is_quantized = false; // per instance: quantized()
    dependent_t<Defer, std::variant<PlainScan, SmoothedScan, QuantizedScan<site_quantizers::ATok>,
                                    QuantizedScan<site_quantizers::ATokA>>> v;

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
using RuntimeScan = BasicRuntimeScan<>;

// One run-time layer: the generic block on AnyLinear sites and the run-time scan.
using RuntimeMambaBlock = BasicMambaBlock<AnyLinear, AnyLinear, RuntimeScan>;

template <class Defer = void>
struct BasicQuantizedSequenceState : MambaSequenceState<dependent_t<Defer, RuntimeMambaBlock>> {
    MatrixXf logits;
};
using QuantizedSequenceState = BasicQuantizedSequenceState<>;

// Whether build_quantized_model makes the integer model or its fake-quant twin.
enum class FakeQuant : bool { no = false, yes = true };

template <class Defer = void>
class BasicQuantizedMambaModel;
using QuantizedMambaModel = BasicQuantizedMambaModel<>;
template <class Defer = void>
BasicQuantizedMambaModel<Defer> build_quantized_model(const MambaWeights& w, const MambaConfig& cfg,
                                                      const QuantizationConfig& qc, FakeQuant fake = FakeQuant::no);

template <class Defer>
class BasicQuantizedMambaModel {
public:
    using State = BasicQuantizedSequenceState<Defer>;
    using Block = dependent_t<Defer, RuntimeMambaBlock>;
    using SiteLinear = dependent_t<Defer, AnyLinear>;

    const MambaConfig& config() const noexcept { return config_; }
    const QuantizationConfig& quantization() const noexcept { return qconfig_; }
    bool fake_quant() const noexcept { return fake_; }
    const std::vector<Block>& layers() const noexcept { return layers_; }
    const SiteLinear& lm_head() const noexcept { return head_; }
    std::size_t vocab_rows() const noexcept { return config_.padded_vocab; }

    // The members that reach the layers' kernels are templates never spelled by callers: a
    // non-template member would instantiate every layer type's forward pass in each translation
    // unit that includes this header (core/config.hpp).

    template <class = void>
    State make_state() const {
        State s;
        for (const auto& b : layers_) s.caches.push_back(b.make_cache());
        return s;
    }

    // Bytes of everything the model holds for inference (weights, params, norms, scan constants).
    template <class = void>
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
    template <class Tag = void>
    MatrixXf prefill(std::span<const std::uint32_t> tokens, dependent_t<Tag, State>& state, Logits which = Logits::all,
                     ActivationTap* tap = nullptr) const {
        run(tokens, state, which, tap);
        return which == Logits::none ? MatrixXf() : state.logits;
    }

    // One decode step into `logits` [padded vocab]; allocates nothing once the state is warm.
    template <class Tag = void>
    void decode(std::uint32_t token, dependent_t<Tag, State>& state, std::span<float> logits) const {
        require(logits.size() == config_.padded_vocab, "QuantizedMambaModel::decode: logits span of ", logits.size(),
                ", vocabulary is ", config_.padded_vocab);
        const std::uint32_t one[1] = {token};
        run(one, state, Logits::all, nullptr);
        std::copy(state.logits.data(), state.logits.data() + logits.size(), logits.data());
    }

    template <class = void>
    std::vector<std::uint32_t> generate_greedy(std::span<const std::uint32_t> prompt, std::size_t count) const {
        return detail::greedy_continuation(*this, prompt, count, config_.padded_vocab);
    }
    template <class = void>
    void set_thread_pool(ThreadPool* pool) {
        head_.set_thread_pool(pool);
        for (auto& l : layers_) l.set_thread_pool(pool);
    }

    // ---- building ----
    // (build_quantized_model, save, load and run are templates never spelled by callers, defined
    // below the class: instantiated only where called, and with MQ_COMPILED compiled once in the
    // companion library, src/quantized_model*.cpp — core/config.hpp.)
    template <class D>
    friend BasicQuantizedMambaModel<D> build_quantized_model(const MambaWeights&, const MambaConfig&,
                                                             const QuantizationConfig&, FakeQuant);
    // ---- files ----
    template <class = void>
    void save(const std::filesystem::path& dir) const;
    template <class = void>
    static BasicQuantizedMambaModel load(const std::filesystem::path& dir, FakeQuant fake = FakeQuant::no);

private:
    // monostate: rows of the head
    using Embedding = dependent_t<Defer, std::variant<std::monostate, MatrixXf, PackedW8, PackedW4>>;

    template <class Tag = void>
    void embed(std::span<const std::uint32_t> tokens, dependent_t<Tag, MatrixXf>& h) const {
        const auto D = static_cast<Eigen::Index>(config_.d_model);
        h.resize(static_cast<Eigen::Index>(tokens.size()), D);
        for (std::size_t t = 0; t < tokens.size(); ++t) {
            MQ_ASSERT(tokens[t] < config_.padded_vocab, "QuantizedMambaModel: token checked by run()");
            float* row = h.data() + static_cast<Eigen::Index>(t) * D;
            std::visit([&](const auto& e) {
                using T = std::decay_t<decltype(e)>;
                if constexpr (std::is_same_v<T, std::monostate>) {
                    if (head_.is_packed())
                        head_.visit_packed([&](const auto* p) { detail::dequantize_packed_row(*p, tokens[t], row); });
                    else // a tied float table: the head's own float rows
                        Eigen::Map<Eigen::RowVectorXf>(row, D) =
                            std::get<FloatLinear<NoRotation>>(head_.variant()).weights().row(tokens[t]);
                }
                else if constexpr (std::is_same_v<T, MatrixXf>)
                    Eigen::Map<Eigen::RowVectorXf>(row, D) = e.row(tokens[t]);
                else detail::dequantize_packed_row(e, tokens[t], row);
            }, embedding_);
        }
    }

    // In chunks of state.chunk_tokens (as MambaModel::prefill: a multiple of 4, never a 1-row
    // tail), so the workspaces stay [chunk, ·] however long the prompt. Bit-identical to one pass
    // when every quantized activation is per token or static: each token's codes and integer sums
    // do not depend on the other rows of its call, the conv window and the scan state carry over,
    // and float sites keep Eigen's column blocks (tests/nn). A per-tensor *dynamic* quantizer
    // would depend on the chunking; the run-time set has none.
    template <class = void>
    void run(std::span<const std::uint32_t> tokens, State& state, Logits which, ActivationTap* tap) const;

    MambaConfig config_;
    QuantizationConfig qconfig_;
    bool fake_ = false;
    Embedding embedding_;
    bool tied_ = true; // written to config.json's tie_embeddings
    Eigen::RowVectorXf norm_f_;
    SiteLinear head_;
    std::vector<Block> layers_;
    // What save() needs beyond the run-time parts: conv int8 codes and their scales, R4.
    struct ConvCodes {
        std::vector<std::uint8_t> codes; // int8 bytes [E, K]
        std::vector<float> scale;        // [E]
    };
    std::vector<ConvCodes> conv_codes_;
};

template <class Defer>
template <class>
void BasicQuantizedMambaModel<Defer>::run(std::span<const std::uint32_t> tokens, State& state, Logits which,
                                          ActivationTap* tap) const {
    require(!tokens.empty(), "QuantizedMambaModel::prefill: no tokens");
    require(state.caches.size() == layers_.size(), "QuantizedMambaModel::prefill: state made for ",
            state.caches.size(), " layers, model has ", layers_.size());
    require(state.chunk_tokens > 0 && state.chunk_tokens % 4 == 0,
            "QuantizedMambaModel::prefill: chunk_tokens must be a positive multiple of 4, got ", state.chunk_tokens);
    // Every token checked before the state advances, so a bad one leaves the state as it was.
    for (std::size_t t = 0; t < tokens.size(); ++t)
        require(tokens[t] < config_.padded_vocab, "QuantizedMambaModel: token ", tokens[t], " at position ", t,
                " is outside the vocabulary of ", config_.padded_vocab);
    const auto L = static_cast<Eigen::Index>(tokens.size());
    const auto V = static_cast<Eigen::Index>(config_.padded_vocab);
    if (which == Logits::all) state.logits.resize(L, V);
    for (Eigen::Index begin = 0; begin < L;) {
        const Eigen::Index n = detail::prefill_chunk_rows(L, begin, state.chunk_tokens);
        embed(tokens.subspan(static_cast<std::size_t>(begin), static_cast<std::size_t>(n)), state.h);
        for (std::size_t i = 0; i < layers_.size(); ++i) layers_[i].forward(state.h, state.caches[i], state.workspace, tap, i);
        begin += n;
        if (which == Logits::none || (which == Logits::last && begin < L)) continue;
        const Eigen::Index first = which == Logits::all ? 0 : n - 1; // rows of this chunk that need logits
        detail::final_norm_rows(state.h, first, norm_f_, config_.norm_eps, state.normed, tap, layers_.size());
        if (which == Logits::last) state.logits.resize(1, V);
        const Eigen::Index row0 = which == Logits::all ? begin - n : 0;
        head_.forward(view(std::as_const(state.normed)),
                      MatrixView<float>(state.logits.data() + row0 * V, static_cast<std::size_t>(n - first),
                                        static_cast<std::size_t>(V)),
                      state.workspace.out_lin);
    }
    state.position += tokens.size();
}
MQ_EXTERN_TEMPLATE(void QuantizedMambaModel::run<>(std::span<const std::uint32_t>, State&, Logits, ActivationTap*) const)

namespace detail {
// A tied table quantized as the head is stored (and held) once: the head's packed rows.
template <class Tag = void>
bool embedding_shares_head(bool tied, const dependent_t<Tag, QuantizationConfig>& qc) {
    const SiteQuant& eq = qc[Site::embedding];
    const SiteQuant& hq = qc[Site::lm_head];
    if (!tied || !eq.weight || !hq.weight) return false;
    const QuantSpec &x = *eq.weight, &y = *hq.weight;
    return x.bits == y.bits && x.symmetric == y.symmetric && x.granularity == y.granularity &&
           (x.granularity != GranularityKind::per_group || x.group == y.group);
}
// int8 per-channel symmetric conv weights (METHOD.md §2): q = round(w/s), s = max|w_e|/127. With a
// float conv input the conv runs on ŵ = q·s (float arithmetic on the dequantized taps); with a
// static per-tensor input it runs on the codes (conv_weights below). Returns the codes and
// scales, and writes ŵ into w.
template <class Tag = void>
void quantize_conv_int8(dependent_t<Tag, MatrixXf>& w, dependent_t<Tag, std::vector<std::uint8_t>>& codes,
                        dependent_t<Tag, std::vector<float>>& scale) {
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
template <class Tag = void>
void dequantize_conv_int8(const dependent_t<Tag, std::vector<std::uint8_t>>& codes,
                          const dependent_t<Tag, std::vector<float>>& scale, dependent_t<Tag, MatrixXf>& w) {
    for (Eigen::Index e = 0; e < w.rows(); ++e)
        for (Eigen::Index k = 0; k < w.cols(); ++k)
            w(e, k) = static_cast<float>(static_cast<std::int8_t>(codes[static_cast<std::size_t>(e * w.cols() + k)])) *
                      scale[static_cast<std::size_t>(e)];
}
// A layer's conv as the config says: float taps (ŵ when the weights are int8), or the integer conv
// on the codes when its input is quantized (static per tensor; the fake-quant twin runs it too:
// its integer sums are exact in float, so the twin's conv is x̂·ŵ summed exactly, scaled once).
template <class Tag = void>
ConvWeights conv_weights(const dependent_t<Tag, MatrixXf>& w_hat,
                         const dependent_t<Tag, std::vector<std::uint8_t>>& codes,
                         const dependent_t<Tag, std::vector<float>>& scale,
                         std::span<const float> bias, const dependent_t<Tag, SiteQuant>& q, const dependent_t<Tag, std::optional<QuantParams>>& input) {
    if (q.act.mode != ActMode::static_per_tensor) return ConvWeights::from(view(w_hat), bias);
    require(input.has_value(), "build_quantized_model: conv1d: static activation params missing");
    const ConstMatrixView<std::int8_t> c(reinterpret_cast<const std::int8_t*>(codes.data()), static_cast<std::size_t>(w_hat.rows()),
                                         static_cast<std::size_t>(w_hat.cols()));
    return ConvWeights::quantized(c, scale, bias, *input, q.act.symmetric);
}
// Static params as the kernels use them: inv_scale = 1/scale exactly as params_from_range sets it,
// so a saved and reloaded model quantizes bit for bit the same.
template <class = void>
std::optional<QuantParams> normalized(std::optional<QuantParams> p) {
    if (p) p->inv_scale = 1.0f / p->scale;
    return p;
}
template <class Tag = void>
bool neutral(const dependent_t<Tag, Eigen::VectorXf>& v,
             float value) { return v.size() == 0 || (v.array() == value).all(); }

// A site's linear layer: AnyLinear::build (weights quantized by min/max), or, where the config
// fixes the weight grid (GPTQ's params), the weight quantized on that grid — GPTQ's own codes and
// scales (kernels/packed_weights.hpp's pack_weights with params says why they come back exactly).
template <class Tag = void>
dependent_t<Tag, AnyLinear> build_site_linear(ConstMatrixView<float> weight, std::span<const float> bias,
                                              const dependent_t<Tag, SiteQuant>& q,
                                              const dependent_t<Tag, std::optional<RotationSpec>>& rotation,
                                              std::optional<QuantParams> act, std::span<const QuantParams> grid,
                                              bool fake) {
    using SiteLinear = dependent_t<Tag, AnyLinear>;
    if (grid.empty()) return SiteLinear::build(weight, bias, q, rotation, act, fake);
    require(q.weight.has_value(), "build_quantized_model: a fixed weight grid needs quantized weights");
    std::optional<HadamardOnline> rot;
    if (rotation) {
        require(rotation->n == weight.cols, "build_quantized_model: online rotation of size ", rotation->n,
                " does not match the layer's in_features ", weight.cols);
        rot = HadamardOnline::from_spec(*rotation);
    }
    return visit_site_weight(*q.weight, [&]<class W>(std::type_identity<W>) {
        return SiteLinear::from_packed(pack_weights<W>(weight, grid, w8_layout_for(runnable_arch(active_arch()))), bias,
                                       q, std::move(rot), act, fake);
    });
}

// A layer's recorded out_rotation (R2; W_out already holds it) ⇔ the config's, and the same matrix.
template <class = void>
// instantiated only where called (core/config.hpp)
void require_config_out_rotation(const MambaLayerWeights& w, const QuantizationConfig& qc, std::size_t layer,
                                 const char* who) {
    const bool has_out_rot = w.out_rotation.size() != 0;
    require(has_out_rot == qc.out_rotation.has_value(), who, ": layer ", layer, ": out_rotation is ",
            has_out_rot ? "set in the weights" : "absent from the weights", " but the config ",
            qc.out_rotation ? "names one" : "names none");
    if (!has_out_rot) return;
    require(qc.out_rotation->n == w.d_inner(), who, ": out_rotation size ", qc.out_rotation->n, " does not match d_inner ",
            w.d_inner());
    require_same_rotation(w.out_rotation, HadamardOnline::from_spec(*qc.out_rotation), who);
}
// The scan of a layer from its extras and the config; refuses what the config cannot run.
template <class Tag = void>
dependent_t<Tag, RuntimeScan> make_runtime_scan(const dependent_t<Tag, MambaLayerWeights>& w,
                                                const dependent_t<Tag, QuantizationConfig>& qc, std::size_t layer) {
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
        H = rotation_matrix<double>(*qc.state_rotation).template cast<float>();
        const float diff = (H - w.state_rotation).cwiseAbs().maxCoeff();
        require(diff <= 1e-6f, "build_quantized_model: layer ", layer, ": state_rotation differs from the config's ",
                rotation_kind_name(qc.state_rotation->kind), " (max |difference| ", diff, ")");
    }
    const ActQuant& a = qc[Site::scan_output].act;
    dependent_t<Tag, RuntimeScan> r;
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
template <class Defer>
BasicQuantizedMambaModel<Defer> build_quantized_model(const MambaWeights& w, const MambaConfig& cfg,
                                                      const QuantizationConfig& qc, FakeQuant fake) {
    validate(w);
    qc.validate(w.layers.size());
    require(w.layers.size() == cfg.n_layer, "build_quantized_model: ", w.layers.size(), " layers, the config says ",
            cfg.n_layer);
    require(static_cast<std::size_t>(w.embedding.rows()) == cfg.padded_vocab &&
                static_cast<std::size_t>(w.embedding.cols()) == cfg.d_model,
            "build_quantized_model: embedding is [", w.embedding.rows(), " x ", w.embedding.cols(), "], the config says [",
            cfg.padded_vocab, " x ", cfg.d_model, "]");
    const bool is_fake = fake == FakeQuant::yes;
    using Model = BasicQuantizedMambaModel<Defer>;
    Model m;
    m.config_ = cfg;
    m.qconfig_ = qc;
    m.fake_ = is_fake;
    m.tied_ = w.tied;
    m.norm_f_ = w.norm_f.transpose();
    const std::size_t D = cfg.d_model, E = cfg.d_inner, N = cfg.d_state, R = cfg.dt_rank, K = cfg.d_conv;
    m.head_ = Model::SiteLinear::build(view(w.head()), {}, qc[Site::lm_head], std::nullopt,
                                       detail::normalized(qc.head_act), is_fake);
    // Embedding rows: the head's own packed rows when tied and quantized alike (one copy in memory).
    const SiteQuant& eq = qc[Site::embedding];
    const SiteQuant& hq = qc[Site::lm_head];
    require(!(w.tied && eq.weight && !hq.weight), "build_quantized_model: the embedding is tied to a float head; "
            "quantize both (the head's rows then serve as the embedding) or neither");
    // Tied and quantized alike: the embedding rows are the head's packed rows (one copy in memory).
    const bool share = detail::embedding_shares_head(w.tied, qc);
    if (share) {
        if (is_fake) m.embedding_ = std::get<FakeQuantLinear>(m.head_.variant()).weights(); // the same ŵ rows
        else m.embedding_ = std::monostate{};
    } else if (eq.weight) {
        detail::visit_site_weight(*eq.weight, [&]<class W>(std::type_identity<W>) {
            auto packed = pack_weights<W>(view(w.embedding));
            if (is_fake) m.embedding_ = dequantize(packed);
            else m.embedding_ = std::move(packed);
        });
    } else if (w.tied && !hq.weight) {
        m.embedding_ = std::monostate{}; // float and tied: the head's float rows, held once
    } else {
        m.embedding_ = w.embedding;
    }
    m.layers_.reserve(w.layers.size());
    m.conv_codes_.resize(w.layers.size());
    for (std::size_t i = 0; i < w.layers.size(); ++i) {
        const MambaLayerWeights& lw = w.layers[i];
        require(lw.d_inner() == E && lw.d_state() == N && lw.dt_rank() == R && lw.d_conv() == K,
                "build_quantized_model: layer ", i, " shape differs from the config");
        detail::require_config_out_rotation(lw, qc, i, "build_quantized_model");
        const LayerActParams lp = qc.layers.empty() ? LayerActParams{} : qc.layers[i];
        const aligned_vector<float> xb = detail::dt_shift_bias(lw);
        auto site = [&](Site s, const MatrixXf& weight, std::span<const float> bias = {},
                        const std::optional<RotationSpec>& rot = std::nullopt) {
            return detail::build_site_linear(view(weight), bias, qc[s], rot, detail::normalized(lp[s]), qc.weight_grid(i, s),
                                             is_fake);
        };
        MatrixXf conv_w = lw.conv_w;
        if (qc[Site::conv1d].weight) detail::quantize_conv_int8(conv_w, m.conv_codes_[i].codes, m.conv_codes_[i].scale);
        ScanWeights sw = ScanWeights::from_A_log(view(lw.A_log), detail::span_of(lw.D), detail::span_of(lw.dt_bias));
        if (!detail::neutral(lw.gate_scale, 1.0f)) sw.set_gate_scale(detail::span_of(lw.gate_scale));
        typename Model::Block::Parts parts{lw.norm.transpose(),
                                           site(Site::in_proj, lw.in_proj),
                                           site(Site::x_proj, lw.x_proj, std::span<const float>(xb.data(), xb.size())),
                                           site(Site::dt_proj, lw.dt_proj),
                                           site(Site::out_proj, lw.out_proj, {}, qc.out_rotation),
                                           detail::conv_weights(conv_w, m.conv_codes_[i].codes, m.conv_codes_[i].scale,
                                                                detail::span_of(lw.conv_b), qc[Site::conv1d],
                                                                detail::normalized(lp[Site::conv1d])),
                                           std::move(sw),
                                           detail::make_runtime_scan(lw, qc, i)};
        m.layers_.emplace_back(D, E, N, R, K, cfg.norm_eps, std::move(parts));
    }
    return m;
}
MQ_EXTERN_TEMPLATE(QuantizedMambaModel build_quantized_model<>(const MambaWeights&, const MambaConfig&,
                                                               const QuantizationConfig&, FakeQuant))

namespace detail {
// The stored form of a packed weight (io/quantized_checkpoint.hpp's layout).
template <class Tag = void>
StoredQuantWeight stored_weight(const dependent_t<Tag, PackedW8>& p) {
    StoredQuantWeight s;
    s.bits = 8;
    s.symmetric = true;
    s.rows = p.n;
    s.cols = p.k;
    s.group = p.k;
    s.codes.resize(p.n * p.k);
    s.scale.assign(p.scale.begin(), p.scale.begin() + static_cast<std::ptrdiff_t>(p.n));
    for (std::size_t r = 0; r < p.n; ++r)
        for (std::size_t c = 0; c < p.k; ++c)
            s.codes[r * p.k + c] = static_cast<std::uint8_t>(static_cast<std::int8_t>(p.code(r, c)));
    return s;
}
template <class Tag = void>
StoredQuantWeight stored_weight(const dependent_t<Tag, PackedW4>& p) {
    StoredQuantWeight s;
    s.bits = 4;
    s.symmetric = p.symmetric;
    s.rows = p.n;
    s.cols = p.k;
    const std::size_t g = p.groups == 1 ? 1 : p.k / p.group;
    s.group = p.k / g;
    const std::size_t row_bytes = (p.k + 1) / 2;
    s.codes.assign(p.n * row_bytes, 0);
    s.scale.resize(p.n * g);
    if (!p.symmetric) s.zero.resize(p.n * g);
    for (std::size_t r = 0; r < p.n; ++r) {
        for (std::size_t c = 0; c < p.k; ++c) {
            const int q = p.code(r, c);
            const auto nib = static_cast<std::uint8_t>(q & 0x0F); // two's complement when symmetric
            s.codes[r * row_bytes + c / 2] |= static_cast<std::uint8_t>(c % 2 == 0 ? nib : nib << 4);
        }
        for (std::size_t k = 0; k < g; ++k) {
            const std::size_t i = p.param_index(r, k);
            s.scale[r * g + k] = p.scale[i];
            if (!p.symmetric) s.zero[r * g + k] = static_cast<std::uint8_t>(p.zero[i]);
        }
    }
    return s;
}
// A site's packed weight back from its stored form, under the config's quantizer.
template <class F>
decltype(auto) load_packed(const dependent_t<F, Checkpoint>& ck, const std::string& base, const QuantSpec& spec, std::size_t rows,
                           std::size_t cols, F&& f) {
    const std::size_t group = spec.granularity == GranularityKind::per_group ? spec.group : cols;
    require(cols % group == 0, ck.path().string(), ": \"", base, "\": group ", group, " does not divide ", cols);
    const StoredQuantWeight s = read_quant_weight(ck, base, spec.bits, spec.symmetric, rows, cols, group);
    const std::vector<QuantParams> params = s.params();
    return visit_site_weight(spec, [&]<class W>(std::type_identity<W>) -> decltype(auto) {
        if constexpr (W::bits == 8) {
            return f(pack_w8(ConstMatrixView<std::int8_t>(reinterpret_cast<const std::int8_t*>(s.codes.data()), rows, cols),
                             params));
        } else {
            return f(pack_w4_nibbles<W>(s.codes, rows, cols, params));
        }
    });
}
} // namespace detail

// Writes config.json (transformers layout + "quantization_config") and model.safetensors:
//   float sites   <name>.weight F32 (Hugging Face names);
//   quantized     <name>.qweight / .scales / .zeros (io/quantized_checkpoint.hpp), the online
//                 rotation of out_proj already folded (it is applied from its description);
//   static act    <name>.input_quant F32 [2] = {scale, zero};
//   per layer     norm.weight, mixer.{x_proj.bias (folded dt shift), dt_proj.bias, A (= −exp(A_log)
//                 as the scan holds it, so a reload is bit-identical), D, conv1d.*, gate_scale,
//                 state_scale}; R2 and R4 by description in the config only.
// The embedding is absent when it is the quantized head's rows (tied). Only the integer model is
// saved; its fake-quant twin is load(dir, FakeQuant::yes).
template <class Defer>
template <class Tag>
void BasicQuantizedMambaModel<Defer>::save(const std::filesystem::path& dir) const {
    require(!fake_, "QuantizedMambaModel::save: this is the fake-quant twin; save the integer model");
    std::filesystem::create_directories(dir);
    std::vector<TensorData> ts;
    std::vector<StoredQuantWeight> stored;
    std::vector<std::vector<float>> floats;
    stored.reserve(2 + 4 * layers_.size());
    floats.reserve(16 * layers_.size() + 4);
    auto add_f = [&](std::string name, std::vector<float> v, std::vector<std::size_t> shape) {
        floats.push_back(std::move(v));
        ts.push_back({std::move(name), DType::F32, std::move(shape), std::as_bytes(std::span<const float>(floats.back()))});
    };
    auto add_span = [&](std::string name, std::span<const float> v, std::vector<std::size_t> shape) {
        add_f(std::move(name), std::vector<float>(v.begin(), v.end()), std::move(shape));
    };
    auto add_linear = [&](const std::string& base, const SiteLinear& l, Site site,
                          const std::optional<QuantParams>& sp) {
        if (l.is_packed()) {
            stored.push_back(l.visit_packed([](const auto* p) { return detail::stored_weight(*p); }));
            append_quant_weight(ts, base, stored.back());
        } else {
            const auto& f = std::get<FloatLinear<NoRotation>>(l.variant()).weights();
            add_span(base + ".weight", std::span<const float>(f.data(), static_cast<std::size_t>(f.size())),
                     {static_cast<std::size_t>(f.rows()), static_cast<std::size_t>(f.cols())});
        }
        if (qconfig_[site].act.mode == ActMode::static_per_tensor) {
            require(sp.has_value(), "QuantizedMambaModel::save: ", base, ": static activation params missing");
            add_f(base + ".input_quant", act_params_tensor(*sp), {2});
        }
    };
    const std::size_t D = config_.d_model, E = config_.d_inner, N = config_.d_state, K = config_.d_conv,
                      V = config_.padded_vocab;
    std::visit([&](const auto& e) {
        using T = std::decay_t<decltype(e)>;
        if constexpr (std::is_same_v<T, MatrixXf>) {
            add_span("backbone.embeddings.weight", std::span<const float>(e.data(), static_cast<std::size_t>(e.size())), {V, D});
        } else if constexpr (std::is_same_v<T, std::monostate>) {
            if (!head_.is_packed()) { // tied float: the table is the head's weight
                const auto& f = std::get<FloatLinear<NoRotation>>(head_.variant()).weights();
                add_span("backbone.embeddings.weight", std::span<const float>(f.data(), static_cast<std::size_t>(f.size())), {V, D});
            }
        } else {
            stored.push_back(detail::stored_weight(e));
            append_quant_weight(ts, "backbone.embeddings", stored.back());
        }
    }, embedding_);
    if (qconfig_[Site::lm_head].weight || !tied_) {
        if (head_.is_packed()) {
            add_linear("lm_head", head_, Site::lm_head, qconfig_.head_act);
        } else {
            const auto& f = std::get<FloatLinear<NoRotation>>(head_.variant()).weights();
            add_span("lm_head.weight", std::span<const float>(f.data(), static_cast<std::size_t>(f.size())), {V, D});
        }
    }
    add_span("backbone.norm_f.weight", std::span<const float>(norm_f_.data(), D), {D});
    for (std::size_t i = 0; i < layers_.size(); ++i) {
        const auto& l = layers_[i];
        const std::string p = "backbone.layers." + std::to_string(i) + ".";
        const std::string mx = p + "mixer.";
        const LayerActParams lp = qconfig_.layers.empty() ? LayerActParams{} : qconfig_.layers[i];
        add_span(p + "norm.weight", std::span<const float>(l.norm().data(), D), {D});
        add_linear(mx + "in_proj", l.in_proj(), Site::in_proj, lp[Site::in_proj]);
        add_linear(mx + "x_proj", l.x_proj(), Site::x_proj, lp[Site::x_proj]);
        if (!l.x_proj().bias().empty()) add_span(mx + "x_proj.bias", l.x_proj().bias(), {l.x_proj().bias().size()});
        add_linear(mx + "dt_proj", l.dt_proj(), Site::dt_proj, lp[Site::dt_proj]);
        add_linear(mx + "out_proj", l.out_proj(), Site::out_proj, lp[Site::out_proj]);
        const auto& sw = l.scan_weights();
        add_span(mx + "dt_proj.bias", sw.dt_bias, {E});
        add_span(mx + "A", std::span<const float>(sw.A.data(), E * N), {E, N});
        add_span(mx + "D", sw.D, {E});
        if (!sw.gate_scale.empty()) add_span(mx + "gate_scale", sw.gate_scale, {E});
        if (!l.scan().scale().empty()) add_span(mx + "state_scale", l.scan().scale(), {N});
        if (qconfig_[Site::conv1d].weight) {
            const auto& cc = conv_codes_[i];
            ts.push_back({mx + "conv1d.qweight", DType::I8, {E, K}, std::as_bytes(std::span<const std::uint8_t>(cc.codes))});
            add_span(mx + "conv1d.scales", cc.scale, {E, 1});
            if (qconfig_[Site::conv1d].act.mode == ActMode::static_per_tensor) {
                require(lp[Site::conv1d].has_value(), "QuantizedMambaModel::save: ", mx, "conv1d: static activation params missing");
                add_f(mx + "conv1d.input_quant", act_params_tensor(*lp[Site::conv1d]), {2});
            }
        } else {
            const MatrixXf cw = l.conv().weight_t.transpose(); // [E, K]
            add_span(mx + "conv1d.weight", std::span<const float>(cw.data(), E * K), {E, 1, K});
        }
        if (!l.conv().bias.empty()) add_span(mx + "conv1d.bias", l.conv().bias, {E});
    }
    MambaConfig c = config_;
    c.tie_embeddings = tied_;
    dependent_t<Tag, nlohmann::json> j = dependent_t<Tag, nlohmann::json>::parse(mamba_config_json(c, ConfigLayout::transformers));
    j["quantization_config"] = to_json(qconfig_);
    save_safetensors(dir / kSafetensorsSingleName, ts, {{"format", "mambaquant"}});
    write_file_atomically(dir / "config.json", j.dump(2) + "\n");
}
MQ_EXTERN_TEMPLATE(void QuantizedMambaModel::save<>(const std::filesystem::path&) const)

// Reads a directory save() wrote. Errors name the tensor or field: a float checkpoint (no
// quantization_config), a missing or mistyped tensor, a bad scale or zero point, a wrong byte size.
template <class Defer>
template <class Tag>
BasicQuantizedMambaModel<Defer> BasicQuantizedMambaModel<Defer>::load(const std::filesystem::path& dir,
                                                                      FakeQuant fake) {
    const auto cfg_path = dir / "config.json";
    const dependent_t<Tag, nlohmann::json> j = detail::parse_untrusted_json(detail::read_text_file(cfg_path), cfg_path.string(), 1);
    require(j.is_object() && j.contains("quantization_config"), cfg_path.string(),
            ": no \"quantization_config\": this is a float checkpoint (load it with MambaModel::load)");
    const MambaConfig cfg = load_mamba_config(dir);
    QuantizationConfig qc = quantization_config_from_json(j["quantization_config"], cfg_path.string() + ": quantization_config");
    const dependent_t<Tag, Checkpoint> ck = dependent_t<Tag, Checkpoint>::open(dir);
    const bool is_fake = fake == FakeQuant::yes;
    const std::size_t D = cfg.d_model, E = cfg.d_inner, N = cfg.d_state, R = cfg.dt_rank, K = cfg.d_conv,
                      V = cfg.padded_vocab;
    auto float_matrix = [&](const std::string& name, std::vector<std::size_t> shape, std::size_t rows, std::size_t cols) {
        MatrixXf m(static_cast<Eigen::Index>(rows), static_cast<Eigen::Index>(cols));
        ck.load_float_into(name, shape, std::span<float>(m.data(), rows * cols));
        return m;
    };
    auto float_vec = [&](const std::string& name, std::size_t n) {
        const auto d = ck.load_float(name, {n}).data;
        return std::vector<float>(d.begin(), d.end());
    };
    auto act_params = [&](const std::string& base, Site site) -> std::optional<QuantParams> {
        if (qc[site].act.mode != ActMode::static_per_tensor) return std::nullopt;
        return read_act_params(ck, base + ".input_quant", qc[site].act.symmetric);
    };
    auto linear = [&](const std::string& base, Site site, std::size_t rows, std::size_t cols, std::span<const float> bias,
                      const std::optional<QuantParams>& sp, const std::optional<RotationSpec>& rot) {
        const SiteQuant& q = qc[site];
        if (!q.weight) {
            require(!ck.contains(base + ".qweight"), ck.path().string(), ": tensor \"", base,
                    ".qweight\" is quantized but the quantization_config says ", site_name(site), " is float");
            return SiteLinear::build(view(float_matrix(base + ".weight", {rows, cols}, rows, cols)), bias, q, rot, sp,
                                     is_fake);
        }
        require(!ck.contains(base + ".weight"), ck.path().string(), ": tensor \"", base, ".weight\" is float but the ",
                "quantization_config quantizes ", site_name(site));
        std::optional<HadamardOnline> r;
        if (rot) {
            require(rot->n == cols, cfg_path.string(), ": ", base, ": rotation size ", rot->n, " does not match in_features ", cols);
            r = HadamardOnline::from_spec(*rot);
        }
        return detail::load_packed(ck, base, *q.weight, rows, cols, [&](auto packed) {
            return SiteLinear::from_packed(std::move(packed), bias, q, std::move(r), sp, is_fake);
        });
    };
    BasicQuantizedMambaModel m;
    m.config_ = cfg;
    m.fake_ = is_fake;
    m.tied_ = cfg.tie_embeddings;
    m.norm_f_ = Eigen::Map<const Eigen::RowVectorXf>(float_vec("backbone.norm_f.weight", D).data(), static_cast<Eigen::Index>(D));
    const bool share = detail::embedding_shares_head(m.tied_, qc);
    const SiteQuant& eq = qc[Site::embedding];
    if (share) {
        require(!ck.contains("backbone.embeddings.qweight") && !ck.contains("backbone.embeddings.weight"), ck.path().string(),
                ": an embedding table is stored but the tied, quantized head holds its rows");
    } else if (eq.weight) {
        detail::load_packed(ck, "backbone.embeddings", *eq.weight, V, D, [&](auto packed) {
            if (is_fake) m.embedding_ = dequantize(packed);
            else m.embedding_ = std::move(packed);
            return 0;
        });
    } else if (!(m.tied_ && !qc[Site::lm_head].weight)) {
        m.embedding_ = float_matrix("backbone.embeddings.weight", {V, D}, V, D);
    }
    if (qc[Site::lm_head].weight || !m.tied_) {
        m.head_ = linear("lm_head", Site::lm_head, V, D, {}, act_params("lm_head", Site::lm_head), std::nullopt);
        qc.head_act = act_params("lm_head", Site::lm_head);
    } else { // tied float: one float table, the head's rows serve as the embedding
        require(!eq.weight, cfg_path.string(), ": the embedding is tied to a float head but quantized");
        m.head_ = SiteLinear::build(view(float_matrix("backbone.embeddings.weight", {V, D}, V, D)), {},
                                    qc[Site::lm_head], std::nullopt, std::nullopt, is_fake);
        m.embedding_ = std::monostate{};
    }
    if (share && is_fake) m.embedding_ = std::get<FakeQuantLinear>(m.head_.variant()).weights();
    bool any_static = false;
    for (Site s : kAllSites) any_static = any_static || (s != Site::lm_head && qc[s].act.mode == ActMode::static_per_tensor);
    if (any_static) qc.layers.resize(cfg.n_layer);
    m.conv_codes_.resize(cfg.n_layer);
    m.layers_.reserve(cfg.n_layer);
    for (std::size_t i = 0; i < cfg.n_layer; ++i) {
        const std::string p = "backbone.layers." + std::to_string(i) + ".";
        const std::string mx = p + "mixer.";
        LayerActParams lp;
        for (Site s : {Site::in_proj, Site::conv1d, Site::x_proj, Site::dt_proj, Site::out_proj})
            lp[s] = act_params(mx + site_name(s), s);
        if (any_static) qc.layers[i] = lp;
        std::vector<float> xb;
        if (ck.contains(mx + "x_proj.bias")) xb = float_vec(mx + "x_proj.bias", R + 2 * N);
        MatrixXf conv_w(static_cast<Eigen::Index>(E), static_cast<Eigen::Index>(K));
        if (qc[Site::conv1d].weight) {
            const auto cb = detail::checked_tensor_bytes(ck, mx + "conv1d.qweight", DType::I8, {E, K}, 1);
            auto& cc = m.conv_codes_[i];
            cc.codes.resize(cb.size());
            std::memcpy(cc.codes.data(), cb.data(), cb.size());
            const auto cs = ck.load_float(mx + "conv1d.scales", {E, 1}).data;
            cc.scale.assign(cs.begin(), cs.end());
            for (std::size_t e = 0; e < E; ++e)
                require(std::isfinite(cc.scale[e]) && cc.scale[e] > 0.0f, ck.path().string(), ": tensor \"", mx,
                        "conv1d.scales\": scale[", e, "] = ", cc.scale[e], " must be finite and > 0");
            for (std::size_t k = 0; k < cc.codes.size(); ++k)
                require(static_cast<std::int8_t>(cc.codes[k]) != -128, ck.path().string(), ": tensor \"", mx,
                        "conv1d.qweight\": code −128 is outside [−127, 127]");
            detail::dequantize_conv_int8(cc.codes, cc.scale, conv_w);
        } else {
            conv_w = float_matrix(mx + "conv1d.weight", {E, 1, K}, E, K);
        }
        std::vector<float> conv_b;
        if (cfg.conv_bias) conv_b = float_vec(mx + "conv1d.bias", E);
        const MatrixXf A = float_matrix(mx + "A", {E, N}, E, N);
        for (Eigen::Index k = 0; k < A.size(); ++k)
            require(A.data()[k] < 0.0f, ck.path().string(), ": tensor \"", mx, "A\": A must be negative, got ", A.data()[k]);
        ScanWeights sw = ScanWeights::from_A(view(A), float_vec(mx + "D", E), float_vec(mx + "dt_proj.bias", E));
        if (ck.contains(mx + "gate_scale")) sw.set_gate_scale(float_vec(mx + "gate_scale", E));
        // The scan from the stored extras, through the same checks as build_quantized_model.
        MambaLayerWeights extras;
        extras.state_scale = ck.contains(mx + "state_scale")
                                 ? Eigen::VectorXf(Eigen::Map<const Eigen::VectorXf>(float_vec(mx + "state_scale", N).data(), static_cast<Eigen::Index>(N)))
                                 : Eigen::VectorXf::Ones(static_cast<Eigen::Index>(N));
        if (qc.state_rotation) {
            require(qc.state_rotation->n == N, cfg_path.string(), ": quantization_config.state_rotation: size ",
                    qc.state_rotation->n, " does not match the state size ", N);
            const dependent_t<Tag, MatrixXd> r = rotation_matrix<double>(*qc.state_rotation);
            extras.state_rotation = r.template cast<float>();
        }
        typename Block::Parts parts{
            Eigen::Map<const Eigen::RowVectorXf>(float_vec(p + "norm.weight", D).data(), static_cast<Eigen::Index>(D)),
            linear(mx + "in_proj", Site::in_proj, 2 * E, D, {}, lp[Site::in_proj], std::nullopt),
            linear(mx + "x_proj", Site::x_proj, R + 2 * N, E, xb, lp[Site::x_proj], std::nullopt),
            linear(mx + "dt_proj", Site::dt_proj, E, R, {}, lp[Site::dt_proj], std::nullopt),
            linear(mx + "out_proj", Site::out_proj, D, E, {}, lp[Site::out_proj], qc.out_rotation),
            detail::conv_weights(conv_w, m.conv_codes_[i].codes, m.conv_codes_[i].scale, conv_b, qc[Site::conv1d],
                                 lp[Site::conv1d]),
            std::move(sw),
            detail::make_runtime_scan(extras, qc, i)};
        m.layers_.emplace_back(D, E, N, R, K, cfg.norm_eps, std::move(parts));
    }
    m.qconfig_ = std::move(qc);
    return m;
}
MQ_EXTERN_TEMPLATE(QuantizedMambaModel QuantizedMambaModel::load<>(const std::filesystem::path&, FakeQuant))

MQ_NAMESPACE_END
