#pragma once
// Catch2 v3 where installed (the GPU machine), v2 otherwise (Debian's package), behind one set of names.
//
// c10/util/Logging.h defines a glog-style CHECK(cond) that would silently replace Catch's CHECK in any file
// that includes a torch header after Catch. So: include it first (its include guard keeps later torch
// headers from redefining the macro), drop its CHECK, then include Catch.
#include <c10/util/Logging.h>
#undef CHECK

#include <string>

#if INCRELORA_CATCH_MAJOR >= 3
#include <catch2/catch_all.hpp>
using Catch::Approx;
/// A matcher for exception messages that contain `s`.
inline auto HasSubstring(const std::string& s) { return Catch::Matchers::ContainsSubstring(s); }
#else
#include <catch2/catch.hpp>
inline auto HasSubstring(const std::string& s) { return Catch::Matchers::Contains(s); }
#endif
