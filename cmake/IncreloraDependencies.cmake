# Finds the build's dependencies and says what to do when one is missing.
#   LibTorch (required, public): pass its CMake prefix with -DCMAKE_PREFIX_PATH=$(python3 -c
#     "import torch; print(torch.utils.cmake_prefix_path)"); ./scripts/setup.sh prepares one.
#   fmt (required, private, header-only): formats error messages and reports in src/. LibTorch ships its own
#     fmt headers (the version c10 was built with) in the include folder every target that uses torch sees
#     first, so a second fmt (Debian's libfmt-dev) would only be shadowed: we use LibTorch's, header-only,
#     and fall back to a fmt package or INCRELORA_FMT_INCLUDE_DIR for a LibTorch without them.
include(GNUInstallDirs)

find_package(Torch QUIET)
if(NOT Torch_FOUND)
  message(FATAL_ERROR
    "increlora: LibTorch was not found. Run ./scripts/setup.sh (it installs the torch wheel, which carries "
    "LibTorch) and configure with -DCMAKE_PREFIX_PATH=$(cat ~/.cache/increlora/torch_prefix), or point "
    "CMAKE_PREFIX_PATH at any LibTorch 2.x distribution.")
endif()
if(Torch_VERSION VERSION_LESS 2.0)
  message(FATAL_ERROR "increlora: LibTorch ${Torch_VERSION} is too old; 2.x is required.")
endif()
# TorchConfig's TORCH_LIBRARIES mixes its imported targets with absolute paths of this machine's libraries
# (libc10.so, libnvrtc.so, ...), which an exported target would carry to other machines. The imported targets
# carry the same libraries: `torch` (libtorch, and through torch_cpu_library / torch_cuda_library the CPU and
# CUDA parts, linked no-as-needed so that their kernels register) and `torch_library`.
set(INCRELORA_TORCH_TARGETS torch)
if(TARGET torch_library)
  list(APPEND INCRELORA_TORCH_TARGETS torch_library)
endif()


# fmt: LibTorch's own headers when it has them (see the top of this file); otherwise a folder of fmt headers
# (INCRELORA_FMT_INCLUDE_DIR, which also overrides LibTorch's) or a fmt CMake package, header-only either way.
set(INCRELORA_FMT_INCLUDE_DIR "" CACHE PATH "Folder holding fmt/format.h (default: LibTorch's fmt headers)")
set(_increlora_torch_fmt "")
foreach(_dir IN LISTS TORCH_INCLUDE_DIRS)
  if(NOT _increlora_torch_fmt AND EXISTS "${_dir}/fmt/format.h")
    set(_increlora_torch_fmt "${_dir}")
  endif()
endforeach()
if(NOT INCRELORA_FMT_INCLUDE_DIR AND NOT _increlora_torch_fmt)
  find_package(fmt QUIET)
endif()
if(INCRELORA_FMT_INCLUDE_DIR AND EXISTS "${INCRELORA_FMT_INCLUDE_DIR}/fmt/format.h")
  add_library(increlora_fmt INTERFACE)
  target_include_directories(increlora_fmt SYSTEM BEFORE INTERFACE $<BUILD_INTERFACE:${INCRELORA_FMT_INCLUDE_DIR}>)
  target_compile_definitions(increlora_fmt INTERFACE FMT_HEADER_ONLY=1)
  set(INCRELORA_FMT_TARGET increlora_fmt)
elseif(_increlora_torch_fmt)
  add_library(increlora_fmt INTERFACE)  # the headers are in torch's include folder, which users of torch see
  target_compile_definitions(increlora_fmt INTERFACE FMT_HEADER_ONLY=1)
  set(INCRELORA_FMT_TARGET increlora_fmt)
  file(STRINGS "${_increlora_torch_fmt}/fmt/base.h" _increlora_fmt_version REGEX "define FMT_VERSION ")
  string(REGEX REPLACE ".*FMT_VERSION ([0-9]+).*" "\\1" _increlora_fmt_version "${_increlora_fmt_version}")
  message(STATUS "increlora: fmt ${_increlora_fmt_version} from LibTorch's headers (${_increlora_torch_fmt})")
elseif(TARGET fmt::fmt-header-only)
  set(INCRELORA_FMT_TARGET fmt::fmt-header-only)
else()
  message(FATAL_ERROR
    "increlora: fmt was not found: this LibTorch has no fmt headers. Install fmt (Debian: apt-get install "
    "libfmt-dev) or pass -DINCRELORA_FMT_INCLUDE_DIR=<folder holding fmt/format.h>.")
endif()

# nlohmann-json (required, private, header-only): reads and writes the JSON of safetensors headers, adapter
# configs and checkpoints in src/. A CMake package, or a folder of its headers (INCRELORA_JSON_INCLUDE_DIR),
# which is how the GPU machine, which has no package and cannot download, gets it.
set(INCRELORA_JSON_INCLUDE_DIR "" CACHE PATH "Folder holding nlohmann/json.hpp, used when no nlohmann_json package is found")
if(NOT INCRELORA_JSON_INCLUDE_DIR)
  find_package(nlohmann_json 3 QUIET)
endif()
if(TARGET nlohmann_json::nlohmann_json)
  set(INCRELORA_JSON_TARGET nlohmann_json::nlohmann_json)
elseif(INCRELORA_JSON_INCLUDE_DIR AND EXISTS "${INCRELORA_JSON_INCLUDE_DIR}/nlohmann/json.hpp")
  add_library(increlora_json INTERFACE)
  target_include_directories(increlora_json SYSTEM INTERFACE $<BUILD_INTERFACE:${INCRELORA_JSON_INCLUDE_DIR}>)
  set(INCRELORA_JSON_TARGET increlora_json)
else()
  message(FATAL_ERROR
    "increlora: nlohmann-json was not found. Install it (Debian: apt-get install nlohmann-json3-dev) or pass "
    "-DINCRELORA_JSON_INCLUDE_DIR=<folder holding nlohmann/json.hpp>.")
endif()

# Under add_subdirectory, targets imported here are visible in this directory only, but the parent project
# links increlora::increlora, whose interface names the torch (and, privately, fmt) targets: make them global.
if(NOT CMAKE_CURRENT_SOURCE_DIR STREQUAL CMAKE_SOURCE_DIR AND NOT CMAKE_VERSION VERSION_LESS 3.21)
  get_property(_increlora_imported DIRECTORY PROPERTY IMPORTED_TARGETS)
  foreach(_target IN LISTS _increlora_imported)
    get_target_property(_global ${_target} IMPORTED_GLOBAL)
    if(NOT _global)
      set_property(TARGET ${_target} PROPERTY IMPORTED_GLOBAL TRUE)
    endif()
  endforeach()
endif()
