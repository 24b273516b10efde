# Finds the build's dependencies and says what to do when one is missing.
#   LibTorch (required, public): pass its CMake prefix with -DCMAKE_PREFIX_PATH=$(python3 -c
#     "import torch; print(torch.utils.cmake_prefix_path)"); ./scripts/setup.sh prepares one.
#   fmt (required, private, header-only): formats error messages and reports in src/.
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


# fmt: a system/CMake package, or a folder of its headers (INCRELORA_FMT_INCLUDE_DIR) used header-only;
# the second form is how the GPU machine, which cannot download, gets it.
set(INCRELORA_FMT_INCLUDE_DIR "" CACHE PATH "Folder holding fmt/format.h, used when no fmt package is found")
if(NOT INCRELORA_FMT_INCLUDE_DIR)
  find_package(fmt QUIET)
endif()
if(TARGET fmt::fmt-header-only)
  set(INCRELORA_FMT_TARGET fmt::fmt-header-only)
elseif(INCRELORA_FMT_INCLUDE_DIR AND EXISTS "${INCRELORA_FMT_INCLUDE_DIR}/fmt/format.h")
  add_library(increlora_fmt INTERFACE)
  target_include_directories(increlora_fmt SYSTEM INTERFACE $<BUILD_INTERFACE:${INCRELORA_FMT_INCLUDE_DIR}>)
  target_compile_definitions(increlora_fmt INTERFACE FMT_HEADER_ONLY=1)
  set(INCRELORA_FMT_TARGET increlora_fmt)
else()
  message(FATAL_ERROR
    "increlora: fmt was not found. Install it (Debian: apt-get install libfmt-dev, which ./scripts/setup.sh "
    "does) or pass -DINCRELORA_FMT_INCLUDE_DIR=<folder holding fmt/format.h>.")
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
