// Saves that cannot be torn: a writer SIGKILLed at random moments of save_adapter and save_checkpoint leaves a
// folder from which the next load reads one complete version (the previous or the new one), with at most one
// stray beside or inside it, which that load removes; a live writer's strays are never touched.
#include "support.hpp"

#include <increlora/checkpoint.hpp>
#include <increlora/serialize.hpp>

#include "temp_dir.hpp"

#include <ATen/Parallel.h>
#include <torch/cuda.h>
#include <torch/optim/adam.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <signal.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

using increlora::SVDLinear;
using increlora::SVDLinearOptions;

namespace {

// Whether `path` is a writable folder with at least `bytes` free.
bool has_room(const std::string& path, uint64_t bytes) {
  struct statvfs fs {};
  return ::access(path.c_str(), W_OK) == 0 && ::statvfs(path.c_str(), &fs) == 0 &&
         static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize >= bytes;
}

// The folder for scratch saves of a few hundred MB: tmpfs (/dev/shm) where it has room (a container's is often
// 64 MB), so that the kill test measures the saves' logic rather than the disk (a SIGKILL loses nothing already
// written, flushed or not: the page cache outlives the process), else TempDir's default ($TMPDIR or /tmp). (On this
// project's 2-core machine a 214 MB save takes about 0.1 s on tmpfs and 0.7 s on disk with its fsyncs.)
std::string scratch_base() { return has_room("/dev/shm", uint64_t{2} << 30) ? "/dev/shm" : ""; }

// Adapted layers whose banks make a save of `layers` × (capacity × (in + out + 1)) floats, plus a small layer
// "tag" whose rank changes with the version, so that a config and tensors of two saves cannot pass for one.
struct BigNetImpl : torch::nn::Module {
  BigNetImpl(int64_t layers, int64_t in, int64_t out, int64_t capacity, bool with_tag) {
    for (int64_t i = 0; i < layers; ++i) {
      fc.push_back(register_module("fc" + std::to_string(i),
                                   SVDLinear(SVDLinearOptions(in, out).r(1).capacity(capacity).bias(false))));
    }
    if (with_tag) tag = register_module("tag", SVDLinear(SVDLinearOptions(4, 4).r(1).capacity(4)));
  }
  std::vector<SVDLinear> fc;
  SVDLinear tag{nullptr};
};
TORCH_MODULE(BigNet);

// The adapter banks of every layer (the tensors a version fills).
std::vector<torch::Tensor> banks(const BigNet& net) {
  std::vector<torch::Tensor> out;
  for (const auto& [name, m] : increlora::named_svd_linears(*net)) {
    out.push_back(m->lora_A);
    out.push_back(m->lora_E);
    out.push_back(m->lora_B);
  }
  return out;
}

int64_t bytes_of(const std::vector<torch::Tensor>& tensors) {
  int64_t n = 0;
  for (const auto& t : tensors) n += t.numel() * t.element_size();
  return n;
}

// Fills a float tensor in place with plain stores: the forked writer runs no parallel kernel (an OpenMP pool
// does not survive fork()).
void fill(const torch::Tensor& t, float v) {
  auto* p = t.data_ptr<float>();
  std::fill(p, p + t.numel(), v);
}

// The single value every element of `t` holds, or NaN when they differ.
double uniform_value(const torch::Tensor& t) {
  const auto [lo, hi] = at::aminmax(t.detach());
  const double a = lo.item<double>(), b = hi.item<double>();
  return a == b ? a : std::nan("");
}

// The tag layer's rank in version v.
int64_t tag_rank(int64_t v) { return 1 + v % 3; }

void kill_and_reap(pid_t pid) {
  ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
}

// A writer process: runs `body(report_fd)` until killed; `body` writes each completed version to the pipe. Killed
// when it goes out of scope (a failed REQUIRE must not leave it saving).
struct Writer {
  pid_t pid = -1;
  int fd = -1;
  Writer(pid_t p, int f) : pid(p), fd(f) {}
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;
  Writer(Writer&& o) noexcept : pid(o.pid), fd(o.fd) { o.pid = -1, o.fd = -1; }
  ~Writer() {
    if (pid > 0) kill_and_reap(pid);
    if (fd >= 0) ::close(fd);
  }
};

Writer start_writer(const std::function<void(int)>& body) {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(fds[0]);
    int rc = 0;
    try {
      body(fds[1]);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "crash_safety writer %d failed: %s\n", static_cast<int>(::getpid()), e.what());
      rc = 3;
    }
    ::_exit(rc == 0 ? 4 : rc);  // the body never returns: the parent kills it
  }
  ::close(fds[1]);
  return Writer(pid, fds[0]);
}

