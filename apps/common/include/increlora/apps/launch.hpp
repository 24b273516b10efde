#pragma once
/// \file
/// How a program of the toolkit finds out whether torchrun launched it, and joins the others if so.

#include <increlora/distributed.hpp>

#include <torch/types.h>

#include <cstdint>
#include <string>

namespace increlora::apps {

/// This process's place in a launch: no process group for a plain single process. Owns the group: when the
/// Launch goes out of scope the group is ended (distributed::end_process_group), by `shutdown` after a normal
/// run and by `abort` while an exception unwinds (another rank may be blocked in a collective this one left).
/// Move-only, so that exactly one owner ends it.
struct Launch {
  distributed::Environment env;
  distributed::ProcessGroupPtr group;  ///< null: one process, nothing to synchronise

  Launch() = default;
  Launch(Launch&&) noexcept = default;
  Launch& operator=(Launch&&) = delete;
  Launch(const Launch&) = delete;
  Launch& operator=(const Launch&) = delete;
  ~Launch();
  int64_t rank() const { return env.rank; }
  int64_t world_size() const { return env.world_size; }
  /// Rank 0 writes the run's files and prints; the others only train.
  bool writes_outputs() const { return env.rank == 0; }
};

/// Reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT (as torchrun sets them). Not launched: a single
/// process on `device` as given. Launched on a CUDA device: `device` becomes cuda:LOCAL_RANK and the NCCL
/// process group is set up (a world of one included, so that the same collectives run). Launched on the CPU:
/// a world of one runs as a single process; more ranks are refused (the CPU backend, Gloo, cannot be built
/// against the LibTorch wheel). `program` names the program in messages.
Launch join_launch(const std::string& program, torch::Device& device);

}  // namespace increlora::apps
