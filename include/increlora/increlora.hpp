#pragma once
/// \file
/// increlora: IncreLoRA (incremental rank allocation for LoRA, Zhang et al. 2023) on LibTorch.
/// The umbrella header; each part also has its own header.

#include "increlora/allocator.hpp"
#include "increlora/checkpoint.hpp"
#include "increlora/errors.hpp"
#include "increlora/graphed_step.hpp"
#include "increlora/log.hpp"
#include "increlora/modules.hpp"
#include "increlora/optim.hpp"
#include "increlora/regularization.hpp"
#include "increlora/report.hpp"
#include "increlora/safetensors.hpp"
#include "increlora/serialize.hpp"
#include "increlora/svd_linear.hpp"
#include "increlora/warmup.hpp"
