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

# The optional LAPACK backend of the KLT eigensolver (transform/symmetric_eigen.hpp): defines the
# imported target mambaquant::lapacke when liblapacke and lapacke.h are found. Linking it turns on
# MAMBAQUANT_HAS_LAPACKE; which LAPACK/BLAS runs underneath is the system's choice (on Debian,
# installing libopenblas-dev makes OpenBLAS the liblapack.so.3 alternative, which is what makes
# it fast). Sets mambaquant_lapacke_FOUND for find_package(mambaquant COMPONENTS lapacke).
macro(mambaquant_find_lapacke)
    if(NOT TARGET mambaquant::lapacke)
        find_path(MAMBAQUANT_LAPACKE_INCLUDE_DIR lapacke.h)
        find_library(MAMBAQUANT_LAPACKE_LIBRARY lapacke)
        if(MAMBAQUANT_LAPACKE_INCLUDE_DIR AND MAMBAQUANT_LAPACKE_LIBRARY)
            add_library(mambaquant::lapacke INTERFACE IMPORTED GLOBAL)
            set_target_properties(mambaquant::lapacke PROPERTIES
                INTERFACE_INCLUDE_DIRECTORIES "${MAMBAQUANT_LAPACKE_INCLUDE_DIR}"
                INTERFACE_LINK_LIBRARIES "${MAMBAQUANT_LAPACKE_LIBRARY}"
                INTERFACE_COMPILE_DEFINITIONS "MAMBAQUANT_HAS_LAPACKE=1")
        endif()
    endif()
    if(TARGET mambaquant::lapacke)
        set(mambaquant_lapacke_FOUND TRUE)
    else()
        set(mambaquant_lapacke_FOUND FALSE)
    endif()
endmacro()
