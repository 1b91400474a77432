// Companion library (mambaquant::compiled): run_recipe (recipe/recipe.hpp: calibration passes over
// the float model, the transforms, GPTQ, the final static calibration), compiled once.
#include <mambaquant/recipe/recipe.hpp>

MQ_NAMESPACE_BEGIN

template QuantizedRecipe run_recipe<>(const Recipe&, const MambaWeights&, const MambaConfig&,
                                      const RecipeCalibrator&, const QuantizeOptions&, std::size_t);
template QuantizedRecipe run_recipe<>(const Recipe&, const MambaWeights&, const MambaConfig&,
                                      std::span<const std::span<const std::uint32_t>>, const QuantizeOptions&);

MQ_NAMESPACE_END
