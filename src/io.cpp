#include "io.hpp"

#include "increlora/errors.hpp"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <sys/stat.h>
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

// Flushes the folder holding `path`, so that a rename into it survives a crash. Best effort: a failure here
// loses nothing already written.
void sync_parent(const std::string& path) {
  std::string copy = path;
  Fd d;
  d.fd = ::open(::dirname(copy.data()), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (d.fd >= 0) (void)::fsync(d.fd);
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
  const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
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

void replace_directory(const std::string& staged, const std::string& dir) {
  // rename() cannot replace a non-empty folder: move the old one aside first, then drop it. A crash between
  // the two renames leaves "<dir>.old-<pid>" holding the previous complete copy.
  const std::string old = dir + ".old-" + std::to_string(::getpid());
  const bool had_old = path_exists(dir);
  if (had_old) {
    remove_tree(old);
    INCRELORA_CHECK(::rename(dir.c_str(), old.c_str()) == 0, "could not move the previous '", dir, "' aside to '",
                    old, "': ", errno_text(), ".");
  }
  if (::rename(staged.c_str(), dir.c_str()) != 0) {
    const std::string error = errno_text();
    if (had_old) (void)::rename(old.c_str(), dir.c_str());
    INCRELORA_CHECK(false, "could not rename '", staged, "' to '", dir, "': ", error, ".");
  }
  if (had_old) remove_tree(old);
  sync_parent(dir);
}

std::string join_path(const std::string& dir, const std::string& file) {
  if (dir.empty() || dir.back() == '/') return dir + file;
  return dir + "/" + file;
}

}  // namespace increlora::detail
