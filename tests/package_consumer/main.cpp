// Uses the installed umbrella header with no -m flags: the library must build for plain x86-64.
#include <mambaquant/mambaquant.hpp>

#include <cstdio>

int main() {
    const auto p = mq::A8PerToken::params(-1.0f, 3.0f);
    std::printf("mambaquant %d.%d consumer: scale %g zero %d\n", MQ_VERSION_MAJOR, MQ_VERSION_MINOR,
                double(p.scale), int(p.zero));
    return p.scale > 0.0f ? 0 : 1;
}
