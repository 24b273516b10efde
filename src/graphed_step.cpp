#include "increlora/graphed_step.hpp"

#include "increlora/errors.hpp"
#include "increlora/modules.hpp"
#include "increlora/svd_linear.hpp"

#include <ATen/ops/_foreach_zero.h>

#ifdef INCRELORA_WITH_CUDA_GRAPHS
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
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

  /// Zeroes every gradient that exists, in one multi-tensor kernel.
  static void zero_grads(const std::vector<torch::Tensor>& params) {
    std::vector<torch::Tensor> grads;
    for (const auto& p : params) {
      if (p.grad().defined()) grads.push_back(p.grad());
    }
    if (!grads.empty()) at::_foreach_zero_(grads);
  }

  torch::Tensor run_eager(const std::vector<torch::Tensor>& inputs) {
    zero_grads(trainable());
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
    uint64_t last_used = 0;
  };
  std::optional<c10::cuda::CUDAStream> stream;
  std::optional<c10::MempoolId_t> pool;
  at::cuda::CUDAEvent enter_event, leave_event;
  std::map<Key, std::vector<torch::Tensor>> input_buffers;  // per input signature, outside the graphs' pool
  std::map<Key, Entry> graphs;
  // Gradients live outside the graphs' pool, allocated by the warm-up's eager backward: every graph adds into
  // the same tensors, which the optimizer reads. Keyed by the parameter's TensorImpl.
  std::unordered_map<const c10::TensorImpl*, torch::Tensor> grads;
  uint64_t clock = 0;
  bool warmup_cache_released = false;

  Key state_key(const Key& input_key) const {
    Key key = input_key;
    key.push_back(model.is_training() ? 1 : 0);
    for (const auto& [name, m] : layers) {
      key.push_back(m->rank());
      key.push_back(m->reserve_rank());
      key.push_back(m->is_merged() ? 1 : 0);
      key.push_back(m->is_training() ? 1 : 0);
      append_tensor_identity(key, m->score_sink());
    }
    for (const auto& p : model.parameters()) {
      append_tensor_identity(key, p);
      key.push_back(p.requires_grad() ? 1 : 0);
    }
    for (const auto& b : model.buffers()) append_tensor_identity(key, b);
    return key;
  }

  void adopt_grads() {
    for (const auto& p : trainable()) {
      if (p.grad().defined()) grads[p.unsafeGetTensorImpl()] = p.grad();
    }
  }

  void attach_grads() {
    for (auto& p : trainable()) {
      const auto it = grads.find(p.unsafeGetTensorImpl());
      if (it != grads.end() && !p.grad().is_same(it->second)) p.mutable_grad() = it->second;
    }
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

  /// Records the step into a new graph (nothing runs yet). Returns false when the captured backward created a
  /// gradient this object does not own (a parameter that got none in the warm-up): that gradient then lives in
  /// the graph's pool, so the graph is dropped, the parameter gets an owned gradient and the caller captures again.
  bool capture(Entry& entry) {
    if (!pool) pool = at::cuda::graph_pool_handle();
    attach_grads();
    const auto zero_list = owned_grads();
    entry.graph = std::make_unique<at::cuda::CUDAGraph>();
    entry.graph->capture_begin(*pool);
    try {
      if (!zero_list.empty()) at::_foreach_zero_(zero_list);
      const auto loss = step(entry.inputs);
      entry.loss = loss.defined() ? loss.detach() : loss;
    } catch (const std::exception& e) {
      try {
        entry.graph->capture_end();
      } catch (...) {  // the capture is already invalid; its error is the one to report
      }
      entry.graph.reset();
      INCRELORA_CHECK(false, "GraphedStep: the training step could not be captured as a CUDA graph: ", e.what(),
                      "\nA captured step must not synchronise with the host (no item(), no printing of tensors, no "
                      "data-dependent shapes, no copies to the CPU) nor copy new host data to the device; run it "
                      "with GraphedStepOptions().enabled(false) to use it eagerly.");
    }
    entry.graph->capture_end();
    INCRELORA_CHECK(entry.loss.defined(), "GraphedStep: the step function returned an undefined tensor; return the "
                    "loss after calling backward() on it.");
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
    }
    ++stats.captures;
    return clean;
  }

  torch::Tensor run_graphed(const std::vector<torch::Tensor>& inputs, const torch::Device& device) {
    c10::cuda::CUDAGuard device_guard(device);
    if (!stream) stream = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device.index());
    const auto caller = c10::cuda::getCurrentCUDAStream(device.index());
    // Everything runs on a side stream (capture needs one that is not the default stream; the warm-up uses the
    // same one so that per-stream lazy state, like cuBLAS workspaces, exists before the capture).
    enter_event.record(caller);
    enter_event.block(*stream);
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
          it = graphs.emplace(key, Entry{}).first;
          it->second.inputs = buffers;
          bool captured = false;
          for (int attempt = 0; attempt < 2 && !captured; ++attempt) captured = capture(it->second);
          if (!captured) {
            graphs.erase(it);
            INCRELORA_CHECK(false, "GraphedStep: the captured backward keeps creating gradients for parameters "
                            "outside the warm-up's set; make the set of trained parameters the same at every step.");
          }
        }
        it->second.last_used = ++clock;
        it->second.graph->replay();
        ++stats.replays;
        result = it->second.loss;
      }
      attach_grads();
    }
    leave_event.record(*stream);
    leave_event.block(caller);
    // A copy made on the caller's stream: the captured output is rewritten by the next replay.
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

bool GraphedStep::uses_graphs() const {
  return cuda_graphs_compiled() && impl_->options.enabled() && impl_->device().is_cuda();
}

const GraphedStepStats& GraphedStep::stats() const { return impl_->stats; }

void GraphedStep::reset() {
#ifdef INCRELORA_WITH_CUDA_GRAPHS
  impl_->graphs.clear();
  impl_->input_buffers.clear();
  // The replaced tensors may have new shapes or a new set of trained parameters: warm up again and take the
  // gradients the next eager backward creates.
  impl_->grads.clear();
  impl_->device_eager_steps = 0;
#endif
}

torch::Tensor GraphedStep::operator()(const std::vector<torch::Tensor>& inputs) {
  const auto device = impl_->device();
  for (size_t i = 0; i < inputs.size(); ++i) {
    INCRELORA_CHECK(inputs[i].defined(), "GraphedStep: input ", i, " is undefined; pass defined tensors.");
  }
#ifdef INCRELORA_WITH_CUDA_GRAPHS
  if (uses_graphs()) return impl_->run_graphed(inputs, device);
#endif
  std::vector<torch::Tensor> moved;
  moved.reserve(inputs.size());
  for (const auto& t : inputs) moved.push_back(t.device() == device ? t : t.to(device));
  return impl_->run_eager(moved);
}

}  // namespace increlora
