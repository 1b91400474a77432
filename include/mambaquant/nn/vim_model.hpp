// VimModel: a Vision Mamba classifier (patch embedding, middle class token, bidirectional layers, head).
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/tensor.hpp>
#include <mambaquant/io/checkpoint.hpp>
#include <mambaquant/io/vim_config.hpp>
#include <mambaquant/kernels/parallel.hpp>
#include <mambaquant/nn/activation_tap.hpp>
#include <mambaquant/nn/linear.hpp>
#include <mambaquant/nn/rms_norm.hpp>
#include <mambaquant/nn/vim_block.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

MQ_NAMESPACE_BEGIN

// `count` images of channels × height × width floats each (channel-major, then rows, then
// columns, as a PyTorch [n, C, H, W] tensor), already scaled as the model's input.
struct ImageBatch {
    const float* data = nullptr;
    std::size_t count = 0;
    std::size_t channels = 0;
    std::size_t height = 0;
    std::size_t width = 0;

    std::size_t image_size() const noexcept { return channels * height * width; }
    const float* image(std::size_t i) const noexcept { return data + i * image_size(); }
};

// The float tensors in front of the layers (what R1 rotates with the residual stream).
struct VimEmbedding {
    MatrixXf patch_w;             // [D, C·p·p]
    Eigen::RowVectorXf patch_b;   // [D]
    Eigen::RowVectorXf cls_token; // [D]
    MatrixXf pos_embed;           // [L, D]
};

// Every float tensor of a Vim checkpoint, as read (the state dict's names below).
struct VimModelWeights {
    VimEmbedding embedding;
    std::vector<VimLayerWeights> layers;
    Eigen::RowVectorXf norm_f; // [D]
    MatrixXf head_w;           // [classes, D]
    Eigen::RowVectorXf head_b; // [classes]
};

namespace detail {
template <class Tag = void>
MatrixXf vim_matrix(const dependent_t<Tag, Checkpoint>& ck, const dependent_t<Tag, std::string>& name,
                    const dependent_t<Tag, std::vector<std::size_t>>& shape,
                    std::size_t rows, std::size_t cols) {
    MatrixXf m(static_cast<Eigen::Index>(rows), static_cast<Eigen::Index>(cols));
    ck.load_float_into(name, shape, std::span<float>(m.data(), rows * cols));
    return m;
}
template <class Tag = void>
Eigen::RowVectorXf vim_row(const dependent_t<Tag, FloatTensor>& t) {
    return Eigen::Map<const dependent_t<Tag, Eigen::RowVectorXf>>(t.data.data(), static_cast<Eigen::Index>(t.data.size()));
}
} // namespace detail

// Reads every tensor a Vim model needs, shapes checked against the config; a missing
// backward-direction tensor is named.
template <class Tag = void>
VimModelWeights read_vim_weights(const dependent_t<Tag, VimConfig>& cfg, const dependent_t<Tag, Checkpoint>& ck) {
    require(cfg.cls_token_position <= cfg.num_patches(), "VimModel: cls_token_position ", cfg.cls_token_position,
            " is outside the sequence of ", cfg.seq_len(), " tokens");
    using detail::vim_matrix, detail::vim_row;
    const std::size_t D = cfg.d_model, E = cfg.d_inner, N = cfg.d_state, R = cfg.dt_rank, K = cfg.d_conv,
                      C = cfg.channels, p = cfg.patch_size, L = cfg.seq_len(), Q = cfg.num_classes;
    VimModelWeights m;
    m.embedding = {vim_matrix(ck, "patch_embed.proj.weight", {D, C, p, p}, D, C * p * p),
                   vim_row(ck.load_float("patch_embed.proj.bias", {D})), vim_row(ck.load_float("cls_token", {1, 1, D})),
                   vim_matrix(ck, "pos_embed", {1, L, D}, L, D)};
    m.norm_f = vim_row(ck.load_float("norm_f.weight", {D}));
    m.head_w = vim_matrix(ck, "head.weight", {Q, D}, Q, D);
    m.head_b = vim_row(ck.load_float("head.bias", {Q}));
    m.layers.reserve(cfg.n_layer);
    for (std::size_t i = 0; i < cfg.n_layer; ++i) {
        const std::string p_layer = "layers." + std::to_string(i) + ".", mx = p_layer + "mixer.";
        for (const char* b : {"conv1d_b.weight", "x_proj_b.weight", "dt_proj_b.weight", "dt_proj_b.bias", "A_b_log", "D_b"})
            require(ck.contains(mx + b), ck.path().string(), ": checkpoint has no backward-direction tensor \"", mx,
                    b, "\"; a Vim layer (bimamba v2) needs both directions (conv1d_b, x_proj_b, dt_proj_b, A_b_log, D_b)");
        if (cfg.conv_bias)
            require(ck.contains(mx + "conv1d_b.bias"), ck.path().string(),
                    ": checkpoint has no backward-direction tensor \"", mx, "conv1d_b.bias\" (the config has conv_bias)");
        VimLayerWeights& w = m.layers.emplace_back();
        w.norm = vim_row(ck.load_float(p_layer + "norm.weight", {D})).transpose();
        w.in_proj = vim_matrix(ck, mx + "in_proj.weight", {2 * E, D}, 2 * E, D);
        w.out_proj = vim_matrix(ck, mx + "out_proj.weight", {D, E}, D, E);
        for (std::size_t d = 0; d < 2; ++d) {
            const std::string b = d == 0 ? "" : "_b";
            auto& dw = w.dir[d];
            dw.conv_w = vim_matrix(ck, mx + "conv1d" + b + ".weight", {E, 1, K}, E, K);
            if (cfg.conv_bias) dw.conv_b = vim_row(ck.load_float(mx + "conv1d" + b + ".bias", {E})).transpose();
            dw.x_proj = vim_matrix(ck, mx + "x_proj" + b + ".weight", {R + 2 * N, E}, R + 2 * N, E);
            dw.dt_proj = vim_matrix(ck, mx + "dt_proj" + b + ".weight", {E, R}, E, R);
            dw.dt_bias = vim_row(ck.load_float(mx + "dt_proj" + b + ".bias", {E})).transpose();
            dw.A_log = vim_matrix(ck, mx + (d == 0 ? "A_log" : "A_b_log"), {E, N}, E, N);
            dw.D = vim_row(ck.load_float(mx + "D" + b, {E})).transpose();
        }
    }
    return m;
}

