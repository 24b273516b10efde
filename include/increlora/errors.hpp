#pragma once
/// \file
/// How increlora reports bad input: a `c10::Error` (what `TORCH_CHECK` throws, so callers catch one type
/// for LibTorch's errors and ours) whose message starts with "increlora: ", names the argument and says
/// what to change.

#include <c10/util/Exception.h>

/// Throws `c10::Error` with the message "increlora: " followed by the remaining arguments (streamed, as
/// `TORCH_CHECK` does) when `cond` is false.
#define INCRELORA_CHECK(cond, ...) TORCH_CHECK((cond), "increlora: ", __VA_ARGS__)
