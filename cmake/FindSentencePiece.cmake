# FindSentencePiece: Google's SentencePiece C++ library (Debian: libsentencepiece-dev), which the DeBERTa
# tokenizer of increlora::models uses. Defines the imported target SentencePiece::SentencePiece and
# SentencePiece_FOUND, SentencePiece_VERSION. Installed beside increlora's package config so that consumers of a
# static increlora::models find the library it links.
#   Hints: SentencePiece_ROOT (a prefix), or CMAKE_PREFIX_PATH.
find_package(PkgConfig QUIET)
if(PkgConfig_FOUND)
  pkg_check_modules(PC_SentencePiece QUIET sentencepiece)
endif()
find_path(SentencePiece_INCLUDE_DIR sentencepiece_processor.h HINTS ${PC_SentencePiece_INCLUDE_DIRS})
find_library(SentencePiece_LIBRARY NAMES sentencepiece HINTS ${PC_SentencePiece_LIBRARY_DIRS})
set(SentencePiece_VERSION ${PC_SentencePiece_VERSION})

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(SentencePiece
  REQUIRED_VARS SentencePiece_LIBRARY SentencePiece_INCLUDE_DIR
  VERSION_VAR SentencePiece_VERSION
  REASON_FAILURE_MESSAGE "install libsentencepiece-dev (scripts/setup.sh does) or set SentencePiece_ROOT")
mark_as_advanced(SentencePiece_INCLUDE_DIR SentencePiece_LIBRARY)

if(SentencePiece_FOUND AND NOT TARGET SentencePiece::SentencePiece)
  add_library(SentencePiece::SentencePiece UNKNOWN IMPORTED)
  set_target_properties(SentencePiece::SentencePiece PROPERTIES
    IMPORTED_LOCATION "${SentencePiece_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${SentencePiece_INCLUDE_DIR}")
endif()
