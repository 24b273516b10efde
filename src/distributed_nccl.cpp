// The NCCL half of distributed.hpp, compiled only when CMake found LibTorch's CUDA libraries and nccl.h
// (ProcessGroupNCCL.hpp needs both, and USE_C10D_NCCL, which the top-level CMakeLists.txt defines for this file).
#include "increlora/distributed.hpp"

#include "increlora/errors.hpp"

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include <c10/cuda/CUDAFunctions.h>

namespace increlora::distributed {

bool nccl_available() { return true; }

ProcessGroupPtr init_nccl_process_group(const c10::intrusive_ptr<c10d::Store>& store, const Environment& env,
                                        const torch::Device& device, std::chrono::milliseconds timeout) {
  INCRELORA_CHECK(store, "init_nccl_process_group: the store is null; pass the one of make_store.");
  INCRELORA_CHECK(device.is_cuda() && device.has_index(), "init_nccl_process_group: device ", device.str(),
                  " is not a CUDA device with an index; NCCL needs cuda:LOCAL_RANK (cuda:", env.local_rank, ").");
  // NCCL makes its communicator on the current device: make it this rank's before the first collective.
  c10::cuda::set_device(device.index());
  auto options = c10d::ProcessGroupNCCL::Options::create();
  options->timeout = timeout;
  // The "default_pg" prefix keeps our keys apart from anything else a user puts into the same store.
  auto prefixed = c10::make_intrusive<c10d::PrefixStore>("default_pg", store);
  auto nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(prefixed, static_cast<int>(env.rank),
                                                          static_cast<int>(env.world_size), options);
  auto group = c10::make_intrusive<c10d::ProcessGroup>(prefixed, static_cast<int>(env.rank),
                                                       static_cast<int>(env.world_size));
  // The group's device first: setBackend hands it to the backend (barrier and communicator creation use it).
  group->setBoundDeviceId(device);
  group->setBackend(c10::DeviceType::CUDA, c10d::ProcessGroup::BackendType::NCCL, nccl);
  group->setDefaultBackend(c10d::ProcessGroup::BackendType::NCCL);
  return group;
}

}  // namespace increlora::distributed
