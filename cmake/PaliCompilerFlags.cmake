# Compiler flags shared by every target.
#
# The CPU code targets x86-64-v3 (AVX2, FMA, F16C, BMI2): every x86-64 machine
# from the last decade has it, and `-march=native` would bake in the build
# machine's extras. pali_engine/__init__.py checks the CPU before importing the
# module, so an older machine gets a clear error instead of SIGILL. On aarch64
# the baseline is Armv8-A (NEON); the int8 kernel that needs the Armv8.2 dot
# product is compiled with a target attribute and chosen at run time
# (ops/cpu_kernels.h), so a CPU without it still runs the library.

# PALI_ENGINE_SANITIZE: ON (or address) is AddressSanitizer + UBSan; thread is
# ThreadSanitizer (with clang, as .ci/sanitized-tests builds it, or GCC): the
# engine's thread pool synchronizes only through std::mutex, condition
# variables and atomics, which ThreadSanitizer understands.
string(TOLOWER "${PALI_ENGINE_SANITIZE}" PALI_SANITIZE_MODE)
# UBSan's vptr check is left out: it makes the model sources compile about six
# times slower (t5_decoder.cc: 124 s instead of 21 s with GCC 12), and the only
# virtual classes are the decoder interfaces. -g1 (line tables) is enough for
# the reports' stack traces and halves the compile time again.
if(PALI_SANITIZE_MODE MATCHES "^(on|address|1|true|yes)$")
  set(PALI_SANITIZE_FLAGS -fsanitize=address,undefined -fno-sanitize=vptr -fno-omit-frame-pointer -g1)
elseif(PALI_SANITIZE_MODE STREQUAL "thread")
  set(PALI_SANITIZE_FLAGS -fsanitize=thread -fno-omit-frame-pointer -g1)
elseif(PALI_SANITIZE_MODE MATCHES "^(off|0|false|no|)$")
  set(PALI_SANITIZE_FLAGS "")
else()
  message(FATAL_ERROR "PALI_ENGINE_SANITIZE is '${PALI_ENGINE_SANITIZE}'; expected OFF, ON, address or thread")
endif()

if(NOT CMAKE_BUILD_TYPE AND NOT CMAKE_CONFIGURATION_TYPES)
  set(CMAKE_BUILD_TYPE Release CACHE STRING "Build type" FORCE)
endif()

function(pali_set_cpu_flags target)
  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(${target} PRIVATE
      $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers>)
    if(CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64|amd64")
      target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-march=x86-64-v3 -mtune=generic>)
    elseif(CMAKE_SYSTEM_PROCESSOR MATCHES "aarch64|arm64|ARM64")
      target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-march=armv8-a>)
    endif()
    target_compile_options(${target} PRIVATE
      $<$<AND:$<CONFIG:Release>,$<COMPILE_LANGUAGE:CXX>>:-O3 -fno-math-errno>)
    if(PALI_SANITIZE_FLAGS)
      target_compile_options(${target} PRIVATE "$<$<COMPILE_LANGUAGE:CXX>:${PALI_SANITIZE_FLAGS}>")
      target_link_options(${target} PRIVATE ${PALI_SANITIZE_FLAGS})
    endif()
  endif()
endfunction()
