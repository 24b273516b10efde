#pragma once
// File helpers shared by src/ (not installed). POSIX calls rather than std::filesystem on purpose: the
// LibTorch of the PyPI wheel exports its own copies of std::filesystem's functions, built against another
// libstdc++, and calls to them from our code crash (seen with remove_all); open/mkdir/rename are safe.

#include <cstddef>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace increlora::detail {

/// strerror(errno).
std::string errno_text();
/// Writes all of `bytes` to `fd`, retrying short writes; throws naming `path` on failure.
void write_all(int fd, const void* data, size_t bytes, const std::string& path);
/// Writes through `body` into "<path>.tmp-<pid>-<tag>", flushes it to disk and renames it over `path`; any
/// failure removes the temporary file and rethrows, so `path` is either the old file or the complete new one.
void write_atomically(const std::string& path, const std::function<void(int fd, const std::string& tmp)>& body);
/// `write_atomically` of a string (the JSON files stored beside the tensors).
void write_file_atomically(const std::string& path, const std::string& bytes);
/// The whole content of `path`; throws naming `what` (e.g. "load_adapter: the adapter config") when it
/// cannot be read or is not a regular file (a FIFO or device is refused without blocking).
std::string read_text_file(const std::string& path, const std::string& what);
bool path_exists(const std::string& path);
bool is_directory(const std::string& path);
/// Creates `dir` and its missing parents; throws naming `caller` when that fails or `dir` is a file.
void make_directories(const std::string& dir, const std::string& caller);
/// rm -r (no error when `path` does not exist).
void remove_tree(const std::string& path);
/// "dir/file".
std::string join_path(const std::string& dir, const std::string& file);
/// ("a/b", "c") for "a/b/c", (".", "c") for "c"; trailing slashes are ignored.
std::pair<std::string, std::string> split_path(const std::string& path);
/// fsync of the folder itself, so that the entries created or renamed in it survive a crash (best effort).
void sync_directory(const std::string& dir);

// ---- saves that cannot be torn ------------------------------------------------------------------------------
// A save stages its new version under a temporary name that carries the writer's pid, "<base>.tmp-<pid>-<tag>",
// and the fallback of `replace_directory` parks the previous version as "<base>.old-<pid>-<tag>". Such strays
// are left only by a writer that died mid-save; the loaders recover from them and remove them once their
// writer is gone (a live writer's are never touched: it may be about to rename them).

/// "<pid>-<16 hex digits>": a name no other save (of this process or another) uses.
std::string unique_tag();
/// Whether process `pid` may still run: only ESRCH from kill(pid, 0) means it is gone (EPERM: it exists under
/// another user). A recycled pid makes a dead writer's stray look alive: it is then kept, never wrongly removed.
bool process_alive(long pid);

/// A leftover of an interrupted save in `folder`: "<base>.tmp-<pid>[-<tag>]" or "<base>.old-<pid>[-<tag>]".
struct Stray {
  std::string path;
  long pid = 0;
  bool old = false;  ///< ".old-": a previous complete version parked by `replace_directory`'s fallback
};
/// The strays of `base` in `folder` (exactly `base` followed by ".tmp-" or ".old-", the pid in digits and
/// optionally "-" and a hex tag: never another name's).
std::vector<Stray> find_strays(const std::string& folder, const std::string& base);
/// Removes the strays of `base` in `folder` whose writer is dead.
void remove_dead_strays(const std::string& folder, const std::string& base);

/// Puts the complete folder `staged` (a sibling of `dir`) in the place of `dir` (which may exist) in one atomic
/// step: renameat2(RENAME_EXCHANGE) swaps the two, then the previous version, now under the staged name, is
/// removed; with no previous version a plain rename. On a filesystem without RENAME_EXCHANGE it falls back to
/// two renames (dir -> "<dir>.old-<pid>-<tag>", staged -> dir): a crash between them leaves no `dir`, which
/// `recover_directory` restores from the parked copy.
void replace_directory(const std::string& staged, const std::string& dir);
/// What a loader does before it reads the folder `dir` that `replace_directory` writes: when `dir` is missing
/// but a writer parked the previous complete version (`complete` says whether a folder is one) and died, that
/// version is renamed back into place; while a live writer is between its two renames, waits (up to about
/// two seconds) for it to finish. Then removes the dead writers' strays of `dir`.
void recover_directory(const std::string& dir, const std::function<bool(const std::string&)>& complete);

}  // namespace increlora::detail
