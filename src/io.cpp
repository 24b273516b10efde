#include "io.hpp"

#include "increlora/errors.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <random>
#include <thread>

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace increlora::detail {
namespace {

// A file descriptor closed on scope exit (unless released).
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// Flushes the folder holding `path`, so that a rename into it survives a crash.
void sync_parent(const std::string& path) { sync_directory(split_path(path).first); }

#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

// renameat2(RENAME_EXCHANGE) through the raw system call: glibc before 2.28 has no wrapper. -1 with errno
// ENOSYS where the kernel lacks it; EINVAL where the filesystem does not support the flag.
int exchange_paths(const std::string& a, const std::string& b) {
#ifdef SYS_renameat2
  return static_cast<int>(::syscall(SYS_renameat2, AT_FDCWD, a.c_str(), AT_FDCWD, b.c_str(), RENAME_EXCHANGE));
#else
  errno = ENOSYS;
  return -1;
#endif
}

// The pid in "<digits>" or "<digits>-<hex>", or -1.
long parse_stray_suffix(const std::string& s) {
  size_t i = 0;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
  if (i == 0 || i > 10) return -1;
  if (i < s.size()) {
    if (s[i] != '-' || i + 1 == s.size()) return -1;
    for (size_t k = i + 1; k < s.size(); ++k) {
      if (!std::isxdigit(static_cast<unsigned char>(s[k]))) return -1;
    }
  }
  return std::stol(s.substr(0, i));
}

}  // namespace

std::string errno_text() { return std::strerror(errno); }

void write_all(int fd, const void* data, size_t bytes, const std::string& path) {
  const auto* p = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t n = ::write(fd, p, bytes);
    if (n < 0 && errno == EINTR) continue;
    INCRELORA_CHECK(n > 0, "could not write '", path, "': ", n < 0 ? errno_text() : std::string("no progress"),
                    "; check free disk space and permissions.");
    p += n;
    bytes -= static_cast<size_t>(n);
  }
}

void write_atomically(const std::string& path, const std::function<void(int fd, const std::string& tmp)>& body) {
  INCRELORA_CHECK(!path.empty(), "the output path is empty; pass a file name.");
  const std::string tmp = path + ".tmp-" + unique_tag();
  Fd out;
  out.fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  INCRELORA_CHECK(out.fd >= 0, "could not create '", tmp, "' (to be renamed to '", path, "'): ", errno_text(),
                  "; check that the folder exists and is writable.");
  try {
    body(out.fd, tmp);
    INCRELORA_CHECK(::fsync(out.fd) == 0, "could not flush '", tmp, "' to disk: ", errno_text(), ".");
    const int fd = out.fd;
    out.fd = -1;
    INCRELORA_CHECK(::close(fd) == 0, "could not close '", tmp, "': ", errno_text(), ".");
    INCRELORA_CHECK(::rename(tmp.c_str(), path.c_str()) == 0, "could not rename '", tmp, "' to '", path,
                    "': ", errno_text(), "; check that the target is not a folder and the folder is writable.");
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  sync_parent(path);
}

void write_file_atomically(const std::string& path, const std::string& bytes) {
  write_atomically(path, [&](int fd, const std::string& tmp) { write_all(fd, bytes.data(), bytes.size(), tmp); });
}

std::string read_text_file(const std::string& path, const std::string& what) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever; it is refused below.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  INCRELORA_CHECK(fd >= 0, what, " '", path, "' could not be opened (", errno_text(), ").");
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  INCRELORA_CHECK(::fstat(fd, &st) == 0 && S_ISREG(st.st_mode), what, " '", path,
                  "' is not a regular file (a FIFO, device or folder); pass the file itself.");
  std::string text;
  char buffer[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    INCRELORA_CHECK(n >= 0, what, " '", path, "' could not be read (", errno_text(), ").");
    if (n == 0) break;
    text.append(buffer, static_cast<size_t>(n));
  }
  return text;
}

bool path_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

void make_directories(const std::string& dir, const std::string& caller) {
  INCRELORA_CHECK(!dir.empty(), caller, ": the folder name is empty; pass the folder to write into.");
  // mkdir -p: create each missing component in turn.
  for (size_t pos = 1; pos <= dir.size(); ++pos) {
    if (pos != dir.size() && dir[pos] != '/') continue;
    const std::string part = dir.substr(0, pos);
    if (::mkdir(part.c_str(), 0755) != 0 && errno != EEXIST) {
      INCRELORA_CHECK(false, caller, ": could not create the folder '", part, "' (", errno_text(), ").");
    }
  }
  INCRELORA_CHECK(is_directory(dir), caller, ": '", dir, "' exists and is not a folder; pass a folder name.");
}

void remove_tree(const std::string& path) {
  if (!path_exists(path)) return;
  ::nftw(path.c_str(), [](const char* p, const struct stat*, int, struct FTW*) { return ::remove(p); }, 16,
         FTW_DEPTH | FTW_PHYS);
}

std::string join_path(const std::string& dir, const std::string& file) {
  if (dir.empty() || dir.back() == '/') return dir + file;
  return dir + "/" + file;
}

