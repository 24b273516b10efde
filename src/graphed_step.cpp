#include "increlora/graphed_step.hpp"

#include "increlora/errors.hpp"
#include "increlora/modules.hpp"
#include "increlora/svd_linear.hpp"


#ifdef INCRELORA_WITH_CUDA_GRAPHS
#include <ATen/core/CachingHostAllocator.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif

#include <cstdint>
#include <exception>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>

namespace increlora {
namespace {

using Key = std::vector<int64_t>;

void append_tensor_identity(Key& key, const torch::Tensor& t) {
  if (!t.defined()) {
    key.push_back(-1);
    return;
  }
  key.push_back(static_cast<int64_t>(reinterpret_cast<intptr_t>(t.unsafeGetTensorImpl())));
  key.push_back(static_cast<int64_t>(reinterpret_cast<intptr_t>(t.data_ptr())));
}

void append_shape(Key& key, const torch::Tensor& t) {
  key.push_back(static_cast<int64_t>(t.scalar_type()));
  key.push_back(static_cast<int64_t>(t.device().type()));
  key.push_back(t.device().index());
  key.push_back(t.dim());
  for (auto s : t.sizes()) key.push_back(s);
}

}  // namespace

struct GraphedStep::Impl {
  Impl(torch::nn::Module& m, StepFunction f, GraphedStepOptions o)
      : model(m), step(std::move(f)), options(o), layers(named_svd_linears(m, /*adapters_only=*/false)) {}

  torch::nn::Module& model;
  StepFunction step;
  GraphedStepOptions options;
  GraphedStepStats stats;
  std::vector<NamedSVDLinear> layers;
  int64_t device_eager_steps = 0;

  torch::Device device() const {
    for (const auto& p : model.parameters()) return p.device();
    return torch::Device(torch::kCPU);
  }

  /// The parameters that train now.
  std::vector<torch::Tensor> trainable() const {
    std::vector<torch::Tensor> out;
    for (const auto& p : model.parameters()) {
      if (p.requires_grad()) out.push_back(p);
    }
    return out;
  }

  /// Every step starts with no gradient defined (as `zero_grad()` leaves them), so that autograd hands each
  /// parameter the gradient tensor its backward computed instead of adding it into a zeroed one: no fill and no
  /// accumulation kernel per parameter.
  static void clear_grads(const std::vector<torch::Tensor>& params) {
    for (auto p : params) {
      if (p.grad().defined()) p.mutable_grad() = torch::Tensor();
    }
  }

  /// Whether a step on `device` runs from graphs (a failed capture switches them off for good).
  bool graphs_on(const torch::Device& device) const {
#ifdef INCRELORA_WITH_CUDA_GRAPHS
    return options.enabled() && device.is_cuda() && !capture_failed;
#else
    return false;
#endif
  }

  torch::Tensor run_eager(const std::vector<torch::Tensor>& inputs) {
    clear_grads(trainable());
    ++stats.eager_steps;
    auto loss = step(inputs);
    INCRELORA_CHECK(loss.defined(), "GraphedStep: the step function returned an undefined tensor; return the loss "
                    "after calling backward() on it.");
    // Detached: a loss that kept its autograd graph would keep the parameters' gradient accumulators (and the
    // stream they were created on) alive past the step.
    return loss.detach();
  }

#ifdef INCRELORA_WITH_CUDA_GRAPHS
  struct Entry {
    std::unique_ptr<at::cuda::CUDAGraph> graph;
    torch::Tensor loss;             // the captured step's output; lives in the graphs' pool, rewritten by replays
    std::vector<torch::Tensor> inputs;  // the buffers the graph reads its inputs from
    // The gradients the captured backward produces, by parameter (TensorImpl): the graph's own outputs, in the
    // pool like `loss` and rewritten by each replay, which attaches them to the parameters for the optimizer.
    std::unordered_map<const c10::TensorImpl*, torch::Tensor> grads;
    uint64_t last_used = 0;
  };
  std::optional<c10::cuda::CUDAStream> stream;
  // The memory pool every live graph shares. The allocator frees a pool once no graph uses it and refuses a
  // capture into it after that, so a capture with no live graph takes a fresh pool.
  std::optional<c10::MempoolId_t> pool;
  at::cuda::CUDAEvent enter_event, leave_event;
  std::map<Key, std::vector<torch::Tensor>> input_buffers;  // per input signature, outside the graphs' pool
  std::map<Key, Entry> graphs;  // only graphs that were captured cleanly
  uint64_t clock = 0;
  bool warmup_cache_released = false;
  bool capture_failed = false;  // a capture broke: this object runs eagerly from then on