void report_version(int fd, int64_t v) {
  const ssize_t n = ::write(fd, &v, sizeof v);
  (void)n;
}

// Reported by a writer just before its first save starts (after its first fill).
constexpr int64_t kSaving = -1;

// Waits until the writer reports that its first save starts, so that the kill moments can be drawn over saves.
void wait_until_saving(const Writer& w) {
  int64_t v = 0;
  const ssize_t n = ::read(w.fd, &v, sizeof v);
  CHECK(n == static_cast<ssize_t>(sizeof v));
  CHECK(v == kSaving);
}

// Kills the writer, waits for it and returns the last version it reported complete (-1: none).
int64_t kill_writer(Writer& w) {
  ::kill(w.pid, SIGKILL);
  int status = 0;
  const pid_t waited = ::waitpid(w.pid, &status, 0);
  w.pid = -1;
  REQUIRE(waited > 0);
  INFO("the writer ended with status " << status << " instead of being killed: it failed, see its stderr");
  CHECK((WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL));
  int64_t last = -1, v = 0;
  while (::read(w.fd, &v, sizeof v) == static_cast<ssize_t>(sizeof v)) last = std::max(last, v);
  ::close(w.fd);
  w.fd = -1;
  return last;
}

// A process that lives until stopped (an "other writer" holding its strays), stopped at the latest when it goes
// out of scope.
struct Sleeper {
  Sleeper() {
    std::fflush(nullptr);
    pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      for (;;) ::pause();
    }
  }
  Sleeper(const Sleeper&) = delete;
  Sleeper& operator=(const Sleeper&) = delete;
  ~Sleeper() { stop(); }
  void stop() {
    if (pid > 0) kill_and_reap(pid);
    pid = -1;
  }
  pid_t pid = -1;
};

// The pid of a process that has ended.
pid_t dead_pid() {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) ::_exit(0);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  return pid;
}

// The strays of a save of `base`: "<base>.tmp-..." or "<base>.old-...".
std::vector<std::string> strays(const std::vector<std::string>& names, const std::string& base) {
  std::vector<std::string> out;
  for (const auto& n : names) {
    if (n.rfind(base + ".tmp-", 0) == 0 || n.rfind(base + ".old-", 0) == 0) out.push_back(n);
  }
  return out;
}

double elapsed_s(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

void make_folder(const std::string& path) { REQUIRE(::mkdir(path.c_str(), 0755) == 0); }

// Sizes: saves of ~200 MB, an adapter of 6 layers 4096 -> 256 with 2048 slots (214 MB), a checkpoint of 3 such
// layers with 1536 slots (80 MB of banks, 241 MB with Adam's two moments). On the project's 2-core machine a save
// takes about 0.1 s on tmpfs (0.7 s on its disk, fsyncs included); the cost of a kill is mostly the load and the
// forked writer's copy-on-write, and the 28 + 22 kills take about 50 s in all.
constexpr int64_t kIn = 4096, kOut = 256;
constexpr int kAdapterKills = 28, kCheckpointKills = 22;

}  // namespace

