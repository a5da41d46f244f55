# Cross-compiling for 64-bit Arm Linux with Debian's aarch64 toolchain
# (g++-aarch64-linux-gnu), e.g. for .ci/arm, which runs the result under
# qemu-user (qemu-aarch64 -L /usr/aarch64-linux-gnu):
#
#   cmake -S . -B build/arm -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake \
#     -DPALI_ENGINE_PYTHON=OFF -DPALI_ENGINE_CUDA=OFF
#
# PALI_AARCH64_SYSROOT names a folder of extra aarch64 libraries (Debian arm64
# packages unpacked with dpkg-deb -x, as .ci/arm does for the C++ API's
# SentencePiece, libpng and libjpeg): it is searched after the toolchain's own
# root, and programs run under qemu find its shared libraries.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(PALI_AARCH64_SYSROOT "$ENV{PALI_AARCH64_SYSROOT}" CACHE PATH "Extra aarch64 libraries (unpacked Debian arm64 packages)")
if(PALI_AARCH64_SYSROOT)
  list(APPEND CMAKE_FIND_ROOT_PATH "${PALI_AARCH64_SYSROOT}")
  set(_pali_sysroot_libs "${PALI_AARCH64_SYSROOT}/usr/lib/aarch64-linux-gnu:${PALI_AARCH64_SYSROOT}/lib/aarch64-linux-gnu")
  # Debian keeps architecture-specific headers (libjpeg's jconfig.h) in include/<triplet>.
  set(CMAKE_C_STANDARD_INCLUDE_DIRECTORIES "${PALI_AARCH64_SYSROOT}/usr/include/aarch64-linux-gnu")
  set(CMAKE_CXX_STANDARD_INCLUDE_DIRECTORIES "${PALI_AARCH64_SYSROOT}/usr/include/aarch64-linux-gnu")
  # The linker resolves the libraries' own dependencies (libpng needs libz) there too.
  string(APPEND CMAKE_EXE_LINKER_FLAGS_INIT " -Wl,-rpath-link,${_pali_sysroot_libs}")
  string(APPEND CMAKE_SHARED_LINKER_FLAGS_INIT " -Wl,-rpath-link,${_pali_sysroot_libs}")
endif()
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
# Programs built here run on this machine through qemu-user (try_run, tests).
if(PALI_AARCH64_SYSROOT)
  set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L /usr/aarch64-linux-gnu -E LD_LIBRARY_PATH=${_pali_sysroot_libs})
else()
  set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L /usr/aarch64-linux-gnu)
endif()
