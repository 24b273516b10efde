#pragma once
/// \file
/// Data-parallel training over c10d, LibTorch's communication library (the one DDP uses): one process per GPU,
/// as torchrun launches them, each with a full replica of the model and its own shard of the data. What keeps
/// the replicas identical:
///
/// * `broadcast_parameters` copies rank 0's trainable tensors to every rank once, at the start;
/// * `GradientReducer` averages the trainable gradients (adapters and head) over the ranks once per step, in
///   flat buckets, before clipping and the optimizer;
/// * `reduce_scores` is the allocator's `RankAllocatorOptions::reduce_scores`: it averages the per-layer score
///   vector before the EMA update, so that every rank grows the same layers (without it each rank would score
///   its own micro-batches and the replicas' rank patterns would drift apart);
/// * `shard` / `shard_indices` give every rank an equal share of one permutation that all ranks agree on.
///
/// The process group comes from `init_process_group` (TCPStore rendezvous at MASTER_ADDR:MASTER_PORT, then
/// ProcessGroupNCCL). Only NCCL is offered: the wheel's ProcessGroupGloo.hpp includes gloo headers that the
/// wheel does not ship, so a C++ program cannot build against LibTorch's CPU backend. Every function here
/// takes any `c10d::ProcessGroup`, so another backend (the tests use an in-process one) works the same way.

#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/arg.h>
#include <torch/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace increlora::distributed {

using ProcessGroupPtr = c10::intrusive_ptr<c10d::ProcessGroup>;

/// Where this process stands in a torchrun launch.
struct Environment {
  int64_t rank = 0;
  int64_t world_size = 1;
  int64_t local_rank = 0;
  std::string master_addr;
  int64_t master_port = 0;
  /// True when the variables were set (a launch, even of one process); false: a plain single process.
  bool launched = false;
  /// TORCHELASTIC_USE_AGENT_STORE=True: torchrun's agent already serves the TCPStore at MASTER_ADDR:MASTER_PORT,
  /// so every rank, rank 0 included, connects to it as a client (as Python's init_process_group does).
  bool agent_store = false;
};

/// Reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT through `lookup` (nullopt: not set). None
/// set: a single process (`launched` false). TORCHELASTIC_USE_AGENT_STORE (torchrun's) sets `agent_store`.
/// RANK and WORLD_SIZE go together; LOCAL_RANK defaults to RANK;
/// MASTER_ADDR and MASTER_PORT are needed with WORLD_SIZE > 1 and default to 127.0.0.1:29500 with 1. Throws
/// c10::Error naming the variable for a value that is not a whole number, out of range (rank >= world size,
/// port outside 1..65535) or missing beside the others.
Environment parse_environment(const std::function<std::optional<std::string>(const std::string&)>& lookup);
/// parse_environment over this process's environment variables.
Environment environment_from_process();

/// The TCPStore of a launch: rank 0 serves it at master_addr:master_port (unless torchrun's agent does:
/// `agent_store`), the others connect; the store waits for all `world_size` of them within `timeout`.
c10::intrusive_ptr<c10d::Store> make_store(const Environment& env,
                                           std::chrono::milliseconds timeout = std::chrono::minutes(10));

/// Whether this build of increlora has ProcessGroupNCCL (LibTorch's CUDA libraries and nccl.h were found).
bool nccl_available();
/// The NCCL process group of a launch over `store`, bound to `device` (cuda:LOCAL_RANK). Throws c10::Error when
/// the build has no NCCL (see nccl_available) or `device` is not a CUDA device.
ProcessGroupPtr init_nccl_process_group(const c10::intrusive_ptr<c10d::Store>& store, const Environment& env,
                                        const torch::Device& device,
                                        std::chrono::milliseconds timeout = std::chrono::minutes(10));
/// make_store + init_nccl_process_group.
ProcessGroupPtr init_process_group(const Environment& env, const torch::Device& device,
                                   std::chrono::milliseconds timeout = std::chrono::minutes(10));

/// `RankAllocatorOptions::reduce_scores` for `group`: the score vector becomes its average over the ranks (one
/// all-reduce of a few floats). The allocator calls it on scoring steps only, the same steps on every rank.
std::function<void(torch::Tensor&)> reduce_scores(ProcessGroupPtr group);

/// Replaces every tensor of `tensors` by rank `root`'s (in place, one broadcast per tensor): replicas that
/// were initialised apart (a random head) start identical.
void broadcast_parameters(const ProcessGroupPtr& group, const std::vector<torch::Tensor>& tensors, int64_t root = 0);

