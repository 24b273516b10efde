#pragma once
// A scratch folder for the serialization suites, with POSIX calls only: the PyPI wheel's libtorch.so exports
// its own std::filesystem functions (built against another libstdc++), and calling them crashes.

#include <dirent.h>
#include <ftw.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace increlora::test {

/// Removes `path` and everything under it (nothing when it does not exist): std::filesystem::remove_all, which
/// the wheel's libtorch.so exports in a copy that crashes, done with nftw.
inline void remove_tree(const std::string& path) {
  ::nftw(path.c_str(), [](const char* p, const struct stat*, int, struct FTW*) { return ::remove(p); }, 16,
         FTW_DEPTH | FTW_PHYS);
}

/// A fresh, empty folder `<prefix>-XXXXXX` under `base` (default: $TMPDIR, or /tmp), removed with its content when
/// the test ends.
class TempDir {
 public:
  explicit TempDir(const std::string& base = "", const std::string& prefix = "increlora-test") {
    const char* tmp = std::getenv("TMPDIR");
    const std::string folder = !base.empty() ? base : tmp && *tmp ? tmp : "/tmp";
    std::string templ = folder + "/" + prefix + "-XXXXXX";
    std::vector<char> buffer(templ.begin(), templ.end());
    buffer.push_back('\0');
    if (::mkdtemp(buffer.data()) == nullptr) throw std::runtime_error("mkdtemp failed for " + templ);
    path_ = buffer.data();
  }
  ~TempDir() { remove_tree(path_); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  /// path()/name
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  /// The names in path()/sub (sorted; without "." and "..").
  std::vector<std::string> entries(const std::string& sub = "") const {
    std::vector<std::string> names;
    if (DIR* d = ::opendir(sub.empty() ? path_.c_str() : file(sub).c_str())) {
      while (const dirent* e = ::readdir(d)) {
        const std::string name = e->d_name;
        if (name != "." && name != "..") names.push_back(name);
      }
      ::closedir(d);
    }
    std::sort(names.begin(), names.end());
    return names;
  }

 private:
  std::string path_;
};

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

}  // namespace increlora::test
