# Cross-compiling the C++ loader for 64-bit ARM Linux with Debian/Ubuntu's cross toolchain
# (apt-get install g++-aarch64-linux-gnu). Point TVM_ROOT/TVM_FFI_ROOT at aarch64 wheels:
#   pip install --target ARMSITE --platform manylinux_2_28_aarch64 --only-binary=:all: \
#       --python-version 3.11 apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1
#   cmake -S examples/cpp -B build-arm -DCMAKE_TOOLCHAIN_FILE=examples/cpp/aarch64-linux-gnu.cmake \
#       -DTVM_ROOT=ARMSITE/tvm -DTVM_FFI_ROOT=ARMSITE/tvm_ffi
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
# Packages (OpenSSL) only from the arm64 cross root, never the x86 host's.
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
