# Decides whether the CUDA module is built, and how it finds cuBLAS.
#
# PALI_ENGINE_CUDA=AUTO builds it when a CUDA compiler is found, ON requires it,
# OFF skips it. cuBLAS comes from the CUDA toolkit when it has it, else from the
# pip package nvidia-cublas, which ships only `libcublas.so.13` (no unversioned
# link) under site-packages/nvidia/cu13/lib or nvidia/cublas/lib: we link that
# file by full path and give the module a RUNPATH relative to its own location,
# so it loads from the same site-packages at run time.

set(PALI_BUILD_CUDA OFF)
if(NOT PALI_ENGINE_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(PALI_BUILD_CUDA ON)
  elseif(PALI_ENGINE_CUDA STREQUAL "ON")
    message(FATAL_ERROR "PALI_ENGINE_CUDA=ON but no CUDA compiler was found (set CUDACXX or PATH)")
  endif()
endif()

if(PALI_BUILD_CUDA)
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES 80 90)
  endif()
  enable_language(CUDA)
  set(CMAKE_CUDA_STANDARD 17)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  find_package(CUDAToolkit REQUIRED)

  set(PALI_CUBLAS_RUNPATH "")
  if(TARGET CUDA::cublas AND EXISTS "${CUDAToolkit_LIBRARY_DIR}/libcublas.so")
    add_library(PaliCublas INTERFACE)
    target_link_libraries(PaliCublas INTERFACE CUDA::cublas CUDA::cublasLt)
  else()
    execute_process(
      COMMAND "${Python_EXECUTABLE}" -c
        "import nvidia, os; print(';'.join(os.path.join(p, s) for p in nvidia.__path__ for s in ('cu13', 'cublas')))"
      OUTPUT_VARIABLE _nvidia_dirs OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    find_path(PALI_CUBLAS_INCLUDE_DIR cublas_v2.h PATHS ${_nvidia_dirs} PATH_SUFFIXES include NO_DEFAULT_PATH)
    find_file(PALI_CUBLAS_LIBRARY NAMES libcublas.so.13 libcublas.so.12 PATHS ${_nvidia_dirs} PATH_SUFFIXES lib NO_DEFAULT_PATH)
    find_file(PALI_CUBLASLT_LIBRARY NAMES libcublasLt.so.13 libcublasLt.so.12 PATHS ${_nvidia_dirs} PATH_SUFFIXES lib NO_DEFAULT_PATH)
    if(NOT PALI_CUBLAS_INCLUDE_DIR OR NOT PALI_CUBLAS_LIBRARY OR NOT PALI_CUBLASLT_LIBRARY)
      set(_msg "cuBLAS not found: install the CUDA toolkit's cuBLAS or `pip install nvidia-cublas`")
      if(PALI_ENGINE_CUDA STREQUAL "ON")
        message(FATAL_ERROR "${_msg}")
      endif()
      message(WARNING "${_msg}; the CUDA module is not built")
      set(PALI_BUILD_CUDA OFF)
    else()
      add_library(PaliCublas INTERFACE)
      target_include_directories(PaliCublas INTERFACE "${PALI_CUBLAS_INCLUDE_DIR}")
      target_link_libraries(PaliCublas INTERFACE "${PALI_CUBLAS_LIBRARY}" "${PALI_CUBLASLT_LIBRARY}")
      get_filename_component(_cublas_dir "${PALI_CUBLAS_LIBRARY}" DIRECTORY)
      get_filename_component(_site "${_cublas_dir}/../../.." ABSOLUTE)
      file(RELATIVE_PATH _rel "${_site}" "${_cublas_dir}")
      # The module lands in site-packages/pali_engine/, one level below site-packages.
      set(PALI_CUBLAS_RUNPATH "$ORIGIN/../${_rel}")
    endif()
  endif()
  message(STATUS "pali-engine: CUDA module ON (architectures ${CMAKE_CUDA_ARCHITECTURES})")
else()
  message(STATUS "pali-engine: CUDA module OFF")
endif()

function(pali_set_cuda_flags target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr -lineinfo -Xcompiler=-fPIC>)
  set_target_properties(${target} PROPERTIES CUDA_SEPARABLE_COMPILATION OFF)
endfunction()

function(pali_set_cublas_runpath target)
  if(PALI_CUBLAS_RUNPATH)
    set_target_properties(${target} PROPERTIES
      INSTALL_RPATH "${PALI_CUBLAS_RUNPATH}" BUILD_RPATH "${PALI_CUBLAS_RUNPATH}"
      BUILD_WITH_INSTALL_RPATH ON)
    target_link_options(${target} PRIVATE "-Wl,--enable-new-dtags")
  endif()
endfunction()