TEST_CASE("A writer killed at random moments of save_adapter leaves one complete version and at most one stray",
          "[crash_safety]") {
  const auto started = std::chrono::steady_clock::now();
  increlora::test::TempDir scratch(scratch_base(), "increlora-crash");
  const auto dir = scratch.file("adapter");
  torch::manual_seed(15);
  BigNet net(6, kIn, kOut, 2048, /*with_tag=*/true);
  const auto tensors = banks(net);
  const auto set_version = [&](int64_t v) {
    torch::NoGradGuard no_grad;
    const auto r = tag_rank(v);
    net->tag->assign(torch::full({4, r}, 1.0), torch::full({r}, 1.0), torch::full({r, 4}, 1.0));
    for (const auto& t : tensors) fill(t, static_cast<float>(v));
  };
  CAPTURE(bytes_of(tensors));

  // Version 0 complete in place; its save's duration sets the range of the kill moments.
  set_version(0);
  const auto t0 = std::chrono::steady_clock::now();
  increlora::save_adapter(*net, dir);
  const double save_s = elapsed_s(t0);
  CAPTURE(save_s);

  std::mt19937 rng(15);
  int64_t previous = 0;
  int mid_save = 0;
  for (int kill = 0; kill < kAdapterKills; ++kill) {
    CAPTURE(kill);
    // Versions first, first + 1, ...: every child numbers its own, so a loaded one tells which save it is.
    const int64_t first = 1000 * (kill + 1);
    auto writer = start_writer([&](int fd) {
      for (int64_t v = first;; ++v) {
        set_version(v);
        if (v == first) report_version(fd, kSaving);
        increlora::save_adapter(*net, dir);
        report_version(fd, v);
      }
    });
    // Kill moments spread over the child's first two saves (and the fill between them).
    wait_until_saving(writer);
    const int ms = std::uniform_int_distribution<int>(0, static_cast<int>(2000 * save_s) + 10)(rng);
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    const int64_t completed = kill_writer(writer);

    const auto left = strays(scratch.entries("adapter"), "adapter");
    CAPTURE(left);
    CHECK(left.size() <= 1);
    mid_save += left.empty() ? 0 : 1;

    const auto ranks = increlora::load_adapter(*net, dir);
    // One complete version: every bank holds one v, and the config that came with it gives the tag layer the
    // rank of that v.
    const double v = uniform_value(tensors.front());
    CAPTURE(v, completed, previous, first);
    REQUIRE_FALSE(std::isnan(v));
    for (const auto& t : tensors) REQUIRE(uniform_value(t) == v);
    const auto version = static_cast<int64_t>(v);
    CHECK(ranks.at("tag") == tag_rank(version));
    CHECK(net->tag->rank() == tag_rank(version));
    for (int64_t i = 0; i < 6; ++i) CHECK(ranks.at("fc" + std::to_string(i)) == 1);
    // The previous or the new version: the last one reported complete, or the one in flight after it.
    if (completed >= 0) {
      CHECK((version == completed || version == completed + 1));
    } else {
      CHECK((version == previous || version == first));
    }
    previous = version;
    // The load removed the dead writer's stray.
    CHECK(scratch.entries("adapter") == std::vector<std::string>{"adapter.safetensors", "adapter_config.json"});
  }
  std::fprintf(stderr, "crash_safety: %d kills of save_adapter (%.0f MB, one save %.2f s), %d left a stray; %.1f s\n",
               kAdapterKills, bytes_of(tensors) / 1e6, save_s, mid_save, elapsed_s(started));
  // Most kills land inside a save (a stray proves it): the test exercises the interesting moments.
  CHECK(mid_save >= kAdapterKills / 3);
}

