#pragma once
/// \file
/// The log sink: library code never prints. Components that have something to say (the allocator's
/// rounds, say) call a sink the user sets in their options; it is empty, so silent, by default.

#include <functional>
#include <string>

namespace increlora {

/// Receives one finished line of text (no trailing newline). Example:
/// \code
///   options.log([&lines](const std::string& line) { lines.push_back(line); });  // or your logger
/// \endcode
using LogSink = std::function<void(const std::string& line)>;

}  // namespace increlora
