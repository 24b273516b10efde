#pragma once
// What the libFuzzer targets share: files written with POSIX calls (the PyPI wheel's libtorch.so exports its own
// std::filesystem functions, built against another libstdc++, and calling them crashes), the fixture folder of
// real files each target reads beside its input, and the seeds it writes from them.
//
// Each target builds its fixture (a small model's adapter or checkpoint, a vocabulary) once, in
// $INCRELORA_FUZZ_FIXTURE_DIR/<target> (default: fuzz/fixtures/<target> in the build tree), and reuses it
// afterwards, so that an input saved from a crash reproduces against the same files (the saves carry an id,
// which the readers compare across files). When $INCRELORA_FUZZ_SEED_DIR is set, the target also writes the real
// files it would read into that folder, as its seed corpus: libFuzzer calls LLVMFuzzerInitialize before it reads
// the corpus folders, so `INCRELORA_FUZZ_SEED_DIR=corpus fuzz_x corpus` starts from them in the same run.
//
// The readers refuse bad input with c10::Error (increlora's one exception type, see increlora/errors.hpp):
// a target catches that and nothing else, so any other exception, crash or sanitizer report is a finding.

#include <dirent.h>
#include <ftw.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#ifndef INCRELORA_FUZZ_FIXTURE_DIR
#define INCRELORA_FUZZ_FIXTURE_DIR "/tmp/increlora-fuzz-fixtures"
#endif

namespace increlora::fuzz {

inline bool exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

/// mkdir -p.
inline void make_dirs(const std::string& path) {
  for (size_t i = 1; i <= path.size(); ++i) {
    if (i == path.size() || path[i] == '/') {
      const std::string prefix = path.substr(0, i);
      if (::mkdir(prefix.c_str(), 0755) != 0 && !exists(prefix)) {
        throw std::runtime_error("fuzz: cannot create " + prefix);
      }
    }
  }
}

/// Removes `path` and everything under it (nothing when it does not exist), with nftw.
inline void remove_tree(const std::string& path) {
  ::nftw(path.c_str(), [](const char* p, const struct stat*, int, struct FTW*) { return ::remove(p); }, 16,
         FTW_DEPTH | FTW_PHYS);
}

inline void write_file(const std::string& path, const void* data, size_t size) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) throw std::runtime_error("fuzz: cannot write " + path);
  const bool ok = size == 0 || std::fwrite(data, 1, size, f) == size;
  if (std::fclose(f) != 0 || !ok) throw std::runtime_error("fuzz: cannot write " + path);
}
inline void write_file(const std::string& path, const std::string& text) { write_file(path, text.data(), text.size()); }

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("fuzz: cannot read " + path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

/// The folder of `target`'s fixture; `build` writes the fixture into the folder it is given. A fixture is built
/// once, in a staging folder renamed into place when complete, and reused by later runs.
template <class Build>
std::string fixture(const std::string& target, Build&& build) {
  const char* env = std::getenv("INCRELORA_FUZZ_FIXTURE_DIR");
  const std::string root = env && *env ? env : INCRELORA_FUZZ_FIXTURE_DIR;
  const std::string dir = root + "/" + target;
  if (exists(dir + "/.complete")) return dir;
  const std::string staging = dir + ".tmp-" + std::to_string(::getpid());
  remove_tree(staging);
  make_dirs(staging);
  build(staging);
  write_file(staging + "/.complete", "");
  remove_tree(dir);
  if (::rename(staging.c_str(), dir.c_str()) != 0) throw std::runtime_error("fuzz: cannot rename to " + dir);
  return dir;
}

/// A scratch folder of this process (removed at exit): where each input is written before it is read.
inline const std::string& scratch_dir() {
  static const std::string dir = [] {
    const char* base = std::getenv("TMPDIR");
    std::string templ = std::string(base && *base ? base : "/tmp") + "/increlora-fuzz-XXXXXX";
    std::vector<char> buffer(templ.begin(), templ.end());
    buffer.push_back('\0');
    if (::mkdtemp(buffer.data()) == nullptr) throw std::runtime_error("fuzz: mkdtemp failed for " + templ);
    std::string made = buffer.data();
    static std::string to_remove;
    to_remove = made;
    std::atexit([] { remove_tree(to_remove); });
    return made;
  }();
  return dir;
}

/// Copies `from` to `to` (the fixture's files into a scratch folder).
inline void copy_file(const std::string& from, const std::string& to) { write_file(to, read_file(from)); }

/// Writes `content` as the seed `name` into $INCRELORA_FUZZ_SEED_DIR, when that is set.
inline void seed(const std::string& name, const std::string& content) {
  const char* dir = std::getenv("INCRELORA_FUZZ_SEED_DIR");
  if (!dir || !*dir) return;
  make_dirs(dir);
  write_file(std::string(dir) + "/" + name, content);
}

/// Stops the run with a message: for an invariant the reader broke (libFuzzer saves the input).
[[noreturn]] inline void fail(const std::string& what) {
  std::fprintf(stderr, "fuzz: invariant broken: %s\n", what.c_str());
  std::abort();
}

}  // namespace increlora::fuzz
