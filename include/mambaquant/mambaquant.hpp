// Umbrella header: the whole library. Include single headers to compile less.
#pragma once

#include <mambaquant/core/config.hpp>
#include <mambaquant/core/error.hpp>
#include <mambaquant/core/rng.hpp>
#include <mambaquant/core/simd.hpp>
#include <mambaquant/core/tags.hpp>
#include <mambaquant/core/tensor.hpp>

#include <mambaquant/quant/params.hpp>
#include <mambaquant/quant/quantizer.hpp>
#include <mambaquant/quant/range.hpp>
