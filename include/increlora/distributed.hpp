#pragma once
// Data-parallel training over c10d (issue 16): work in progress.