TEST_CASE("A writer killed at random moments of save_checkpoint leaves one complete version and at most one stray",
          "[crash_safety]") {
  // A checkpoint records every CUDA generator's state, and a child forked after this process initialised CUDA
  // (the test runner asks for the devices at start) cannot use CUDA: the kills need a CPU-only machine (CI's).
  if (torch::cuda::is_available()) {
    WARN("skipped: CUDA is initialised in this process, and the forked writers of this test cannot use it");
    return;
  }
  const auto started = std::chrono::steady_clock::now();
  increlora::test::TempDir scratch(scratch_base(), "increlora-crash");
  const auto dir = scratch.file("ckpt");
  torch::manual_seed(16);
  BigNet net(3, kIn, kOut, 1536, /*with_tag=*/false);
  const auto params = banks(net);
  torch::optim::Adam optimizer(params, torch::optim::AdamOptions(1e-3));
  increlora::RankAllocator allocator(*net, increlora::RankAllocatorOptions().lora_r(1).target_rank(2)
                                               .incre_interval(100));
  // One step creates Adam's moments, which a version then fills.
  for (const auto& p : params) p.mutable_grad() = torch::zeros_like(p);
  optimizer.step();
  std::vector<torch::Tensor> moments;
  std::vector<torch::optim::AdamParamState*> states;
  for (const auto& p : params) {
    auto& s = static_cast<torch::optim::AdamParamState&>(*optimizer.state().at(p.unsafeGetTensorImpl()));
    states.push_back(&s);
    moments.push_back(s.exp_avg());
    moments.push_back(s.exp_avg_sq());
  }
  const auto set_version = [&](int64_t v) {
    for (const auto& t : params) fill(t, static_cast<float>(v));
    for (const auto& t : moments) fill(t, static_cast<float>(v));
    for (auto* s : states) s->step(v);
  };
  const auto user = [](int64_t v) { return "{\"version\":" + std::to_string(v) + "}"; };  // as the JSON dumps it
  CAPTURE(bytes_of(params) + bytes_of(moments));

  set_version(0);
  const auto t0 = std::chrono::steady_clock::now();
  increlora::save_checkpoint(dir, *net, &allocator, optimizer, 0, user(0));
  const double save_s = elapsed_s(t0);
  CAPTURE(save_s);

  std::mt19937 rng(16);
  int64_t previous = 0;
  int mid_save = 0;
  for (int kill = 0; kill < kCheckpointKills; ++kill) {
    CAPTURE(kill);
    const int64_t first = 1000 * (kill + 1);
    auto writer = start_writer([&](int fd) {
      for (int64_t v = first;; ++v) {
        set_version(v);
        if (v == first) report_version(fd, kSaving);
        increlora::save_checkpoint(dir, *net, &allocator, optimizer, v, user(v));
        report_version(fd, v);
      }
    });
    wait_until_saving(writer);
    const int ms = std::uniform_int_distribution<int>(0, static_cast<int>(2000 * save_s) + 10)(rng);
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    const int64_t completed = kill_writer(writer);

    const auto beside = scratch.entries();
    const auto left = strays(beside, "ckpt");
    CAPTURE(beside);
    CHECK(left.size() <= 1);
    CHECK(left.size() + 1 == beside.size());  // nothing else beside ckpt
    mid_save += left.empty() ? 0 : 1;

    std::string user_state;
    const int64_t step = increlora::load_checkpoint(dir, *net, &allocator, optimizer, /*restore_rng=*/false,
                                                    &user_state);
    CAPTURE(step, completed, previous, first);
    // One complete version: the step, the user state, every bank, every moment and every Adam step count agree.
    for (const auto& t : params) REQUIRE(uniform_value(t) == static_cast<double>(step));
    for (const auto& p : params) {
      const auto& s = static_cast<const torch::optim::AdamParamState&>(*optimizer.state().at(p.unsafeGetTensorImpl()));
      REQUIRE(s.step() == step);
      REQUIRE(uniform_value(s.exp_avg()) == static_cast<double>(step));
      REQUIRE(uniform_value(s.exp_avg_sq()) == static_cast<double>(step));
    }
    CHECK(user_state == user(step));
    if (completed >= 0) {
      CHECK((step == completed || step == completed + 1));
    } else {
      CHECK((step == previous || step == first));
    }
    previous = step;
    CHECK(scratch.entries() == std::vector<std::string>{"ckpt"});
    CHECK(scratch.entries("ckpt") == std::vector<std::string>{"adapter.safetensors", "adapter_config.json",
                                                              "trainer_state.json", "trainer_state.safetensors"});
    // The optimizer's state now lives in the loaded tensors: point the next version at them.
    moments.clear();
    states.clear();
    for (const auto& p : params) {
      auto& s = static_cast<torch::optim::AdamParamState&>(*optimizer.state().at(p.unsafeGetTensorImpl()));
      states.push_back(&s);
      moments.push_back(s.exp_avg());
      moments.push_back(s.exp_avg_sq());
    }
  }
  std::fprintf(stderr, "crash_safety: %d kills of save_checkpoint (%.0f MB, one save %.2f s), %d left a stray; "
               "%.1f s\n", kCheckpointKills, (bytes_of(params) + bytes_of(moments)) / 1e6, save_s, mid_save,
               elapsed_s(started));
  CHECK(mid_save >= kCheckpointKills / 3);
}

