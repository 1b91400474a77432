# Finds the library's dependencies; shared by the build tree and the installed package config.
# (macro, not function: find_package results must land in the caller's scope)
macro(mambaquant_find_dependencies)
    find_package(Eigen3 3.4 REQUIRED NO_MODULE)
    find_package(xsimd 8.1 REQUIRED)
    find_package(nlohmann_json 3.10 REQUIRED)
    # Debian 12's xsimd 8.1 exports INTERFACE_LINK_LIBRARIES "xtl" although its headers use xtl
    # only when XSIMD_ENABLE_XTL_COMPLEX is set; without a target of that name the link line
    # gets "-lxtl" and fails. An empty stand-in target keeps the dependency header-only.
    get_target_property(_mq_xsimd_links xsimd INTERFACE_LINK_LIBRARIES)
    if(_mq_xsimd_links MATCHES "(^|;)xtl(;|$)" AND NOT TARGET xtl)
        find_package(xtl QUIET)
        if(NOT TARGET xtl)
            add_library(xtl INTERFACE IMPORTED GLOBAL)
        endif()
    endif()
    unset(_mq_xsimd_links)
endmacro()