// Vim (hustvl/Vim VisionMamba, bimamba v2, one class token), tensor names as its state dict:
//   patch_embed.proj.weight [D, C, p, p], .bias [D]; cls_token [1, 1, D]; pos_embed [1, M+1, D];
//   layers.{i}.norm.weight, layers.{i}.mixer.{in_proj, conv1d(_b), x_proj(_b), dt_proj(_b),
//   A_log / A_b_log, D(_b), out_proj}; norm_f.weight; head.weight [classes, D], head.bias.
// Forward of one image:
//   tokens_m = patch_m · W_peᵀ + b_pe   (patch m = (gy, gx) row-major over the grid, its pixels
//                                         flattened in (c, i, j) order: Conv2d(kernel = stride = p))
//   h = [tokens_0..c−1, cls, tokens_c..M−1] + pos_embed          (c = cls_token_position)
//   h ← VimBlock_l(h) for every layer;   logits = RMSNorm_f(h[c]) · W_headᵀ + b_head
// Block: a BasicVimBlock; Head: the head's linear layer (a float Linear, or the run-time AnyLinear
// of a quantized model, nn/quantized_vim_model.hpp).
template <class Block = VimBlock<>, class Head = FloatLinear<>>
class BasicVimModel {
public:
    using block_type = Block;
    using head_type = Head;

    using Embedding = VimEmbedding;

    BasicVimModel() = default;

    // A model from its built parts (a quantized model: nn/quantized_vim_model.hpp); shapes checked.
    BasicVimModel(const VimConfig& cfg, Embedding embedding, std::vector<Block> layers, Eigen::RowVectorXf norm_f, Head head)
        : config_(cfg), patch_w_(std::move(embedding.patch_w)), patch_b_(std::move(embedding.patch_b)),
          cls_token_(std::move(embedding.cls_token)), pos_embed_(std::move(embedding.pos_embed)), layers_(std::move(layers)),
          norm_f_(std::move(norm_f)), head_(std::move(head)) {
        const auto D = static_cast<Eigen::Index>(cfg.d_model);
        require(cfg.cls_token_position <= cfg.num_patches(), "VimModel: cls_token_position ", cfg.cls_token_position,
                " is outside the sequence of ", cfg.seq_len(), " tokens");
        require(patch_w_.rows() == D && patch_w_.cols() == static_cast<Eigen::Index>(cfg.patch_dim()),
                "VimModel: patch_embed.proj.weight: expected [", D, ", ", cfg.patch_dim(), "], got [", patch_w_.rows(), ", ",
                patch_w_.cols(), "]");
        require(patch_b_.size() == D && cls_token_.size() == D && norm_f_.size() == D,
                "VimModel: patch_embed.proj.bias, cls_token and norm_f.weight must have d_model = ", D, " entries");
        require(pos_embed_.rows() == static_cast<Eigen::Index>(cfg.seq_len()) && pos_embed_.cols() == D,
                "VimModel: pos_embed: expected [", cfg.seq_len(), ", ", D, "], got [", pos_embed_.rows(), ", ",
                pos_embed_.cols(), "]");
        require(layers_.size() == cfg.n_layer, "VimModel: ", layers_.size(), " layers, the config says ", cfg.n_layer);
        require(head_.out_features() == cfg.num_classes && head_.in_features() == cfg.d_model, "VimModel: head.weight: expected [",
                cfg.num_classes, ", ", cfg.d_model, "], got [", head_.out_features(), ", ", head_.in_features(), "]");
        head_.set_thread_pool(nullptr); // run_group runs inside the pool's tasks
    }

