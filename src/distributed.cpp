#include "increlora/distributed.hpp"

#include "increlora/errors.hpp"

#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <numeric>
#include <random>

namespace increlora::distributed {

namespace {

// A whole number, all of the text (" 2", "2x" and "" are not).
std::optional<int64_t> whole_number(const std::string& text) {
  if (text.empty() || text.size() > 18) return std::nullopt;
  size_t i = text[0] == '-' ? 1 : 0;
  if (i == text.size()) return std::nullopt;
  for (size_t k = i; k < text.size(); ++k) {
    if (text[k] < '0' || text[k] > '9') return std::nullopt;
  }
  return std::stoll(text);
}

int64_t number_variable(const std::string& name, const std::string& text) {
  const auto value = whole_number(text);
  INCRELORA_CHECK(value.has_value(), "environment variable ", name, "=\"", text, "\" is not a whole number; set it ",
                  "as torchrun does (e.g. ", name, "=0) or unset it for a single process.");
  return *value;
}

}  // namespace

Environment parse_environment(const std::function<std::optional<std::string>(const std::string&)>& lookup) {
  const auto rank = lookup("RANK"), world = lookup("WORLD_SIZE"), local = lookup("LOCAL_RANK");
  const auto addr = lookup("MASTER_ADDR"), port = lookup("MASTER_PORT");
  Environment env;
  if (!rank && !world && !local && !addr && !port) return env;  // a plain single process
  INCRELORA_CHECK(rank && world, "environment: ", rank ? "RANK" : "WORLD_SIZE", " is set but ",
                  rank ? "WORLD_SIZE" : "RANK", " is not; a launch sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR "
                  "and MASTER_PORT together (torchrun does), a single process none of them.");
  env.launched = true;
  env.world_size = number_variable("WORLD_SIZE", *world);
  INCRELORA_CHECK(env.world_size >= 1, "environment variable WORLD_SIZE=", env.world_size, " must be >= 1.");
  env.rank = number_variable("RANK", *rank);
  INCRELORA_CHECK(env.rank >= 0 && env.rank < env.world_size, "environment variable RANK=", env.rank,
                  " must be in 0..WORLD_SIZE-1 (WORLD_SIZE=", env.world_size, ").");
  env.local_rank = local ? number_variable("LOCAL_RANK", *local) : env.rank;
  INCRELORA_CHECK(env.local_rank >= 0 && env.local_rank <= env.rank, "environment variable LOCAL_RANK=",
                  env.local_rank, " must be in 0..RANK (RANK=", env.rank, "): it numbers the processes of one host.");
  if (env.world_size > 1) {
    INCRELORA_CHECK(addr && !addr->empty(), "environment: WORLD_SIZE=", env.world_size, " needs MASTER_ADDR (the "
                    "host of rank 0), which is not set.");
    INCRELORA_CHECK(port.has_value(), "environment: WORLD_SIZE=", env.world_size, " needs MASTER_PORT (a free "
                    "port on rank 0's host), which is not set.");
  }
  const auto agent_store = lookup("TORCHELASTIC_USE_AGENT_STORE");
  env.agent_store = agent_store && *agent_store == "True";  // the exact spelling torchrun writes and Python tests
  env.master_addr = addr && !addr->empty() ? *addr : "127.0.0.1";
  env.master_port = port ? number_variable("MASTER_PORT", *port) : 29500;
  INCRELORA_CHECK(env.master_port >= 1 && env.master_port <= 65535, "environment variable MASTER_PORT=",
                  env.master_port, " must be a port in 1..65535.");
  return env;
}

Environment environment_from_process() {
  return parse_environment([](const std::string& name) -> std::optional<std::string> {
    const char* value = std::getenv(name.c_str());
    if (value == nullptr) return std::nullopt;
    return std::string(value);
  });
}

c10::intrusive_ptr<c10d::Store> make_store(const Environment& env, std::chrono::milliseconds timeout) {
  c10d::TCPStoreOptions options;
  options.port = static_cast<std::uint16_t>(env.master_port);
  // Under torchrun the agent's store already listens on the port: serving it again would fail to bind (TCPStore
  // then ignores the error, with a warning), so rank 0 connects like the others.
  options.isServer = env.rank == 0 && !env.agent_store;
  options.numWorkers = static_cast<size_t>(env.world_size);
  options.waitWorkers = true;
  options.timeout = timeout;
  return c10::make_intrusive<c10d::TCPStore>(env.master_addr, options);
}

ProcessGroupPtr init_process_group(const Environment& env, const torch::Device& device,
                                   std::chrono::milliseconds timeout) {
  INCRELORA_CHECK(nccl_available(), "init_process_group: this build of increlora has no NCCL (it needs LibTorch's "
                  "CUDA libraries and nccl.h at configure time); data-parallel runs need a CUDA build.");
  return init_nccl_process_group(make_store(env, timeout), env, device, timeout);
}

std::function<void(torch::Tensor&)> reduce_scores(ProcessGroupPtr group) {
  INCRELORA_CHECK(group, "reduce_scores: the process group is null; pass the one of init_process_group.");
  return [group = std::move(group)](torch::Tensor& score) { all_reduce_mean(group, score); };
}

void all_reduce_mean(const ProcessGroupPtr& group, torch::Tensor& value) {
  INCRELORA_CHECK(value.is_contiguous(), "all_reduce_mean: the tensor must be contiguous.");
  std::vector<torch::Tensor> tensors{value};
  group->allreduce(tensors)->wait();
  // Division by 1 is exact, so a world of one leaves the value bit for bit as it was.
  value.div_(static_cast<double>(group->getSize()));
}

void broadcast_parameters(const ProcessGroupPtr& group, const std::vector<torch::Tensor>& tensors, int64_t root) {
  INCRELORA_CHECK(root >= 0 && root < group->getSize(), "broadcast_parameters: root ", root,
                  " is not a rank of the group (size ", group->getSize(), ").");
  torch::NoGradGuard no_grad;
  c10d::BroadcastOptions options;
  options.rootRank = root;
  for (const auto& t : tensors) {
    // A parameter may be a view (not contiguous): broadcast a contiguous copy and write it back.
    auto buffer = t.is_contiguous() ? t : t.contiguous();
    std::vector<torch::Tensor> one{buffer};
    group->broadcast(one, options)->wait();
    if (!buffer.is_same(t)) t.copy_(buffer);
  }
}

void barrier(const ProcessGroupPtr& group) { group->barrier()->wait(); }

void end_process_group(const ProcessGroupPtr& group, GroupEnd how) {
  if (!group) return;
  if (how == GroupEnd::abort) {
    group->abort();
  } else {
    group->shutdown();
  }
}

#ifndef INCRELORA_WITH_NCCL
// Without NCCL in the build (src/distributed_nccl.cpp holds the real ones).
bool nccl_available() { return false; }

ProcessGroupPtr init_nccl_process_group(const c10::intrusive_ptr<c10d::Store>&, const Environment&,
                                        const torch::Device&, std::chrono::milliseconds) {
  INCRELORA_CHECK(false, "init_nccl_process_group: this build of increlora has no NCCL (CMake found no LibTorch "
                  "CUDA libraries or no nccl.h; set INCRELORA_NCCL_INCLUDE_DIR to the folder of nccl.h and "
                  "reconfigure against a CUDA LibTorch).");
  return {};
}
#endif

GradientReducer::GradientReducer(ProcessGroupPtr group, std::vector<torch::Tensor> parameters,
                                 GradientReducerOptions options)
    : group_(std::move(group)), options_(options) {
  INCRELORA_CHECK(group_, "GradientReducer: the process group is null; pass the one of init_process_group.");
  INCRELORA_CHECK(options_.bucket_mb() > 0, "GradientReducer: bucket_mb must be > 0 (got ", options_.bucket_mb(),
                  ").");
  for (auto& p : parameters) {
    if (p.requires_grad()) parameters_.push_back(std::move(p));  // frozen weights never take part
  }
}

void GradientReducer::reduce() {
  torch::NoGradGuard no_grad;
  // Buckets of the gradients defined now, in the parameters' order, split at bucket_mb and wherever the
  // dtype or device changes (a flat buffer has one of each).
  const double limit = options_.bucket_mb() * 1024.0 * 1024.0;
  buckets_.clear();
  double bytes = 0;
  for (size_t i = 0; i < parameters_.size(); ++i) {
    const auto& g = parameters_[i].grad();
    if (!g.defined()) continue;
    const double size = static_cast<double>(g.numel()) * static_cast<double>(g.element_size());
    bool fresh = buckets_.empty() || bytes + size > limit;
    if (!fresh) {
      const auto& first = parameters_[buckets_.back().front()].grad();
      fresh = first.scalar_type() != g.scalar_type() || first.device() != g.device();
    }
    if (fresh) {
      buckets_.emplace_back();
      bytes = 0;
    }
    buckets_.back().push_back(i);
    bytes += size;
  }
  // All buckets are launched before any is waited for, so that the backend can pipeline them.
  std::vector<torch::Tensor> flats;
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  flats.reserve(buckets_.size());
  works.reserve(buckets_.size());
  for (const auto& bucket : buckets_) {
    std::vector<torch::Tensor> grads;
    grads.reserve(bucket.size());
    for (size_t i : bucket) grads.push_back(parameters_[i].grad().reshape({-1}));
    flats.push_back(torch::cat(grads));
    std::vector<torch::Tensor> one{flats.back()};
    works.push_back(group_->allreduce(one));
  }
  const double world = static_cast<double>(group_->getSize());
  for (size_t b = 0; b < buckets_.size(); ++b) {
    works[b]->wait();
    flats[b].div_(world);
    int64_t offset = 0;
    for (size_t i : buckets_[b]) {
      auto g = parameters_[i].grad();
      const int64_t n = g.numel();
      g.copy_(flats[b].narrow(0, offset, n).view(g.sizes()));
      offset += n;
    }
  }
}

size_t shard_size(size_t size, int64_t world_size, Remainder remainder) {
  INCRELORA_CHECK(world_size >= 1, "shard_size: world_size must be >= 1 (got ", world_size, ").");
  const auto w = static_cast<size_t>(world_size);
  return remainder == Remainder::kDrop ? size / w : (size + w - 1) / w;
}

std::vector<size_t> shard(const std::vector<size_t>& permutation, int64_t rank, int64_t world_size,
                          Remainder remainder) {
  INCRELORA_CHECK(world_size >= 1, "shard: world_size must be >= 1 (got ", world_size, ").");
  INCRELORA_CHECK(rank >= 0 && rank < world_size, "shard: rank ", rank, " must be in 0..", world_size - 1, ".");
  const size_t per = shard_size(permutation.size(), world_size, remainder);
  INCRELORA_CHECK(per > 0 || permutation.empty(), "shard: ", permutation.size(), " examples give rank ", rank,
                  " none with Remainder::kDrop over ", world_size, " ranks; use fewer ranks or Remainder::kPad.");
  const auto w = static_cast<size_t>(world_size), r = static_cast<size_t>(rank);
  std::vector<size_t> part;
  part.reserve(per);
  for (size_t k = 0; k < per; ++k) {
    // Padding wraps around: position p past the end is the permutation's (p - size)-th example again.
    part.push_back(permutation[(r + k * w) % permutation.size()]);
  }
  return part;
}

std::vector<size_t> epoch_permutation(size_t size, uint64_t seed, int64_t epoch) {
  std::seed_seq seq{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32), static_cast<uint32_t>(epoch),
                    static_cast<uint32_t>(static_cast<uint64_t>(epoch) >> 32)};
  std::mt19937_64 rng(seq);
  std::vector<size_t> order(size);
  std::iota(order.begin(), order.end(), size_t{0});
  // Fisher-Yates by hand: std::shuffle's draws are the library's choice, and ranks built with different
  // standard libraries must still agree.
  for (size_t i = size; i > 1; --i) {
    const size_t j = static_cast<size_t>(rng() % i);
    std::swap(order[i - 1], order[j]);
  }
  return order;
}

std::vector<size_t> shard_indices(size_t size, uint64_t seed, int64_t epoch, int64_t rank, int64_t world_size,
                                  Remainder remainder) {
  return shard(epoch_permutation(size, seed, epoch), rank, world_size, remainder);
}

}  // namespace increlora::distributed