std::pair<std::string, std::string> split_path(const std::string& path) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  const auto slash = p.rfind('/');
  if (slash == std::string::npos) return {".", p};
  return {slash == 0 ? std::string("/") : p.substr(0, slash), p.substr(slash + 1)};
}

void sync_directory(const std::string& dir) {
  // Best effort: a failure here loses nothing already written, it only leaves the rename's durability to the
  // filesystem's own schedule.
  Fd d;
  d.fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (d.fd >= 0) (void)::fsync(d.fd);
}

std::string unique_tag() {
  // A process-wide counter mixed with the clock and a random seed: two saves of one process never meet, and
  // a recycled pid does not reproduce an earlier process's names.
  static std::atomic<uint64_t> counter{std::random_device{}()};
  const auto now = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  const uint64_t mixed = (counter.fetch_add(0x9E3779B97F4A7C15ULL) ^ (now * 0xBF58476D1CE4E5B9ULL));
  return fmt::format("{}-{:016x}", static_cast<long>(::getpid()), mixed);
}

bool process_alive(long pid) {
  if (pid <= 0) return true;  // not a pid we could have written: never treat it as dead
  return ::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH;
}

std::vector<Stray> find_strays(const std::string& folder, const std::string& base) {
  std::vector<Stray> out;
  DIR* d = ::opendir(folder.c_str());
  if (d == nullptr) return out;
  while (const dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    for (const bool old : {false, true}) {
      const std::string prefix = base + (old ? ".old-" : ".tmp-");
      if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) continue;
      const long pid = parse_stray_suffix(name.substr(prefix.size()));
      if (pid > 0) out.push_back({join_path(folder, name), pid, old});
    }
  }
  ::closedir(d);
  return out;
}

void remove_dead_strays(const std::string& folder, const std::string& base) {
  bool removed = false;
  for (const auto& stray : find_strays(folder, base)) {
    if (process_alive(stray.pid)) continue;
    remove_tree(stray.path);
    removed = true;
  }
  if (removed) sync_directory(folder);
}

void replace_directory(const std::string& staged, const std::string& dir) {
  const auto parent = split_path(dir).first;
  // Everything in `staged` is flushed before its name changes: after the switch, a crash can only show the
  // new version whole.
  sync_directory(staged);
  for (int attempt = 0;; ++attempt) {
    if (!path_exists(dir)) {
      if (::rename(staged.c_str(), dir.c_str()) == 0) break;
      // Another writer put a `dir` in place meanwhile: swap with it instead.
      INCRELORA_CHECK((errno == EEXIST || errno == ENOTEMPTY) && attempt < 3, "could not rename '", staged,
                      "' to '", dir, "': ", errno_text(), "; check that the folder is writable.");
      continue;
    }
    if (exchange_paths(staged, dir) == 0) {
      // `staged` now names the previous version; it is removed only once the swap is on disk.
      sync_directory(parent);
      remove_tree(staged);
      sync_directory(parent);
      return;
    }
    if (errno == ENOENT && attempt < 3) continue;  // `dir` vanished meanwhile (another writer's fallback)
    INCRELORA_CHECK(errno == EINVAL || errno == ENOSYS || errno == ENOTSUP, "could not swap '", staged, "' with '",
                    dir, "': ", errno_text(), "; check that the folder is writable.");
    // No atomic swap on this filesystem: park the previous version, then rename the new one in. A crash between
    // the two leaves the parked copy, which recover_directory (the loaders) renames back.
    const std::string old = dir + ".old-" + unique_tag();
    INCRELORA_CHECK(::rename(dir.c_str(), old.c_str()) == 0, "could not move the previous '", dir, "' aside to '",
                    old, "': ", errno_text(), ".");
    if (::rename(staged.c_str(), dir.c_str()) != 0) {
      const std::string error = errno_text();
      (void)::rename(old.c_str(), dir.c_str());
      INCRELORA_CHECK(false, "could not rename '", staged, "' to '", dir, "': ", error, ".");
    }
    sync_directory(parent);
    remove_tree(old);
    break;
  }
  sync_directory(parent);
}

void recover_directory(const std::string& dir, const std::function<bool(const std::string&)>& complete) {
  const auto [parent, base] = split_path(dir);
  // A live writer between its two renames finishes within moments; a dead one left its parked copy for good.
  for (int wait = 0; !path_exists(dir) && wait < 100; ++wait) {
    bool live_writer = false, restored = false;
    auto strays = find_strays(parent, base);
    // Several parked copies only after several crashes with no load between: the newest is the latest version.
    const auto mtime = [](const std::string& path) {
      struct stat st {};
      return ::stat(path.c_str(), &st) == 0 ? st.st_mtime : 0;
    };
    std::sort(strays.begin(), strays.end(), [&](const Stray& a, const Stray& b) { return mtime(a.path) > mtime(b.path); });
    for (const auto& stray : strays) {
      if (!stray.old) continue;
      if (process_alive(stray.pid)) {
        live_writer = true;
      } else if (complete(stray.path) && ::rename(stray.path.c_str(), dir.c_str()) == 0) {
        sync_directory(parent);
        restored = true;
        break;
      }
    }
    if (restored || !live_writer) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  remove_dead_strays(parent, base);
}

}  // namespace increlora::detail
