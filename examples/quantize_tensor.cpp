// Placeholder main job until the quantizer kernels land: prints the library version.
#include <mambaquant/mambaquant.hpp>

#include <cstdio>

int main() {
    std::printf("mambaquant %d.%d.%d\n", MQ_VERSION_MAJOR, MQ_VERSION_MINOR, MQ_VERSION_PATCH);
}
