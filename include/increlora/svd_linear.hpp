#pragma once
/// \file
/// `SVDLinear`: a linear layer with an incremental matrix in SVD form whose rank can grow during training
/// while its parameter tensors stay the same objects (so optimizers, all-reduce and checkpoints see one
/// static set of tensors).

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>
#include <torch/serialize/input-archive.h>
#include <torch/types.h>

#include <cstdint>
#include <ostream>
#include <vector>

namespace increlora {
namespace detail {
class AdapterFactorScope;
}  // namespace detail

/// Options of `SVDLinear`. The required arguments are the layer's shape; the adapter settings carry the
/// keyword names of the original `loralib.SVDLinear`.
///
/// Example:
/// \code
///   increlora::SVDLinear fc(increlora::SVDLinearOptions(768, 768).r(1).lora_alpha(16).capacity(16));
/// \endcode
struct SVDLinearOptions {
  SVDLinearOptions(int64_t in_features, int64_t out_features);

  /// Width of each input sample.
  TORCH_ARG(int64_t, in_features);
  /// Width of each output sample.
  TORCH_ARG(int64_t, out_features);
  /// Initial rank of the incremental matrix (the number of active triplets at the start). 0 makes the layer
  /// exactly a `torch::nn::Linear`: no adapter tensors at all.
  TORCH_ARG(int64_t, r) = 0;
  /// Numerator of the scale s = lora_alpha / (rank + 1e-5) applied to ΔW, as in the original code.
  TORCH_ARG(double, lora_alpha) = 1.0;
  /// Dropout probability applied to the adapter branch's input during training.
  TORCH_ARG(double, lora_dropout) = 0.0;
  /// Whether the frozen base layer has a bias.
  TORCH_ARG(bool, bias) = true;
  /// Most triplets this module can ever hold (active + advance-learning reserve). The banks are allocated
  /// at this size once; the allocator skips a module that is full. 0 picks max(16, 4 r).
  TORCH_ARG(int64_t, capacity) = 0;
};

/// What one slot of the banks is doing. Stored per slot in the buffer `lora_slot_state`.
enum class SlotState : int64_t {
  kUnused = 0,   ///< adds nothing to the forward (its coefficient is 0, so is its gradient); fresh random P, Q, λ = 0
  kActive = 1,   ///< a trained triplet of the incremental matrix
  kReserve = 2,  ///< advance learning: P and Q train, λ is held at a tiny constant and receives no update
};

/// A linear layer y = W x + b + ((drop(x) Qᵀ) ⊙ (λ s)) Pᵀ with a frozen base (W, b) and an incremental
/// matrix ΔW = P diag(λ) Q s stored as fixed-capacity banks:
///
///   lora_B  P  [out_features × capacity]   left singular vectors (columns are slots)
///   lora_E  λ  [capacity]                  singular values
///   lora_A  Q  [capacity × in_features]    right singular vectors (rows are slots)
///
/// Slots [0, rank) are active; under advance learning the next slots are a reserve whose P and Q train
/// while λ is held. Growing the rank flips slot states and rescales λ so that the layer's output does not
/// change; it never registers a new tensor. The base product and the adapter branch run as one autograd function
/// over the whole banks (unused slots weigh 0 and get zero gradients), which never builds ΔW, adds the branch
/// into the base's output and input gradient without separate kernels and, when a score sink is attached, also
/// accumulates the paper's importance score Σ|ΔW ⊙ ∂L/∂ΔW| / sqrt(numel ΔW) in its backward.
///
/// Host-side rank state mirrors the buffers `lora_ranknum`, `lora_slot_state`, `lora_lambda_start` and
/// `lora_factor_start`; after copying buffers in by hand (e.g. `torch::load`) call `sync_rank_state()`.
class SVDLinearImpl : public torch::nn::Cloneable<SVDLinearImpl> {
 public:
  SVDLinearImpl(int64_t in_features, int64_t out_features)
      : SVDLinearImpl(SVDLinearOptions(in_features, out_features)) {}
  explicit SVDLinearImpl(const SVDLinearOptions& options);
  /// Wraps an existing linear layer: the new module shares (does not copy) `linear`'s weight and bias
  /// tensors, and freezes them; its banks take the layer's device and dtype. `options` must have the same
  /// in/out features; its `bias` is ignored.
  SVDLinearImpl(const torch::nn::Linear& linear, const SVDLinearOptions& options);

