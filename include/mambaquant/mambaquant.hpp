// Umbrella header: the whole library. Include single headers to compile less.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/rng.hpp>
#include <mambaquant/core/simd.hpp>
#include <mambaquant/core/tags.hpp>
#include <mambaquant/core/tensor.hpp>

#include <mambaquant/quant/gptq.hpp>
#include <mambaquant/quant/int4.hpp>
#include <mambaquant/quant/params.hpp>
#include <mambaquant/quant/quant_spec.hpp>
#include <mambaquant/quant/quantizer.hpp>
#include <mambaquant/quant/range.hpp>

#include <mambaquant/kernels/conv1d.hpp>
#include <mambaquant/kernels/exp.hpp>
#include <mambaquant/kernels/finite.hpp>
#include <mambaquant/kernels/fwht.hpp>
#include <mambaquant/kernels/hadamard_block.hpp>
#include <mambaquant/kernels/packed_weights.hpp>
#include <mambaquant/kernels/parallel.hpp>
#include <mambaquant/kernels/qgemm.hpp>
#include <mambaquant/kernels/quantize.hpp>
#include <mambaquant/kernels/quantized_activations.hpp>
#include <mambaquant/kernels/quantized_scan.hpp>
#include <mambaquant/kernels/quantized_tensor.hpp>
#include <mambaquant/kernels/selective_scan.hpp>
#include <mambaquant/kernels/silu.hpp>
#include <mambaquant/kernels/softplus.hpp>

#include <mambaquant/transform/fusion.hpp>
#include <mambaquant/transform/hadamard.hpp>
#include <mambaquant/transform/klt.hpp>
#include <mambaquant/transform/klt_hadamard.hpp>
#include <mambaquant/transform/mamba_weights.hpp>
#include <mambaquant/transform/orthogonal.hpp>
#include <mambaquant/transform/rotation.hpp>
#include <mambaquant/transform/smoothing.hpp>
#include <mambaquant/transform/ssilu.hpp>
#include <mambaquant/transform/symmetric_eigen.hpp>

#include <mambaquant/ssm/cache.hpp>
#include <mambaquant/ssm/conv1d.hpp>
#include <mambaquant/ssm/scan_policy.hpp>
#include <mambaquant/ssm/selective_scan.hpp>

#include <mambaquant/nn/linear.hpp>
#include <mambaquant/nn/mamba_block.hpp>
#include <mambaquant/nn/mamba_model.hpp>
#include <mambaquant/nn/rms_norm.hpp>
#include <mambaquant/nn/vim_block.hpp>
#include <mambaquant/nn/vim_model.hpp>
#include <mambaquant/nn/activation_tap.hpp>
#include <mambaquant/nn/quantization_config.hpp>
#include <mambaquant/nn/quantized_model.hpp>
#include <mambaquant/nn/site_linear.hpp>
#include <mambaquant/nn/vim_weights.hpp>
#include <mambaquant/nn/quantized_vim_model.hpp>

#include <mambaquant/calib/channel_stats.hpp>
#include <mambaquant/calib/covariance.hpp>
#include <mambaquant/calib/observer.hpp>

#include <mambaquant/io/atomic_file.hpp>
#include <mambaquant/io/checkpoint.hpp>
#include <mambaquant/io/config.hpp>
#include <mambaquant/io/dtype.hpp>
#include <mambaquant/io/mamba_tensors.hpp>
#include <mambaquant/io/quantized_checkpoint.hpp>
#include <mambaquant/io/safetensors.hpp>
#include <mambaquant/io/vim_config.hpp>

#include <mambaquant/calib/calibrate.hpp>
#include <mambaquant/calib/statistics.hpp>
#include <mambaquant/calib/vim_calibrate.hpp>
#include <mambaquant/recipe/recipe.hpp>
#include <mambaquant/recipe/vim_recipe.hpp>
#include <mambaquant/eval/accuracy_table.hpp>
#include <mambaquant/eval/bits_per_byte.hpp>
#include <mambaquant/eval/layer_report.hpp>
#include <mambaquant/eval/token_file.hpp>
#include <mambaquant/eval/vim_accuracy.hpp>