TEST_CASE("Loads remove the strays of dead writers and never those of a live one", "[crash_safety]") {
  increlora::test::TempDir dir;
  torch::manual_seed(17);
  increlora::test::TinyNet net(4, 2, SVDLinearOptions(1, 1).r(1));
  torch::optim::Adam optimizer(net->parameters(), torch::optim::AdamOptions(1e-3));
  increlora::RankAllocator allocator(*net, increlora::RankAllocatorOptions().lora_r(1).target_rank(2));
  increlora::save_adapter(*net, dir.file("a"));
  increlora::save_checkpoint(dir.file("ckpt"), *net, allocator, optimizer, 3);

  Sleeper live_writer;
  const pid_t live = live_writer.pid;
  const pid_t dead = dead_pid();
  const auto name = [](const std::string& base, const char* kind, pid_t pid, const char* tag) {
    return base + kind + std::to_string(pid) + "-" + tag;
  };
  // Strays as a killed save leaves them (staging folders with part of a version), and names that only look
  // alike (another base, no pid), which are never anyone's stray.
  for (const auto& folder : {name(dir.file("a/adapter"), ".tmp-", live, "00ab"),
                             name(dir.file("a/adapter"), ".tmp-", dead, "00cd"),
                             name(dir.file("ckpt"), ".tmp-", live, "0a"), name(dir.file("ckpt"), ".tmp-", dead, "0b"),
                             name(dir.file("ckpt"), ".old-", dead, "0c"), dir.file("ckpt.tmp-notapid"),
                             name(dir.file("ckpt2"), ".tmp-", dead, "0d")}) {
    make_folder(folder);
    increlora::test::write_bytes(folder + "/adapter.safetensors", "partial");
  }
  increlora::test::write_bytes(name(dir.file("a/adapter_config.json"), ".tmp-", dead, "00ef"), "{\"par");

  increlora::test::TinyNet fresh(4, 2, SVDLinearOptions(1, 1).r(1));
  CHECK_NOTHROW(increlora::load_adapter(*fresh, dir.file("a")));
  CHECK(dir.entries("a") == std::vector<std::string>{"adapter.safetensors", name("adapter", ".tmp-", live, "00ab"),
                                                     "adapter_config.json"});
  torch::optim::Adam fresh_optimizer(fresh->parameters(), torch::optim::AdamOptions(1e-3));
  increlora::test::TinyNet fresh2(4, 2, SVDLinearOptions(1, 1).r(1));
  torch::optim::Adam optimizer2(fresh2->parameters(), torch::optim::AdamOptions(1e-3));
  increlora::RankAllocator allocator2(*fresh2, increlora::RankAllocatorOptions().lora_r(1).target_rank(2));
  CHECK(increlora::load_checkpoint(dir.file("ckpt"), *fresh2, allocator2, optimizer2) == 3);
  auto expected = std::vector<std::string>{"a", "ckpt", "ckpt.tmp-notapid", name("ckpt", ".tmp-", live, "0a"),
                                           name("ckpt2", ".tmp-", dead, "0d")};
  std::sort(expected.begin(), expected.end());
  CHECK(dir.entries() == expected);

  // Once the live writer is gone, its strays go with the next load.
  live_writer.stop();
  CHECK_NOTHROW(increlora::load_adapter(*fresh, dir.file("a")));
  CHECK(dir.entries("a") == std::vector<std::string>{"adapter.safetensors", "adapter_config.json"});
  CHECK(increlora::load_checkpoint(dir.file("ckpt"), *fresh2, allocator2, optimizer2) == 3);
  expected = std::vector<std::string>{"a", "ckpt", "ckpt.tmp-notapid", name("ckpt2", ".tmp-", dead, "0d")};
  std::sort(expected.begin(), expected.end());
  CHECK(dir.entries() == expected);
}