  void reset() override;
  /// Draws the adapter banks: P, Q ~ N(0, 0.02²) and λ = 0 in every slot, so ΔW = 0. The base weight is
  /// initialised as `torch::nn::Linear` does.
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;
  std::shared_ptr<torch::nn::Module> clone(
      const std::optional<torch::Device>& device = std::nullopt) const override;

  torch::Tensor forward(const torch::Tensor& input);

  /// As `Module::to`, but the integer rank buffers (slot states, warmup starts) stay int64: a floating
  /// dtype would round their step numbers (bf16 holds integers exactly only up to 256).
  void to(torch::Device device, torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Dtype dtype, bool non_blocking = false) override;
  /// Unchanged: declared so that overriding the other two overloads does not hide it.
  void to(torch::Device device, bool non_blocking = false) override;
  /// As `Module::load` (what `torch::load` calls), then re-reads the rank state from the loaded buffers.
  void load(torch::serialize::InputArchive& archive) override;

  /// Whether this module has adapter banks (capacity > 0).
  bool has_adapter() const { return capacity_ > 0; }
  /// Number of active triplets: the rank of the incremental matrix.
  int64_t rank() const { return active_; }
  /// Number of advance-learning reserve triplets (0 without advance learning and after the budget).
  int64_t reserve_rank() const { return reserve_; }
  /// Slots taking part in the forward: active plus reserve.
  int64_t in_use() const { return active_ + reserve_; }
  int64_t capacity() const { return capacity_; }
  /// s = lora_alpha / (rank + 1e-5).
  double scale() const;
  /// The value λ is held at in reserve slots: 1e-5 at the initial rank, grown with the rank so that
  /// λ_reserve · s (the reserve's contribution) stays constant across growth.
  double reserve_lambda() const;

  /// ΔW = P diag(λ) Q s over the slots in use, as a dense [out × in] tensor in the weight's dtype (for
  /// merging, export and tests; the forward never builds it).
  torch::Tensor delta_weight() const;
  /// Folds ΔW into the base weight (inference); the forward then runs the base layer only. The merged state is
  /// not part of the module's tensors: save a merged model with `merge_and_export`, not `torch::save`, or
  /// `unmerge()` first.
  void merge();
  /// Subtracts ΔW from the base weight again.
  void unmerge();
  bool is_merged() const { return merged_; }

  /// Turns `count` reserve slots after the active ones into advance-learning reserves (`count` = 0
  /// removes the reserve). Fresh reserves start with P = 0, so creating them leaves the output unchanged.
  void set_reserve(int64_t count);
  /// Activates `count` more triplets at training step `step` (reserve slots first, then unused ones),
  /// rescaling λ so that the output is unchanged, and keeps the reserve at `reserve_after` slots.
  /// Returns the new rank. Throws when the module is merged or has no room.
  int64_t grow(int64_t count, int64_t step, int64_t reserve_after);

  /// Replaces the incremental matrix with the r = P.size(1) triplets given (P [out × r], λ [r], Q [r × in],
  /// any floating dtype and device): slots [0, r) become active with these values, the others unused with
  /// fresh random P and Q and λ = 0, no reserve, every start step -1 (trained from the start). The layer then
  /// computes W x + b + P diag(λ) Q x · scale(), with scale() for rank r. Throws when r exceeds the capacity,
  /// the shapes do not fit, or the layer is merged.
  void assign(const torch::Tensor& P, const torch::Tensor& lambda, const torch::Tensor& Q);

