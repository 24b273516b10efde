#include <increlora/apps/launch.hpp>

#include <torch/cuda.h>

#include <fmt/format.h>

#include <exception>
#include <stdexcept>

namespace increlora::apps {

Launch::~Launch() {
  if (!group) return;
  try {
    distributed::end_process_group(group, std::uncaught_exceptions() > 0 ? distributed::GroupEnd::abort
                                                                          : distributed::GroupEnd::shutdown);
  } catch (...) {
    // A destructor must not throw; the process is ending its communicators either way.
  }
}

Launch join_launch(const std::string& program, torch::Device& device) {
  Launch launch;
  launch.env = distributed::environment_from_process();
  if (!launch.env.launched) return launch;
  if (!device.is_cuda()) {
    if (launch.env.world_size == 1) return launch;
    throw std::invalid_argument(fmt::format(
        "{}: launched as rank {} of {} on the CPU; data-parallel runs need one CUDA device per process (NCCL): "
        "pass --device cuda, or run one process without torchrun", program, launch.env.rank, launch.env.world_size));
  }
  const auto visible = static_cast<int64_t>(torch::cuda::device_count());
  if (launch.env.local_rank >= visible) {
    throw std::invalid_argument(fmt::format("{}: LOCAL_RANK={} but this host shows {} CUDA device(s); launch at most "
                                            "{} processes per host (torchrun --nproc_per_node)", program,
                                            launch.env.local_rank, visible, visible));
  }
  device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(launch.env.local_rank));
  launch.group = distributed::init_process_group(launch.env, device);
  return launch;
}

}  // namespace increlora::apps
