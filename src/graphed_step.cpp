#include "increlora/graphed_step.hpp"

#include "increlora/detail/adapter_factors.hpp"
#include "increlora/detail/tensor_kind.hpp"
#include "increlora/errors.hpp"
#include "increlora/modules.hpp"
#include "increlora/svd_linear.hpp"

#include <ATen/ops/_foreach_zero.h>

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
      : model(m), step(std::move(f)), options(o), layers(named_svd_linears(m, /*adapters_only=*/false)) {
    for (const auto& named : layers) {
      if (named.second->has_adapter()) adapted.push_back(named.second.get());
    }
  }

  torch::nn::Module& model;
  StepFunction step;
  GraphedStepOptions options;
  GraphedStepStats stats;
  std::vector<NamedSVDLinear> layers;
  std::vector<SVDLinearImpl*> adapted;  // the layers with adapter banks, for the factor scope of each step
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

  /// Zeroes every gradient that exists, in one multi-tensor kernel per (device, dtype).
  static void zero_grads(const std::vector<torch::Tensor>& params) {
    std::vector<torch::Tensor> grads;
    for (const auto& p : params) {
      if (p.grad().defined()) grads.push_back(p.grad());
    }
    zero_by_kind(grads);
  }

  /// `_foreach_zero_` takes its multi-tensor kernel only for a list of one device and one dtype; a mixed list
  /// (float32 banks beside a bf16 head, say) falls back to one fill kernel per tensor, which in a graph of an
  /// adapted BERT-base was 250 launches a step. So each (device, dtype) group is zeroed by its own call.
  static void zero_by_kind(const std::vector<torch::Tensor>& tensors) {
    std::map<detail::TensorKind, std::vector<torch::Tensor>> groups;
    for (const auto& t : tensors) groups[detail::kind_of(t)].push_back(t);
    for (auto& group : groups) at::_foreach_zero_(group.second);
  }

  /// The step function, with the adapted layers' factors computed together (detail::AdapterFactorScope): inside a
  /// capture, the stacking kernels are recorded with the step and recompute the factors at each replay.
  torch::Tensor call_step(const std::vector<torch::Tensor>& inputs) {
    detail::AdapterFactorScope scope(adapted);
    return step(inputs);
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
    zero_grads(trainable());
    ++stats.eager_steps;
    auto loss = call_step(inputs);
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
    uint64_t last_used = 0;
  };
  std::optional<c10::cuda::CUDAStream> stream;
  // The memory pool every live graph shares. The allocator frees a pool once no graph uses it and refuses a
  // capture into it after that, so a capture with no live graph takes a fresh pool.
  std::optional<c10::MempoolId_t> pool;
  at::cuda::CUDAEvent enter_event, leave_event;
  std::map<Key, std::vector<torch::Tensor>> input_buffers;  // per input signature, outside the graphs' pool
  std::map<Key, Entry> graphs;  // only graphs that were captured cleanly
  // Gradients live outside the graphs' pool, allocated by the warm-up's eager backward: every graph adds into
  // the same tensors, which the optimizer reads. Keyed by the parameter's TensorImpl.
  std::unordered_map<const c10::TensorImpl*, torch::Tensor> grads;
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

  static bool fits(const torch::Tensor& grad, const torch::Tensor& param) {
    return grad.sizes() == param.sizes() && grad.scalar_type() == param.scalar_type() &&
           grad.device() == param.device();
  }

  void adopt_grads() {
    for (const auto& p : trainable()) {
      if (p.grad().defined()) grads[p.unsafeGetTensorImpl()] = p.grad();
    }
  }

  /// Puts the held gradients back on their parameters. A held gradient that no longer fits its parameter (moved
  /// or converted since) is dropped: the next capture then sees a gradient it does not own and replaces it.
  void attach_grads() {
    for (auto& p : trainable()) {
      const auto it = grads.find(p.unsafeGetTensorImpl());
      if (it == grads.end()) continue;
      if (!fits(it->second, p)) {
        grads.erase(it);
        continue;
      }
      if (!p.grad().is_same(it->second)) p.mutable_grad() = it->second;
    }
  }

  void release_grads() {
    for (auto& p : model.parameters()) {
      const auto it = grads.find(p.unsafeGetTensorImpl());
      if (it != grads.end() && p.grad().is_same(it->second)) p.mutable_grad() = torch::Tensor();
    }
    grads.clear();
  }

  std::vector<torch::Tensor> owned_grads() const {
    std::vector<torch::Tensor> out;
    out.reserve(grads.size());
    for (const auto& entry : grads) out.push_back(entry.second);
    return out;
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
    entry.graph.reset();
    graphs.clear();
    pool.reset();
    capture_failed = true;
  }

  /// Records the step into `entry` (nothing runs yet). Returns false when the captured backward created a
  /// gradient this object does not own (a parameter that got none in the warm-up): that gradient then lives in
  /// the graph's pool, so the graph is dropped, the parameter gets an owned gradient and the caller captures again.
  bool capture(Entry& entry, const torch::Device& device) {
    if (graphs.empty()) pool = at::cuda::graph_pool_handle();
    attach_grads();
    const auto zero_list = owned_grads();
    entry.graph = std::make_unique<at::cuda::CUDAGraph>();
    entry.graph->capture_begin(*pool);
    torch::Tensor loss;
    try {
      zero_by_kind(zero_list);
      loss = call_step(entry.inputs);
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
      INCRELORA_CHECK(false, "GraphedStep: the step function returned an undefined tensor; return the loss after "
                      "calling backward() on it.");
    }
    entry.loss = loss.detach();
    bool clean = true;
    for (auto& p : trainable()) {
      if (!p.grad().defined()) continue;
      const auto it = grads.find(p.unsafeGetTensorImpl());
      if (it != grads.end() && p.grad().is_same(it->second)) continue;
      clean = false;
      grads[p.unsafeGetTensorImpl()] = torch::zeros_like(p);  // allocated outside the pool: not capturing now
    }
    if (!clean) {
      entry.graph.reset();
      entry.loss = torch::Tensor();
      attach_grads();
      return false;
    }
    ++stats.captures;
    return true;
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
        if (++device_eager_steps == options.warmup_steps()) adopt_grads();
      } else {
        if (!warmup_cache_released && options.release_warmup_cache()) {
          c10::cuda::CUDACachingAllocator::emptyCache();
          warmup_cache_released = true;
        }
        const auto key = state_key(input_key);
        auto it = graphs.find(key);
        if (it == graphs.end()) {
          if (static_cast<int64_t>(graphs.size()) >= options.max_graphs()) evict_least_recent();
          Entry entry;
          entry.inputs = buffers;
          bool captured = false;
          for (int attempt = 0; attempt < 2 && !captured; ++attempt) captured = capture(entry, device);
          INCRELORA_CHECK(captured, "GraphedStep: the captured backward keeps creating gradients for parameters "
                          "outside the warm-up's set; make the set of trained parameters the same at every step.");
          it = graphs.emplace(key, std::move(entry)).first;
        }
        it->second.last_used = ++clock;
        it->second.graph->replay();
        ++stats.replays;
        result = it->second.loss;
      }
      attach_grads();
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
  impl_->graphs.clear();
  impl_->input_buffers.clear();
  // The replaced tensors may have new shapes or a new set of trained parameters: warm up again and take the
  // gradients the next eager backward creates.
  impl_->release_grads();
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
