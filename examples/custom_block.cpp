// Per-site choices in one block: a user-composed Mamba layer whose four projections each get their
// own numerics, built from the library's parts (Linear, conv1d, the scan policy, RMSNorm):
//   in_proj   int8 weights per channel, int8 activations per token
//   x_proj    float (tiny, and it feeds the sensitive Δ path)
//   dt_proj   float
//   out_proj  int4 weights per group of 64, asymmetric, behind an online Hadamard (MambaQuant's R2)
// It runs layer 0 of the bundled model on a text and prints its error against the float layer,
// beside a uniform choice (every projection W4 per channel, A8, + Hadamard) for contrast — a
// uniform per_group<64> is not even possible: dt_proj has only dt_rank (12 here) inputs.
//   ./custom_block [MODEL_DIR] [TEXT]
#include <mambaquant/nn/mamba_model.hpp>

#include <cstdint>
#include <cstdio>
#include <span>
#include <string>
#include <vector>

#ifndef MQ_SOURCE_DIR
#define MQ_SOURCE_DIR "."
#endif

using W4G64 = mq::Quantizer<4, mq::per_group<64>, mq::asymmetric>;

class MyBlock {
public:
    struct Workspace {
        mq::MatrixXf hn, xz, xc, dbc, delta, y, out;
        mq::Linear<mq::W8PerChannel, mq::A8PerToken>::workspace_type in;
        mq::FloatLinear<>::workspace_type x, dt;
        mq::Linear<W4G64, mq::A8PerToken, mq::HadamardOnline>::workspace_type out_ws;
    };

    MyBlock(const mq::MambaLayerWeights& w, const mq::MambaConfig& c)
        : E_(c.d_inner), N_(c.d_state), R_(c.dt_rank), eps_(c.norm_eps), norm_(w.norm.transpose()),
          in_proj_(mq::view(w.in_proj)), x_proj_(mq::view(w.x_proj)), dt_proj_(mq::view(w.dt_proj)),
          out_proj_(mq::view(w.out_proj), {}, mq::HadamardOnline(c.d_inner)),
          conv_(mq::ConvWeights::from(mq::view(w.conv_w), std::span(w.conv_b.data(), E_))),
          scan_w_(mq::ScanWeights::from_A_log(mq::view(w.A_log), std::span(w.D.data(), E_), std::span(w.dt_bias.data(), E_))) {}

    // h ← h + Mixer(RMSNorm(h)), the same dataflow as mq::MambaBlock::forward.
    void forward(mq::MatrixXf& h, mq::MambaCache& cache, Workspace& ws) const {
        const auto L = h.rows();
        ws.hn.resize(L, h.cols()), ws.xz.resize(L, 2 * E_), ws.xc.resize(L, E_), ws.dbc.resize(L, R_ + 2 * N_);
        ws.delta.resize(L, E_), ws.y.resize(L, E_), ws.out.resize(L, h.cols());
        mq::rms_norm(mq::view(std::as_const(h)), norm_, eps_, mq::view(ws.hn));
        in_proj_.forward(mq::view(std::as_const(ws.hn)), mq::view(ws.xz), ws.in);
        const auto xz = mq::view(std::as_const(ws.xz));
        const mq::ConstMatrixView<float> x(xz.data, xz.rows, E_, xz.stride), z(xz.data + E_, xz.rows, E_, xz.stride);
        mq::causal_conv1d(conv_, x, &cache.conv, mq::view(ws.xc), /*apply_silu=*/true);
        x_proj_.forward(mq::view(std::as_const(ws.xc)), mq::view(ws.dbc), ws.x);
        const auto dbc = mq::view(std::as_const(ws.dbc));
        dt_proj_.forward(mq::ConstMatrixView<float>(dbc.data, dbc.rows, R_, dbc.stride), mq::view(ws.delta), ws.dt);
        mq::ScanInputs in;
        in.x = mq::view(std::as_const(ws.xc));
        in.delta = mq::view(std::as_const(ws.delta));
        in.B = mq::ConstMatrixView<float>(dbc.data + R_, dbc.rows, N_, dbc.stride);
        in.C = mq::ConstMatrixView<float>(dbc.data + R_ + N_, dbc.rows, N_, dbc.stride);
        in.z = z;
        in.delta_softplus = true;
        mq::selective_scan(mq::PlainScan{}, scan_w_, in, cache.scan, mq::view(ws.y));
        out_proj_.forward(mq::view(std::as_const(ws.y)), mq::view(ws.out), ws.out_ws);
        h += ws.out;
    }
    mq::MambaCache make_cache(std::size_t d_conv) const { return mq::MambaCache(E_, N_, d_conv); }

private:
    std::size_t E_, N_, R_;
    float eps_;
    Eigen::RowVectorXf norm_;
    mq::Linear<mq::W8PerChannel, mq::A8PerToken> in_proj_;
    mq::FloatLinear<> x_proj_, dt_proj_;
    mq::Linear<W4G64, mq::A8PerToken, mq::HadamardOnline> out_proj_;
    mq::ConvWeights conv_;
    mq::ScanWeights scan_w_;
};

// The layer's output h_out − h_in, for a block type with forward(h, cache, ws).
template <class Block, class Cache>
mq::MatrixXf delta_of(const Block& block, Cache cache, const mq::MatrixXf& h0) {
    typename Block::Workspace ws;
    mq::MatrixXf h = h0;
    block.forward(h, cache, ws);
    return h - h0;
}

int main(int argc, char** argv) {
    const std::string dir = argc > 1 ? argv[1] : std::string(MQ_SOURCE_DIR) + "/models/kjv-mamba-192";
    const std::string text = argc > 2 ? argv[2] : "And God said, Let there be light: and there was light.";
    try {
        const auto model = mq::MambaModel::load(dir);
        const auto& cfg = model.config();
        const mq::MambaLayerWeights w = model.layers()[0].weights();
        mq::MatrixXf h0(static_cast<Eigen::Index>(text.size()), static_cast<Eigen::Index>(cfg.d_model));
        for (std::size_t t = 0; t < text.size(); ++t) h0.row(Eigen::Index(t)) = model.embedding().row(static_cast<unsigned char>(text[t]));

        const mq::MatrixXf ref = delta_of(model.layers()[0], model.layers()[0].make_cache(), h0);
        const MyBlock mine(w, cfg);
        const mq::MatrixXf mixed = delta_of(mine, mine.make_cache(cfg.d_conv), h0);
        using Uniform = mq::MambaBlock<mq::Quantizer<4, mq::per_channel, mq::asymmetric>, mq::A8PerToken, mq::HadamardOnline>;
        const Uniform uniform(w, cfg.d_model, cfg.d_inner, cfg.d_state, cfg.dt_rank, cfg.d_conv, cfg.norm_eps, {},
                              mq::HadamardOnline(cfg.d_inner));
        const mq::MatrixXf all4 = delta_of(uniform, uniform.make_cache(), h0);
        std::printf("layer 0 of %s, %zu tokens: relative error of the layer output vs float\n", dir.c_str(), text.size());
        std::printf("  per-site (in W8A8, x/dt float, out W4 g64 A8 + Hadamard):      %.4f\n", double((mixed - ref).norm() / ref.norm()));
        std::printf("  uniform  (every projection W4 per channel A8, out + Hadamard): %.4f\n", double((all4 - ref).norm() / ref.norm()));
    } catch (const mq::error& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return 0;
}