/// Averages `value` (a tensor on the group's device) over the ranks in place.
void all_reduce_mean(const ProcessGroupPtr& group, torch::Tensor& value);

/// Waits until every rank got here.
void barrier(const ProcessGroupPtr& group);

/// Ends `group`'s communicators, as Python's `destroy_process_group` does: `shutdown` (the ranks finished their
/// collectives: waits for what is in flight, then frees the communicators) or `abort` (an error is unwinding this
/// rank: the others may be waiting in a collective that will never complete, so nothing is waited for). Without
/// it ProcessGroupNCCL tears its communicators down from static destructors at exit and warns that
/// destroy_process_group() was not called. A null group is a no-op; the group cannot be used afterwards.
enum class GroupEnd { shutdown, abort };
void end_process_group(const ProcessGroupPtr& group, GroupEnd how = GroupEnd::shutdown);

struct GradientReducerOptions {
  /// The most bytes of gradients per flat bucket (a tensor larger than this gets a bucket of its own).
  TORCH_ARG(double, bucket_mb) = 25.0;
};

/// Averages the gradients of `parameters` over the ranks, once per optimizer step (call `reduce()` after the
/// backward passes of a step and before clipping). Parameters that do not require a gradient (frozen weights)
/// are never part of it; one whose gradient is undefined this step is left undefined, so every rank must
/// have the same set of defined gradients (true when the ranks run the same model and loss).
///
/// How: the gradients are copied into flat buckets of at most bucket_mb (one dtype and device each, in the
/// parameters' order), one all-reduce (sum) per bucket is launched, then each is waited for, divided by the
/// world size and copied back. The collectives run after the backward, not overlapped with it from autograd
/// hooks as DDP's c10d::Reducer does, because (1) with GraphedStep the backward is a captured CUDA graph,
/// and a collective launched from a hook would be captured into it (NCCL in graphs needs a fixed
/// communicator and buffers per graph, and every re-capture after an allocation round would have to
/// agree across ranks); (2) with gradient accumulation the hooks fire on every micro-batch and only the last
/// must reduce; (3) c10d::Reducer expects a fixed parameter list with DDP's Python-side setup (bucket
/// assignment, unused-parameter search) that LibTorch does not expose as a C++ API. The buckets still make
/// the communication a few large messages instead of one per tensor.
class GradientReducer {
 public:
  GradientReducer(ProcessGroupPtr group, std::vector<torch::Tensor> parameters,
                  GradientReducerOptions options = GradientReducerOptions());
  /// Averages the defined gradients over the ranks.
  void reduce();
  /// The buckets of the last reduce(): for each, the indices into `parameters` it held.
  const std::vector<std::vector<size_t>>& buckets() const { return buckets_; }

 private:
  ProcessGroupPtr group_;
  std::vector<torch::Tensor> parameters_;
  GradientReducerOptions options_;
  std::vector<std::vector<size_t>> buckets_;
};

/// What `shard` does with the examples of a permutation that do not divide by the world size.
enum class Remainder {
  kDrop,  ///< the last (size % world) examples of the permutation are left out of this epoch
  kPad,   ///< the shards are filled up with the permutation's first examples again (every example is seen)
};

/// Rank `rank`'s share of `permutation` over `world_size` ranks: the strided part permutation[rank],
/// permutation[rank + world_size], ... after the remainder is dropped or padded, so that every rank gets the
/// same number of examples (and so the same number of batches: no rank waits in a collective the others never
/// reach). With world_size 1 it is the permutation itself.
std::vector<size_t> shard(const std::vector<size_t>& permutation, int64_t rank, int64_t world_size,
                          Remainder remainder = Remainder::kPad);
/// A permutation of 0..size-1 that depends only on `seed` and `epoch` (every rank computes the same).
std::vector<size_t> epoch_permutation(size_t size, uint64_t seed, int64_t epoch);
/// shard(epoch_permutation(size, seed, epoch), rank, world_size, remainder).
std::vector<size_t> shard_indices(size_t size, uint64_t seed, int64_t epoch, int64_t rank, int64_t world_size,
                                  Remainder remainder = Remainder::kPad);
/// The examples per rank that `shard` gives.
size_t shard_size(size_t size, int64_t world_size, Remainder remainder = Remainder::kPad);

}  // namespace increlora::distributed