  /// Attaches a float32 tensor to which each backward adds this module's importance score, or detaches it
  /// (undefined tensor): scoring costs an extra matrix product, so it runs only when asked. A 0-dim sink
  /// receives the score Σ|ΔW ⊙ ∂L/∂ΔW| / sqrt(numel ΔW) of each backward; an [out × in] sink receives ∂L/∂ΔW
  /// itself (summed over backward passes, for gradient accumulation: the score is then taken once from the
  /// sum, as for one big batch).
  void set_score_sink(torch::Tensor sink) { score_sink_ = std::move(sink); }
  const torch::Tensor& score_sink() const { return score_sink_; }

  /// Re-reads the host-side rank state from the buffers (after they were overwritten by a load).
  void sync_rank_state();

  /// Per slot, the training step at which λ started training, and at which P and Q started training
  /// (-1: from the start). Host-side copies of the buffers, read by the restart warmup without a device sync.
  const std::vector<int64_t>& lambda_start() const { return lambda_start_; }
  const std::vector<int64_t>& factor_start() const { return factor_start_; }

  const SVDLinearOptions& options() const { return options_; }

  /// The frozen base weight [out × in] and bias [out] (undefined when `bias(false)`).
  torch::Tensor weight;
  torch::Tensor bias;
  /// The adapter banks (undefined when the module has no adapter).
  torch::Tensor lora_A;  ///< Q  [capacity × in]
  torch::Tensor lora_E;  ///< λ  [capacity]
  torch::Tensor lora_B;  ///< P  [out × capacity]
  /// Buffers: the active rank (as the original's `ranknum`), each slot's `SlotState`, and the training
  /// step at which each slot's λ started training and its P, Q started training (-1: from the start).
  /// The last two drive the restart warmup.
  torch::Tensor lora_ranknum;
  torch::Tensor lora_slot_state;
  torch::Tensor lora_lambda_start;
  torch::Tensor lora_factor_start;

 private:
  friend class detail::AdapterFactorScope;  // reads the slot coefficients to compute many layers' factors at once
  void register_adapter();
  void write_rank_state();
  std::vector<torch::Tensor> integer_buffers() const;
  void restore_integer_buffers(const std::vector<torch::Tensor>& saved);
  void resize_reserve(int64_t count, int64_t step);
  /// Fresh slots [first, first + n): Q ~ N(0, 0.02²), P likewise or 0, λ = 0, P/Q training from `step`.
  void init_slots(int64_t first, int64_t n, int64_t step, bool zero_P);
  void check_input(const torch::Tensor& input, bool autocast) const;
  /// Whether slot_gate_ and slot_held_ exist on the banks' device and in their dtype.
  bool slot_coefficients_current() const;
  /// Writes the rank state's gate and held values into the two [capacity] tensors.
  void fill_slot_coefficients(torch::Tensor& gate, torch::Tensor& held) const;
  /// Brings slot_gate_ and slot_held_ up to the rank state (in place when they are current).
  void refresh_slot_coefficients();
  /// The per-slot coefficient c = λ ⊙ gate + held of every slot (no gradient path needed: merge, export, tests).
  torch::Tensor slot_coefficients() const;

  SVDLinearOptions options_;
  int64_t capacity_ = 0;
  int64_t active_ = 0;
  int64_t reserve_ = 0;
  bool merged_ = false;
  std::vector<int64_t> lambda_start_;
  std::vector<int64_t> factor_start_;
  torch::Tensor score_sink_;
  /// Per slot, what multiplies λ in the forward (s on active slots, else 0) and what is added to it (the held
  /// λ·s on reserve slots, else 0): the slot coefficient is λ ⊙ gate + held. Derived state, not saved.
  torch::Tensor slot_gate_;
  torch::Tensor slot_held_;
};

/// A `ModuleHolder` for `SVDLinearImpl`, as `torch::nn::Linear` is for `LinearImpl`.
TORCH_MODULE(SVDLinear);

}  // namespace increlora
