#!/usr/bin/env bash
# The sanitizer stage of CI: a second build tree compiled with clang under AddressSanitizer + UndefinedBehavior-
# Sanitizer, in which the core suite (increlora_tests) and the models suite (increlora_models_tests) run, and
# each libFuzzer target of fuzz/ runs for a bounded time from a seed corpus of real files.
#   scripts/sanitize.sh [build-dir]      (default: build-sanitize)
# Settings (environment): INCRELORA_SAN_CXX (default clang++-16), INCRELORA_JOBS (default nproc),
# INCRELORA_FUZZ_SECONDS (per fuzzer, default 20), INCRELORA_SAN_STAGES (default "configure build tests models fuzz").
# Exits non-zero on a failed test, any sanitizer report (every check is fatal: halt_on_error, no recovery) or a
# fuzzer crash, leak of a crash input or timeout.
#
# What is instrumented: everything this repository compiles (the library, models/, the suites, the fuzzers).
# LibTorch is not: it is the prebuilt torch wheel's libtorch_cpu.so, which cannot be rebuilt with sanitizers on
# a 2-core CI machine. ASan still sees its heap (malloc/free are intercepted process-wide) but not its own
# out-of-bounds accesses; UBSan checks only our code.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${1:-$root/build-sanitize}"
prefix="$("$root/scripts/setup.sh")"
# clang 16, not Debian's default clang 14: the sources capture structured bindings in lambdas (src/optim.cpp),
# which C++17 does not allow; GCC and clang >= 16 accept it as a C++20 extension, clang 14 refuses it.
cxx="${INCRELORA_SAN_CXX:-clang++-16}"
jobs="${INCRELORA_JOBS:-$(nproc)}"
fuzz_seconds="${INCRELORA_FUZZ_SECONDS:-20}"
stages="${INCRELORA_SAN_STAGES:-configure build tests models fuzz}"
cache="${INCRELORA_CACHE:-$HOME/.cache/increlora}"
log() { echo "[sanitize] $*" >&2; }
stage() { [[ " $stages " == *" $1 "* ]]; }
elapsed() { echo "$(( $(date +%s) - $1 )) s"; }

# -fno-sanitize-recover: a UBSan finding stops the program (and fails CI) instead of printing and going on.
# UBSan's vptr check stays on: it reads the dynamic type from the object's vtable and typeinfo, which works for
#   LibTorch's classes too (their typeinfo is exported by the uninstrumented .so files; a build with vptr on gave
#   no false report on modules, autograd nodes or tensor impls created inside LibTorch).
# -fsanitize=fuzzer-no-link: coverage instrumentation for libFuzzer in the library too (the fuzzers' guidance
#   comes from the readers' code, not the harness); outside the fuzzers its hooks are the sanitizer runtime's
#   no-op defaults.
# -O1 -gline-tables-only: the usual sanitizer build, fast enough to compile on 2 cores, with file:line in
#   reports; no NDEBUG, so asserts stay on.
san="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
cflags="$san -fsanitize=fuzzer-no-link"
launcher=()
if command -v ccache >/dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi

t0=$(date +%s)
if stage configure; then
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_CXX_COMPILER="$cxx" "${launcher[@]}" \
    -DCMAKE_BUILD_TYPE=Sanitize -DCMAKE_CXX_FLAGS_SANITIZE="-O1 -gline-tables-only" \
    -DCMAKE_CXX_FLAGS="$cflags" -DCMAKE_EXE_LINKER_FLAGS="$san" -DCMAKE_SHARED_LINKER_FLAGS="$san" \
    -DCMAKE_PREFIX_PATH="$prefix" -DINCRELORA_PYTHON="$cache/venv/bin/python" \
    -DINCRELORA_BUILD_TESTS=ON -DINCRELORA_BUILD_MODELS=ON -DINCRELORA_BUILD_EXAMPLES=OFF -DINCRELORA_INSTALL=OFF \
    -DINCRELORA_BUILD_FUZZERS=ON >&2
fi
if stage build; then
  cmake --build "$build" -j "$jobs" --target increlora_tests increlora_models_tests increlora_fuzzers >&2
  log "build: $(elapsed "$t0")"
fi

# Runtime settings of the sanitizers, for the suites and the fuzzers alike.
# detect_leaks=0: LibTorch's global registries (the dispatcher's operator table, the kernels and autograd
#   functions registered at load time, its thread pools) are allocated once and never freed, so LeakSanitizer
#   would report them at every exit; our own leaks go unreported with them (the suites free what they make).
# halt_on_error / abort_on_error=0 with exitcode: the first report ends the program with a non-zero status.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:halt_on_error=1:abort_on_error=0:check_initialization_order=1:strict_init_order=1:detect_stack_use_after_return=0:print_summary=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1:report_error_type=1}"
export ASAN_SYMBOLIZER_PATH="${ASAN_SYMBOLIZER_PATH:-$(command -v llvm-symbolizer-16 || command -v llvm-symbolizer || true)}"
failed=()

# The core suite, in one process (ctest's one process per case would start LibTorch under ASan ~100 times).
if stage tests; then
  t=$(date +%s)
  "$build/tests/increlora_tests" --reporter compact --order decl >&2 || failed+=(increlora_tests)
  log "core suite: $(elapsed "$t")"