    // From a directory with config.json and model.safetensors (or a sharded index).
    // (The checkpoint's type is spelled dependent on Block: its members are then compiled only where
    // a model is loaded, not in every includer; core/config.hpp.)
    static BasicVimModel load(const dependent_t<Block, std::filesystem::path>& dir) {
        return from_checkpoint(load_vim_config(dir), dependent_t<Block, Checkpoint>::open(dir));
    }

    static BasicVimModel from_checkpoint(const VimConfig& cfg, const dependent_t<Block, Checkpoint>& ck) {
        VimModelWeights w = read_vim_weights(cfg, ck);
        std::vector<Block> layers;
        layers.reserve(cfg.n_layer);
        for (std::size_t i = 0; i < cfg.n_layer; ++i)
            layers.emplace_back(w.layers[i], cfg.d_model, cfg.d_inner, cfg.d_state, cfg.dt_rank, cfg.d_conv, cfg.norm_eps,
                                cfg.divide_out, std::array<typename Block::scan_type, 2>{},
                                typename Block::out_rotation_type{}, "layers." + std::to_string(i) + ".");
        return BasicVimModel(cfg, std::move(w.embedding), std::move(layers), std::move(w.norm_f),
                             Head(view(w.head_w), std::span<const float>(w.head_b.data(), cfg.num_classes)));
    }

    const VimConfig& config() const noexcept { return config_; }
    const std::vector<Block>& layers() const noexcept { return layers_; }
    Embedding embedding() const { return {patch_w_, patch_b_, cls_token_, pos_embed_}; }
    const Eigen::RowVectorXf& norm_f() const noexcept { return norm_f_; }
    const Head& head() const noexcept { return head_; }
    std::size_t seq_len() const noexcept { return config_.seq_len(); }

    // The sequence entering layer 0 for one image: h [L, D] (patch tokens, class token, + pos).
    void embed(const float* image, MatrixView<float> h) const {
        const VimConfig& c = config_;
        const std::size_t p = c.patch_size, gw = c.grid_width(), H = c.image_height, W = c.image_width;
        require_shape(h, c.seq_len(), c.d_model, "VimModel::embed output");
        dependent_t<Block, MatrixXf> patches(static_cast<Eigen::Index>(c.num_patches()), static_cast<Eigen::Index>(c.patch_dim()));
        for (std::size_t m = 0; m < c.num_patches(); ++m) {
            const std::size_t gy = m / gw, gx = m % gw;
            for (std::size_t ch = 0; ch < c.channels; ++ch)
                for (std::size_t i = 0; i < p; ++i)
                    for (std::size_t j = 0; j < p; ++j)
                        patches(static_cast<Eigen::Index>(m), static_cast<Eigen::Index>((ch * p + i) * p + j)) =
                            image[(ch * H + gy * p + i) * W + gx * p + j];
        }
        auto out = as_eigen(h);
        const auto cpos = static_cast<Eigen::Index>(c.cls_token_position), M = static_cast<Eigen::Index>(c.num_patches());
        const MatrixXf tok = (patches * patch_w_.transpose()).rowwise() + patch_b_;
        out.topRows(cpos) = tok.topRows(cpos);
        out.row(cpos) = cls_token_;
        out.bottomRows(M - cpos) = tok.bottomRows(M - cpos);
        out += pos_embed_;
    }

    // Logits [count, classes] of a batch of images. The images run in groups of `group` stacked
    // sequences (so the projections are GEMMs over group·L rows), the groups split over `pool`
    // (nullptr: the calling thread). Groups are fixed by image index, so the result does not
    // depend on the number of threads. `hidden` (optional) receives the stacked residual stream
    // of all images after the embedding and after each layer (runs as one group, serially).
    // `tap` (optional) sees every site's input (VimBlock's tap layers 2l, 2l+1; the head input
    // as layer 2·n_layer): the images then run one at a time on the calling thread, so each call
    // of the tap holds one sequence from a zero state (as a calibration window).
    MatrixXf logits(const ImageBatch& images, ThreadPool* pool = std::addressof(default_thread_pool()),
                    std::vector<MatrixXf>* hidden = nullptr, std::size_t group = 16, ActivationTap* tap = nullptr) const;

