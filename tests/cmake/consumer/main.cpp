// Builds and trains one step of an adapted layer through the installed or added increlora target.
#include <increlora/increlora.hpp>

#include <torch/nn/modules/container/sequential.h>
#include <torch/optim/sgd.h>

#include <iostream>

int main() {
  torch::nn::Sequential model(increlora::SVDLinear(increlora::SVDLinearOptions(8, 4).r(1)),
                              increlora::SVDLinear(increlora::SVDLinearOptions(4, 2).r(1)));
  increlora::mark_only_lora_as_trainable(*model);
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.1));
  increlora::RankAllocator allocator(*model, increlora::RankAllocatorOptions().lora_r(1).target_rank(2)
                                                 .incre_interval(1).top_h(2));
  (model->forward(torch::randn({3, 8})).sum() + increlora::compute_orth_regu(*model)).backward();
  const auto events = allocator.update_and_increase(*model, 1, optimizer);
  optimizer.step();
  std::cout << "consumer: " << events.size() << " layers grew, total rank " << allocator.total_rank() << "\n";
  return allocator.total_rank() == 4 ? 0 : 1;
}
