// Uses the installed umbrella header with no -m flags: the library must build for plain x86-64.
// Built twice, with and without mambaquant::lapacke; the KLT's default backend follows. Built once
// more with -mavx2 -mfma -mf16c (consumer_avx2): the kernels then dispatch at run time up to the
// CPU's best (AVX-512 VNNI where present). Without the flags the build prints a note saying what
// it gets (simd.hpp), and the program says which arch it runs. MQ_EXPECT_COMPILED_ARCH (set by
// CMakeLists.txt) is the arch the build must have compiled up to: "baseline" without flags. Built
// a fourth time against the installed companion (consumer_compiled, MQ_COMPILED): the KLT and the
// config reader below then come from the library (extern templates).
#include <mambaquant/mambaquant.hpp>

#include <string_view>

#include <algorithm>
#include <cmath>
#include <cstdio>

int main() {
    const auto p = mq::A8PerToken::params(-1.0f, 3.0f);
    mq::MatrixXd cov = mq::MatrixXd::Identity(3, 3);
    cov(0, 0) = 4.0;
    const mq::Klt klt = mq::klt_from_covariance(cov);
    std::printf("mambaquant %d.%d consumer: scale %g zero %d, LAPACK %s, λ_max %g\n", MQ_VERSION_MAJOR,
                MQ_VERSION_MINOR, double(p.scale), int(p.zero), mq::lapack_available ? "yes" : "no",
                klt.eigenvalues[0]);
    // The arch a Linear built now would run: the CPU's best that this build compiled.
    const mq::arch_id runs = mq::runnable_arch(mq::active_arch());
    std::printf("SIMD: compiled up to %s, CPU supports %s, runs %s\n", mq::arch_name(mq::compiled_arch()),
                mq::arch_name(mq::detected_arch()), mq::arch_name(runs));
    const bool arch_ok = static_cast<int>(runs) ==
                             std::min(static_cast<int>(mq::compiled_arch()), static_cast<int>(mq::detected_arch())) &&
                         std::string_view(mq::arch_name(mq::compiled_arch())) == MQ_EXPECT_COMPILED_ARCH;
    if (!arch_ok) std::printf("expected to be compiled up to %s\n", MQ_EXPECT_COMPILED_ARCH);
#ifdef MQ_COMPILED
    const mq::MambaConfig cfg = mq::parse_mamba_config(
        R"({"d_model": 64, "n_layer": 2, "vocab_size": 100, "ssm_cfg": {}, "rms_norm": true,
            "residual_in_fp32": true, "fused_add_norm": true, "pad_vocab_size_multiple": 8, "tie_embeddings": true})",
        "consumer config");
    std::printf("companion: config d_inner %zu, padded vocab %zu\n", cfg.d_inner, cfg.padded_vocab);
    const bool compiled_ok = cfg.d_inner == 128 && cfg.padded_vocab == 104;
#else
    const bool compiled_ok = true;
#endif
    // A W8A8 layer on that arch equals the scalar reference bit for bit.
    mq::MatrixXf w(16, 64), x(3, 64), y(3, 16), y_ref(3, 16);
    for (Eigen::Index i = 0; i < w.size(); ++i) w.data()[i] = std::sin(0.37f * float(i));
    for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = std::cos(0.11f * float(i));
    mq::Linear<mq::W8PerChannel, mq::A8PerToken> layer(mq::view(w));
    layer.forward(mq::view(x), mq::view(y));
    const auto pw = mq::pack_w8(mq::view(w));
    mq::ActBuffer<std::int16_t> a;
    a.reserve_for(3, pw);
    mq::quantize_activations_ref<mq::A8PerToken>(mq::view(x), a);
    mq::qgemm_ref(a, pw, mq::Epilogue<float>{}, mq::view(y_ref));
    const bool gemm_ok = layer.arch() == runs && y == y_ref;
    return p.scale > 0.0f && std::fabs(klt.eigenvalues[0] - 4.0) < 1e-12 && arch_ok && gemm_ok && compiled_ok ? 0 : 1;
}