    // Top-1 class of every image.
    std::vector<std::size_t> predict(const ImageBatch& images, ThreadPool* pool = std::addressof(default_thread_pool())) const {
        const MatrixXf l = logits(images, pool);
        std::vector<std::size_t> cls(images.count);
        for (std::size_t i = 0; i < images.count; ++i) {
            Eigen::Index best = 0;
            l.row(static_cast<Eigen::Index>(i)).maxCoeff(&best);
            cls[i] = static_cast<std::size_t>(best);
        }
        return cls;
    }

private:
    void check_images(const ImageBatch& im) const {
        const VimConfig& c = config_;
        require(im.channels == c.channels, "VimModel: images have ", im.channels, " channels, the model takes ",
                c.channels);
        require(im.height == c.image_height && im.width == c.image_width, "VimModel: images are ", im.height, "x",
                im.width, ", the model takes ", c.image_height, "x", c.image_width);
        require(im.count == 0 || im.data != nullptr, "VimModel: ", im.count, " images but no data");
        for (std::size_t i = 0; i < im.count * im.image_size(); ++i)
            require(std::isfinite(im.data[i]), "VimModel: image ", i / im.image_size(), " pixel ",
                    i % im.image_size(), " is not finite (", im.data[i], ")");
    }

    // Images [b, e) as one stack: embed, run every layer, classify the class tokens.
    void run_group(const ImageBatch& im, std::size_t b, std::size_t e, MatrixXf& out, std::vector<MatrixXf>* hidden,
                   ActivationTap* tap) const {
        const std::size_t L = seq_len(), D = config_.d_model, n = e - b;
        typename Block::Workspace ws;
        MatrixXf h(static_cast<Eigen::Index>(n * L), static_cast<Eigen::Index>(D));
        for (std::size_t i = 0; i < n; ++i) embed(im.image(b + i), MatrixView<float>(h.data() + i * L * D, L, D));
        if (hidden) (*hidden)[0] = h;
        for (std::size_t l = 0; l < layers_.size(); ++l) {
            layers_[l].forward(h, L, ws, tap, l);
            if (hidden) (*hidden)[l + 1] = h;
        }
        MatrixXf cls(static_cast<Eigen::Index>(n), static_cast<Eigen::Index>(D)), feat(cls.rows(), cls.cols());
        for (std::size_t i = 0; i < n; ++i)
            cls.row(static_cast<Eigen::Index>(i)) = h.row(static_cast<Eigen::Index>(i * L + config_.cls_token_position));
        rms_norm(view(std::as_const(cls)), norm_f_, config_.norm_eps, view(feat));
        detail::tap(tap, 2 * layers_.size(), TapPoint::lm_head_input, view(std::as_const(feat)));
        MatrixXf lg(cls.rows(), static_cast<Eigen::Index>(config_.num_classes));
        typename Head::workspace_type head_ws;
        head_.forward(view(std::as_const(feat)), view(lg), head_ws);
        out.middleRows(static_cast<Eigen::Index>(b), static_cast<Eigen::Index>(n)) = lg;
    }

    VimConfig config_;
    MatrixXf patch_w_;            // [D, C·p·p]
    Eigen::RowVectorXf patch_b_;  // [D]
    Eigen::RowVectorXf cls_token_;
    MatrixXf pos_embed_;          // [L, D]
    std::vector<Block> layers_;
    Eigen::RowVectorXf norm_f_;
    Head head_;                   // [classes, D] with its bias
};

// Out of the class, so that `extern template` (MQ_EXTERN_TEMPLATE) keeps it out of the translation
// units that link the companion library (nn/quantized_vim_model.hpp, src/vim.cpp): an in-class
// body is inline and instantiated wherever it is called anyway.
template <class Block, class Head>
MatrixXf BasicVimModel<Block, Head>::logits(const ImageBatch& images, ThreadPool* pool, std::vector<MatrixXf>* hidden,
                                            std::size_t group, ActivationTap* tap) const {
    check_images(images);
    require(group > 0, "VimModel::logits: group must be positive");
    require(!(hidden && tap), "VimModel::logits: hidden states and a tap are separate runs");
    MatrixXf out(static_cast<Eigen::Index>(images.count), static_cast<Eigen::Index>(config_.num_classes));
    if (images.count == 0) return out;
    if (hidden) {
        hidden->assign(layers_.size() + 1, MatrixXf());
        run_group(images, 0, images.count, out, hidden, nullptr);
        return out;
    }
    if (tap) {
        for (std::size_t i = 0; i < images.count; ++i) run_group(images, i, i + 1, out, nullptr, tap);
        return out;
    }
    const std::size_t groups = (images.count + group - 1) / group;
    parallel_ranges(
        pool, groups,
        [&](std::size_t gb, std::size_t ge) {
            for (std::size_t g = gb; g < ge; ++g)
                run_group(images, g * group, std::min(images.count, (g + 1) * group), out, nullptr, nullptr);
        },
        2);
    return out;
}

using VimModel = BasicVimModel<VimBlock<>>;

MQ_NAMESPACE_END
