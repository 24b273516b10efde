#pragma once
// An in-process c10d backend whose ranks are threads of one process, for testing data-parallel code without
// GPUs. The wheel's LibTorch cannot build its CPU backend (ProcessGroupGloo.hpp needs gloo headers the wheel
// does not ship), so this stands in for it behind the same c10d::ProcessGroup the NCCL runs use.

#include <increlora/distributed.hpp>

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/HashStore.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace increlora::test {

// The ranks' meeting point: each collective waits until every rank has handed in its tensor; the last to arrive
// combines them in place for all, then releases the others.
class World {
 public:
  explicit World(int size) : size_(size), slots_(static_cast<size_t>(size)) {}
  int size() const { return size_; }

  template <class Combine>
  void collective(int rank, const torch::Tensor& tensor, Combine combine) {
    std::unique_lock<std::mutex> lock(mutex_);
    const int64_t generation = generation_;
    slots_[static_cast<size_t>(rank)] = tensor;
    if (++arrived_ == size_) {
      combine(slots_);
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return generation_ != generation; });
    }
  }

 private:
  const int size_;
  std::vector<torch::Tensor> slots_;
  std::mutex mutex_;
  std::condition_variable cv_;
  int arrived_ = 0;
  int64_t generation_ = 0;
};

// Collectives complete before they return, so their Work is done at once.
class DoneWork : public c10d::Work {
 public:
  bool isCompleted() override { return true; }
  bool isSuccess() const override { return true; }
  bool wait(std::chrono::milliseconds) override { return true; }
};

class ThreadBackend : public c10d::Backend {
 public:
  ThreadBackend(std::shared_ptr<World> world, int rank) : c10d::Backend(rank, world->size()), world_(std::move(world)) {}
  const std::string getBackendName() const override { return "threads"; }

  c10::intrusive_ptr<c10d::Work> allreduce(std::vector<at::Tensor>& tensors,
                                           const c10d::AllreduceOptions& options) override {
    TORCH_CHECK(options.reduceOp == c10d::ReduceOp::SUM, "ThreadBackend: only SUM");
    ++allreduces;
    for (auto& t : tensors) {
      world_->collective(getRank(), t, [](std::vector<torch::Tensor>& all) {
        auto sum = torch::zeros_like(all[0]);
        for (const auto& x : all) sum.add_(x);  // in rank order, as a ring would not promise: exact for the tests
        for (auto& x : all) x.copy_(sum);
      });
    }
    return c10::make_intrusive<DoneWork>();
  }
  c10::intrusive_ptr<c10d::Work> broadcast(std::vector<at::Tensor>& tensors,
                                           const c10d::BroadcastOptions& options) override {
    const auto root = static_cast<size_t>(options.rootRank);
    for (auto& t : tensors) {
      world_->collective(getRank(), t, [root](std::vector<torch::Tensor>& all) {
        for (size_t r = 0; r < all.size(); ++r) {
          if (r != root) all[r].copy_(all[root]);
        }
      });
    }
    return c10::make_intrusive<DoneWork>();
  }
  c10::intrusive_ptr<c10d::Work> barrier(const c10d::BarrierOptions&) override {
    world_->collective(getRank(), torch::zeros({1}), [](std::vector<torch::Tensor>&) {});
    return c10::make_intrusive<DoneWork>();
  }
  void shutdown() override { ++shutdowns; }
  void abort() override { ++aborts; }
  int64_t allreduces = 0;
  int64_t shutdowns = 0;
  int64_t aborts = 0;

 private:
  std::shared_ptr<World> world_;
};

struct Rank {
  increlora::distributed::ProcessGroupPtr group;
  c10::intrusive_ptr<ThreadBackend> backend;
};

// One process group per rank over one World, as init_process_group gives each process its own.
inline std::vector<Rank> make_ranks(int size) {
  auto world = std::make_shared<World>(size);
  auto store = c10::make_intrusive<c10d::HashStore>();
  std::vector<Rank> ranks;
  for (int r = 0; r < size; ++r) {
    auto backend = c10::make_intrusive<ThreadBackend>(world, r);
    auto group = c10::make_intrusive<c10d::ProcessGroup>(store, r, size);
    group->setBackend(c10::DeviceType::CPU, c10d::ProcessGroup::BackendType::CUSTOM, backend);
    group->setDefaultBackend(c10d::ProcessGroup::BackendType::CUSTOM);
    ranks.push_back({group, backend});
  }
  return ranks;
}

// Runs body(rank) on one thread per rank; an exception on any rank is rethrown here (Catch's macros are not
// thread-safe, so the bodies only compute, and the checks run afterwards).
template <class Body>
void on_every_rank(int size, Body body) {
  std::vector<std::thread> threads;
  std::vector<std::exception_ptr> errors(static_cast<size_t>(size));
  for (int r = 0; r < size; ++r) {
    threads.emplace_back([&, r] {
      try {
        body(r);
      } catch (...) {
        errors[static_cast<size_t>(r)] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

}  // namespace increlora::test
