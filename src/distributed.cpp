#include "increlora/distributed.hpp"