fi

# The models suite. Its [reference] cases compare with transformers' outputs, which the reference fixtures
# write with the venv's Python (copied from the main build tree when scripts/test.sh made them already).
if stage models; then
  t=$(date +%s)
  main_build="${INCRELORA_MAIN_BUILD:-$root/build}"
  for ref in reference deberta-reference deberta-tokenizer-reference bart-reference generation-reference \
             bart-tokenizer-reference; do
    if [ -d "$main_build/tests/models/$ref" ] && [ -n "$(ls -A "$main_build/tests/models/$ref")" ] \
       && [ ! -e "$build/tests/models/$ref" ]; then
      cp -r "$main_build/tests/models/$ref" "$build/tests/models/$ref"
    fi
  done
  declare -A fixture_of=([reference]=bert_reference [deberta-reference]=deberta_reference
    [deberta-tokenizer-reference]=deberta_tokenizer_reference [bart-reference]=bart_reference
    [generation-reference]=generation_reference [bart-tokenizer-reference]=bart_tokenizer_reference)
  missing=()
  for ref in "${!fixture_of[@]}"; do [ -e "$build/tests/models/$ref" ] || missing+=("${fixture_of[$ref]}"); done
  if [ ${#missing[@]} -gt 0 ]; then
    (cd "$build" && ctest --output-on-failure -j "$jobs" -R "^($(IFS='|'; echo "${missing[*]}"))\$") >&2 \
      || failed+=(models_reference)
  fi
  log "models references: $(elapsed "$t")"
  t=$(date +%s)
  # Catch2 test specs (no globbing: read -a splits on spaces only).
  read -r -a models_filter <<< "${INCRELORA_SAN_MODELS_FILTER:-}"
  "$build/tests/models/increlora_models_tests" --reporter compact --order decl "${models_filter[@]}" >&2 \
    || failed+=(increlora_models_tests)
  log "models suite: $(elapsed "$t")"
fi

# The fuzzers, each for fuzz_seconds from a fresh corpus: the seeds its fixture writes (real files saved by the
# library, the MiniLM vocabulary and config), the hand-written ones in fuzz/corpus/, and for the tokenizer GLUE
# sentences and sentence pairs. A crash, a sanitizer report, an input slower than -timeout or an exception other
# than c10::Error stops the fuzzer with a non-zero status and leaves the input in $build/fuzz/artifacts.
if stage fuzz; then
  shared="${INCRELORA_SHARED_DIR:-$root/../shared}"
  artifacts="$build/fuzz/artifacts"
  mkdir -p "$artifacts"
  declare -A handwritten=([fuzz_safetensors]=safetensors [fuzz_tokenizer]=tokenizer)
  for fuzzer in fuzz_safetensors fuzz_adapter_config fuzz_checkpoint fuzz_tokenizer; do
    t=$(date +%s)
    corpus="$build/fuzz/corpus/$fuzzer"
    rm -rf "$corpus"; mkdir -p "$corpus"
    if [ -n "${handwritten[$fuzzer]:-}" ]; then cp "$root/fuzz/corpus/${handwritten[$fuzzer]}"/* "$corpus/"; fi
    if [ "$fuzzer" = fuzz_tokenizer ] && [ -d "$shared/data/glue" ]; then
      # The first byte is the tokenizer's mode (see fuzz_tokenizer.cpp): \x00 no truncation, \x20 32 tokens.
      glue="$shared/data/glue"
      i=0
      emit() {  # each line of stdin as a seed, after the mode byte $1
        while IFS= read -r line; do printf "$1%s" "${line%$'\r'}" > "$corpus/glue_$i"; i=$((i + 1)); done
      }
      emit '\x00' < <(tail -n +2 "$glue/SST-2/dev.tsv" | head -n 40 | cut -f1)
      emit '\x00' < <(head -n 20 "$glue/CoLA/dev.tsv" | cut -f4)
      emit '\x20' < <(tail -n +2 "$glue/MRPC/dev.tsv" | head -n 20 | cut -f4,5)
      emit '\x20' < <(tail -n +2 "$glue/QNLI/dev.tsv" | head -n 20 | cut -f2,3)
    fi
    INCRELORA_FUZZ_SEED_DIR="$corpus" "$build/fuzz/$fuzzer" -max_total_time="$fuzz_seconds" -timeout=20 \
      -rss_limit_mb=4096 -print_final_stats=1 -artifact_prefix="$artifacts/$fuzzer-" "$corpus" \
      > "$build/fuzz/$fuzzer.log" 2>&1 || { failed+=("$fuzzer"); tail -n 60 "$build/fuzz/$fuzzer.log" >&2; }
    log "$fuzzer: $(grep -E '^stat::number_of_executed_units' "$build/fuzz/$fuzzer.log" | awk '{print $2}') inputs" \
        "in $(elapsed "$t"), corpus $(ls "$corpus" | wc -l) files (log: $build/fuzz/$fuzzer.log)"
  done
fi

log "total: $(elapsed "$t0")"
if [ ${#failed[@]} -gt 0 ]; then
  log "FAILED: ${failed[*]}"
  exit 1
fi
if stage tests || stage models || stage fuzz; then log "passed: no sanitizer report, no failed case, no fuzzer finding"; fi
