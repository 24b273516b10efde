#pragma once
// Counts the ATen operators a piece of code dispatches that do work: a device-independent proxy for the number of
// kernels a step launches, measurable on a CPU. On a GPU most of an adapted step's kernels are small and each
// costs about the same few microseconds whatever it computes (issue 14's profiles), so the count moves with the
// step's time there; here it can be measured on any machine, and asserted in a test.
//
// What is counted: each top-level operator (one not called from inside another; a backward formula's operators
// are top-level: the engine's records of the nodes it runs are looked through), except
//   * views and allocations, which launch nothing (view, t, narrow, expand, empty, ...);
//   * conversions that turned out to be no-ops (`to`, `contiguous`, `reshape` and the like that called no
//     operator doing work underneath).
// On CUDA a top-level operator is then one kernel, give or take: a multi-tensor `_foreach_` op is one on CUDA (its
// CPU fallback loops per tensor underneath, which is not counted), a GEMM with β = 1 is one. With CUDA graphs
// replayed nothing is dispatched: count an eager step.
//
// One OpCounter at a time (it installs a global RecordFunction callback for its lifetime). Code under a
// RECORD_USER_SCOPE("step.<part>") (as bench_step's) has its operators counted under <part>, the rest under
// "other".
#include <ATen/record_function.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace increlora_bench {

class OpCounter {
 public:
  OpCounter() {
    if (active() != nullptr) throw std::logic_error("OpCounter: only one may count at a time");
    active() = this;
    handle_ = at::addGlobalCallback(
        at::RecordFunctionCallback(&OpCounter::on_start, &OpCounter::on_end)
            .scopes({at::RecordScope::FUNCTION, at::RecordScope::USER_SCOPE})
            .needsInputs(false));
  }
  ~OpCounter() {
    at::removeCallback(handle_);
    active() = nullptr;
  }
  OpCounter(const OpCounter&) = delete;
  OpCounter& operator=(const OpCounter&) = delete;

  /// Per part, per operator name ("aten::addmm"): how many were dispatched.
  std::map<std::string, std::map<std::string, int64_t>> counts() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return counts_;
  }

 private:
  struct Frame {
    std::string name;
    bool nested_work = false;
    bool transparent = false;  // the autograd engine's wrapper around a backward node, not an operator
  };
  struct ThreadState {
    std::vector<Frame> stack;
    std::vector<std::string> parts;  // the open "step.<part>" scopes, innermost last
  };

  static OpCounter*& active() {
    static OpCounter* counter = nullptr;
    return counter;
  }
  static ThreadState& thread_state() {
    thread_local ThreadState state;
    return state;
  }
  static bool is_user_scope(const at::RecordFunction& fn) { return fn.scope() == at::RecordScope::USER_SCOPE; }

  // Operators that only make a new view or allocate: no kernel.
  static bool launches_nothing(const std::string& name) {
    static const std::set<std::string> names = {
        "aten::view", "aten::_unsafe_view", "aten::_reshape_alias", "aten::as_strided", "aten::alias",
        "aten::t", "aten::transpose", "aten::permute", "aten::narrow", "aten::slice", "aten::select",
        "aten::unsqueeze", "aten::squeeze", "aten::expand", "aten::expand_as", "aten::diagonal", "aten::detach",
        "aten::split", "aten::split_with_sizes", "aten::chunk", "aten::unbind", "aten::unflatten",
        "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::resize_", "aten::lift_fresh",
        "aten::result_type", "aten::is_nonzero", "aten::_has_compatible_shallow_copy_type", "aten::set_",
        "aten::view_as", "aten::numpy_T", "aten::matrix_H", "aten::mT", "aten::mH", "aten::adjoint",
        "aten::_local_scalar_dense", "aten::item", "aten::requires_grad_", "aten::retain_grad"};
    return names.count(name) > 0;
  }
  // Operators that work through others (linear → addmm) or may return their input unchanged (`to` of the same
  // dtype): counted only when an operator underneath did work.
  static bool works_through_others(const std::string& name) {
    static const std::set<std::string> names = {
        "aten::to", "aten::_to_copy", "aten::contiguous", "aten::reshape", "aten::flatten", "aten::type_as",
        "aten::clone", "aten::linear", "aten::matmul", "aten::dropout", "aten::feature_dropout",
        "aten::reshape_as"};
    return names.count(name) > 0;
  }

  static std::unique_ptr<at::ObserverContext> on_start(const at::RecordFunction& fn) {
    auto& st = thread_state();
    std::string name = fn.name();
    if (is_user_scope(fn)) {
      if (name.rfind("step.", 0) == 0) st.parts.push_back(name.substr(5));
      return nullptr;
    }
    // The engine records each backward node it runs ("autograd::engine::evaluate_function: MmBackward0") as a
    // function too: a wrapper, whose operators count as top-level.
    const bool transparent = name.rfind("autograd::", 0) == 0;
    st.stack.push_back({std::move(name), false, transparent});
    return nullptr;
  }

  static void on_end(const at::RecordFunction& fn, at::ObserverContext*) {
    auto& st = thread_state();
    if (is_user_scope(fn)) {
      const std::string name = fn.name();
      if (name.rfind("step.", 0) == 0 && !st.parts.empty()) st.parts.pop_back();
      return;
    }
    if (st.stack.empty()) return;  // started before the counter existed
    Frame frame = std::move(st.stack.back());
    st.stack.pop_back();
    if (frame.transparent) return;
    const bool did_work =
        !launches_nothing(frame.name) && (frame.nested_work || !works_through_others(frame.name));
    Frame* parent = nullptr;  // the innermost enclosing operator
    for (auto it = st.stack.rbegin(); it != st.stack.rend(); ++it) {
      if (!it->transparent) {
        parent = &*it;
        break;
      }
    }
    if (parent != nullptr) {
      if (did_work) parent->nested_work = true;
      return;
    }
    if (!did_work) return;
    OpCounter* counter = active();
    if (counter == nullptr) return;
    const std::string part = st.parts.empty() ? "other" : st.parts.back();
    std::lock_guard<std::mutex> lock(counter->mutex_);
    ++counter->counts_[part][frame.name];
  }

  at::CallbackHandle handle_ = 0;
  mutable std::mutex mutex_;
  std::map<std::string, std::map<std::string, int64_t>> counts_;
};

}  // namespace increlora_bench
