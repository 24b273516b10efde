#pragma once
// File helpers shared by src/ (not installed). POSIX calls rather than std::filesystem on purpose: the
// LibTorch of the PyPI wheel exports its own copies of std::filesystem's functions, built against another
// libstdc++, and calls to them from our code crash (seen with remove_all); open/mkdir/rename are safe.

#include <cstddef>
#include <functional>
#include <string>

namespace increlora::detail {

/// strerror(errno).
std::string errno_text();
/// Writes all of `bytes` to `fd`, retrying short writes; throws naming `path` on failure.
void write_all(int fd, const void* data, size_t bytes, const std::string& path);
/// Writes through `body` into "<path>.tmp-<pid>", flushes it to disk and renames it over `path`; any failure
/// removes the temporary file and rethrows, so `path` is either the old file or the complete new one.
void write_atomically(const std::string& path, const std::function<void(int fd, const std::string& tmp)>& body);
/// `write_atomically` of a string (the JSON files stored beside the tensors).
void write_file_atomically(const std::string& path, const std::string& bytes);
/// The whole content of `path`; throws naming `what` (e.g. "load_adapter: the adapter config") when it
/// cannot be read.
std::string read_text_file(const std::string& path, const std::string& what);
bool path_exists(const std::string& path);
bool is_directory(const std::string& path);
/// Creates `dir` and its missing parents; throws naming `caller` when that fails or `dir` is a file.
void make_directories(const std::string& dir, const std::string& caller);
/// rm -r (no error when `path` does not exist).
void remove_tree(const std::string& path);
/// Puts the complete folder `staged` in the place of `dir` (which may exist), by renames.
void replace_directory(const std::string& staged, const std::string& dir);
/// "dir/file".
std::string join_path(const std::string& dir, const std::string& file);

}  // namespace increlora::detail