  Key state_key(const Key& input_key) const {
    Key key = input_key;
    // Every module's mode, not only the root's: a submodule switched to eval (a dropout, say) changes the step.
    for (const auto& m : model.modules(/*include_self=*/true)) key.push_back(m->is_training() ? 1 : 0);
    for (const auto& [name, m] : layers) {
      key.push_back(m->rank());
      key.push_back(m->reserve_rank());
      key.push_back(m->is_merged() ? 1 : 0);
      append_tensor_identity(key, m->score_sink());
    }
    for (const auto& p : model.parameters()) {
      append_tensor_identity(key, p);
      key.push_back(p.requires_grad() ? 1 : 0);
    }
    for (const auto& b : model.buffers()) append_tensor_identity(key, b);
    return key;
  }

  /// Gives each trained parameter the gradient `entry`'s last replay produced (none where it produced none).
  void attach_grads(const Entry& entry) {
    for (auto p : trainable()) {
      const auto it = entry.grads.find(p.unsafeGetTensorImpl());
      if (it == entry.grads.end()) {
        if (p.grad().defined()) p.mutable_grad() = torch::Tensor();
      } else if (!p.grad().is_same(it->second)) {
        p.mutable_grad() = it->second;
      }
    }
  }

  /// Detaches from the parameters every gradient that a graph owns (before the graphs and their memory go).
  void release_grads() {
    for (auto p : model.parameters()) {
      if (!p.grad().defined()) continue;
      for (const auto& graph : graphs) {
        const auto it = graph.second.grads.find(p.unsafeGetTensorImpl());
        if (it != graph.second.grads.end() && it->second.is_same(p.grad())) {
          p.mutable_grad() = torch::Tensor();
          break;
        }
      }
    }
  }

  void evict_least_recent() {
    auto oldest = graphs.begin();
    for (auto it = graphs.begin(); it != graphs.end(); ++it) {
      if (it->second.last_used < oldest->second.last_used) oldest = it;
    }
    graphs.erase(oldest);
    ++stats.evictions;
  }

  /// Ends a capture that CUDA invalidated (a host synchronisation inside the step, say): `capture_end` throws
  /// before it tells the allocators that the capture is over, which would leave them routing allocations to the
  /// pool. Best effort: each call may find nothing to end.
  void abandon_capture(Entry& entry, const torch::Device& device) {
    try {
      entry.graph->capture_end();
    } catch (...) {  // the capture's own error is the one to report
    }
    try {
      c10::cuda::CUDACachingAllocator::endAllocateToPool(device.index(), *pool);
    } catch (...) {
    }
    try {
      at::getHostAllocator(at::kCUDA)->end_allocate_to_pool(*pool);
    } catch (...) {
    }
    (void)cudaGetLastError();  // clear the capture error so that later CUDA calls do not report it
    clear_grads(trainable());  // what the broken capture allocated for them lives in its pool
    entry.graph.reset();
    release_grads();
    graphs.clear();
    pool.reset();
    capture_failed = true;
  }

  /// Records the step into `entry` (nothing runs yet), with no gradient defined when it starts: the backward's
  /// gradient tensors are then the graph's outputs, which `entry` keeps.
  void capture(Entry& entry, const torch::Device& device) {
    if (graphs.empty()) pool = at::cuda::graph_pool_handle();
    const auto params = trainable();
    clear_grads(params);
    entry.graph = std::make_unique<at::cuda::CUDAGraph>();
    entry.graph->capture_begin(*pool);
    torch::Tensor loss;
    try {
      loss = step(entry.inputs);
    } catch (const std::exception& e) {
      abandon_capture(entry, device);
      INCRELORA_CHECK(false, "GraphedStep: the training step could not be captured as a CUDA graph: ", e.what(),
                      "\nA captured step must not synchronise with the host (no item(), no printing of tensors, no "
                      "data-dependent shapes, no copies to the CPU) nor copy new host data to the device. This "
                      "GraphedStep runs eagerly from now on; GraphedStepOptions().enabled(false) does so from the start.");
    }
    entry.graph->capture_end();
    if (!loss.defined()) {
      entry.graph.reset();
      clear_grads(params);
      INCRELORA_CHECK(false, "GraphedStep: the step function returned an undefined tensor; return the loss after "
                      "calling backward() on it.");
    }
    entry.loss = loss.detach();
    for (const auto& p : params) {
      if (p.grad().defined()) entry.grads[p.unsafeGetTensorImpl()] = p.grad();
    }
    ++stats.captures;
  }

