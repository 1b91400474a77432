// Companion library (mambaquant::compiled): the quantized Vim model (nn/quantized_vim_model.hpp:
// build_quantized_vim_model and the forward pass of QuantizedVimModel) and run_vim_recipe
// (recipe/vim_recipe.hpp), compiled once.
#include <mambaquant/recipe/vim_recipe.hpp>

MQ_NAMESPACE_BEGIN

template QuantizedVimModel build_quantized_vim_model<>(const VimWeights&, const VimConfig&, const QuantizationConfig&,
                                                       FakeQuant);
template MatrixXf QuantizedVimModel::logits(const ImageBatch&, ThreadPool*, std::vector<MatrixXf>*, std::size_t,
                                            ActivationTap*) const;
template QuantizedVimRecipe run_vim_recipe<>(const Recipe&, const VimWeights&, const VimConfig&, const ImageBatch&,
                                             const QuantizeOptions&);

MQ_NAMESPACE_END