TEST_CASE("An adapter save killed between its two renames is completed by the next load", "[crash_safety][serialize]") {
  const bool writer_alive = GENERATE(false, true);
  CAPTURE(writer_alive);
  increlora::test::TempDir dir;
  torch::manual_seed(18);
  increlora::test::TinyNet net(4, 2, SVDLinearOptions(1, 1).r(1).capacity(4));
  increlora::save_adapter(*net, dir.file("a"));  // the previous version
  // The new version, grown to rank 2, staged as save_adapter stages it; then the tensors' rename is done and the
  // config's is not, as when the writer dies between the two.
  net->fc[0]->grow(1, 0, 0);
  const auto expected = increlora::lora_state_dict(*net)["fc0.lora_A"].clone();
  Sleeper live_writer;
  if (!writer_alive) live_writer.stop();
  const pid_t writer = writer_alive ? live_writer.pid : dead_pid();
  const std::string save_id = std::to_string(writer) + "-00000000000000aa";
  increlora::detail::save_adapter(*net, dir.file("staged"), "none", save_id);
  const auto staging = dir.file("a/adapter.tmp-" + save_id);
  make_folder(staging);
  REQUIRE(::rename(dir.file("staged/adapter.safetensors").c_str(), dir.file("a/adapter.safetensors").c_str()) == 0);
  REQUIRE(::rename(dir.file("staged/adapter_config.json").c_str(), (staging + "/adapter_config.json").c_str()) == 0);

  increlora::test::TinyNet fresh(4, 2, SVDLinearOptions(1, 1).r(1).capacity(4));
  const auto ranks = increlora::load_adapter(*fresh, dir.file("a"));
  CHECK(ranks.at("fc0") == 2);  // the new version, whole
  CHECK(torch::equal(fresh->fc[0]->lora_A, expected));
  if (writer_alive) {
    // Read where it is, left for its writer to rename.
    CHECK(dir.entries("a") == std::vector<std::string>{"adapter.safetensors", "adapter.tmp-" + save_id,
                                                       "adapter_config.json"});
    live_writer.stop();
  } else {
    // The dead writer's commit is finished: the config is in place, the staging folder gone.
    CHECK(dir.entries("a") == std::vector<std::string>{"adapter.safetensors", "adapter_config.json"});
    CHECK_THAT(increlora::test::read_bytes(dir.file("a/adapter_config.json")), HasSubstring(save_id));
  }
  increlora::test::TinyNet again(4, 2, SVDLinearOptions(1, 1).r(1).capacity(4));
  CHECK(increlora::load_adapter(*again, dir.file("a")).at("fc0") == 2);
}

TEST_CASE("A checkpoint parked by the two-rename fallback is put back when its writer died", "[crash_safety][checkpoint]") {
  increlora::test::TempDir dir;
  torch::manual_seed(19);
  increlora::test::TinyNet net(4, 2, SVDLinearOptions(1, 1).r(1));
  torch::optim::Adam optimizer(net->parameters(), torch::optim::AdamOptions(1e-3));
  increlora::RankAllocator allocator(*net, increlora::RankAllocatorOptions().lora_r(1).target_rank(2));
  increlora::save_checkpoint(dir.file("ckpt"), *net, allocator, optimizer, 5);
  // Killed between "ckpt -> ckpt.old-<pid>-<tag>" and "ckpt.tmp-<pid>-<tag> -> ckpt": no ckpt, the previous
  // version parked, the new one staged (here incomplete: it was still being written by an earlier save).
  const pid_t dead = dead_pid();
  const auto old = dir.file("ckpt.old-" + std::to_string(dead) + "-0c");
  REQUIRE(::rename(dir.file("ckpt").c_str(), old.c_str()) == 0);
  make_folder(dir.file("ckpt.tmp-" + std::to_string(dead) + "-0d"));
  increlora::test::write_bytes(dir.file("ckpt.tmp-" + std::to_string(dead) + "-0d/trainer_state.json"), "{\"form");

  increlora::test::TinyNet fresh(4, 2, SVDLinearOptions(1, 1).r(1));
  torch::optim::Adam fresh_optimizer(fresh->parameters(), torch::optim::AdamOptions(1e-3));
  increlora::RankAllocator fresh_allocator(*fresh, increlora::RankAllocatorOptions().lora_r(1).target_rank(2));
  CHECK(increlora::load_checkpoint(dir.file("ckpt"), *fresh, fresh_allocator, fresh_optimizer) == 5);
  CHECK(dir.entries() == std::vector<std::string>{"ckpt"});
  CHECK(dir.entries("ckpt") == std::vector<std::string>{"adapter.safetensors", "adapter_config.json",
                                                        "trainer_state.json", "trainer_state.safetensors"});
}