  torch::Tensor run_graphed(const std::vector<torch::Tensor>& inputs, const torch::Device& device) {
    c10::cuda::CUDAGuard device_guard(device);
    if (!stream) stream = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device.index());
    const auto caller = c10::cuda::getCurrentCUDAStream(device.index());
    // Everything runs on a side stream (capture needs one that is not the default stream; the warm-up uses the
    // same one so that per-stream lazy state, like cuBLAS workspaces, exists before the capture).
    enter_event.record(caller);
    enter_event.block(*stream);
    // The caller's stream waits for the side stream however this scope is left, an exception included: the
    // caller may free the inputs or touch the gradients next.
    struct Join {
      at::cuda::CUDAEvent& event;
      c10::cuda::CUDAStream side, caller;
      bool pending = true;
      void now() {
        if (!pending) return;
        pending = false;
        event.record(side);
        event.block(caller);
      }
      ~Join() {
        try {
          now();
        } catch (...) {  // unwinding already: nothing better to do than not to throw again
        }
      }
    } join{leave_event, *stream, caller};
    torch::Tensor result;
    {
      c10::cuda::CUDAStreamGuard stream_guard(*stream);
      Key input_key;
      for (const auto& t : inputs) append_shape(input_key, t);
      auto& buffers = input_buffers[input_key];
      if (buffers.empty()) {
        for (const auto& t : inputs) buffers.push_back(torch::empty(t.sizes(), t.options().device(device)));
      }
      for (size_t i = 0; i < inputs.size(); ++i) buffers[i].copy_(inputs[i], /*non_blocking=*/true);

      if (device_eager_steps < options.warmup_steps()) {
        result = run_eager(buffers);
        ++device_eager_steps;
      } else {
        if (!warmup_cache_released && options.release_warmup_cache()) {
          clear_grads(trainable());  // the warm-up's gradients: the graphs make their own
          c10::cuda::CUDACachingAllocator::emptyCache();
          warmup_cache_released = true;
        }
        const auto key = state_key(input_key);
        auto it = graphs.find(key);
        if (it == graphs.end()) {
          if (static_cast<int64_t>(graphs.size()) >= options.max_graphs()) evict_least_recent();
          Entry entry;
          entry.inputs = buffers;
          capture(entry, device);
          it = graphs.emplace(key, std::move(entry)).first;
        }
        it->second.last_used = ++clock;
        it->second.graph->replay();
        ++stats.replays;
        result = it->second.loss;
        attach_grads(it->second);
      }
    }
    // A copy made on the caller's stream once it has waited for the side stream: the captured output is
    // rewritten by the next replay.
    join.now();
    c10::cuda::CUDAStreamGuard caller_guard(caller);
    return result.detach().clone();
  }
#endif
};

GraphedStep::GraphedStep(torch::nn::Module& model, StepFunction step, GraphedStepOptions options)
    : impl_(std::make_unique<Impl>(model, std::move(step), options)) {
  INCRELORA_CHECK(impl_->step != nullptr, "GraphedStep: the step function is empty.");
  INCRELORA_CHECK(options.warmup_steps() >= 1, "GraphedStepOptions: warmup_steps must be >= 1 (got ",
                  options.warmup_steps(), "): the first steps must run eagerly to create the gradients.");
  INCRELORA_CHECK(options.max_graphs() >= 1, "GraphedStepOptions: max_graphs must be >= 1 (got ",
                  options.max_graphs(), ").");
}

GraphedStep::~GraphedStep() = default;

bool GraphedStep::cuda_graphs_compiled() {
#ifdef INCRELORA_WITH_CUDA_GRAPHS
  return true;
#else
  return false;
#endif
}

bool GraphedStep::uses_graphs() const { return impl_->graphs_on(impl_->device()); }

const GraphedStepStats& GraphedStep::stats() const { return impl_->stats; }

void GraphedStep::reset() {
#ifdef INCRELORA_WITH_CUDA_GRAPHS
  impl_->release_grads();
  impl_->graphs.clear();
  impl_->input_buffers.clear();
  // The replaced tensors may have new shapes or a new set of trained parameters: warm up again.
  impl_->device_eager_steps = 0;
  impl_->capture_failed = false;
#endif
}

torch::Tensor GraphedStep::operator()(const std::vector<torch::Tensor>& inputs) {
  const auto device = impl_->device();
  for (size_t i = 0; i < inputs.size(); ++i) {
    INCRELORA_CHECK(inputs[i].defined(), "GraphedStep: input ", i, " is undefined; pass defined tensors.");
  }
#ifdef INCRELORA_WITH_CUDA_GRAPHS
  if (impl_->graphs_on(device)) return impl_->run_graphed(inputs, device);
#endif
  std::vector<torch::Tensor> moved;
  moved.reserve(inputs.size());
  for (const auto& t : inputs) moved.push_back(t.device() == device ? t : t.to(device));
  return impl_->run_eager(moved);
}

}  // namespace increlora
