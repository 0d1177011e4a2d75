// Removing a directory tree in a process that links libtorch.
#pragma once

#include <filesystem>
#include <system_error>

namespace moeq::io {

// Removes `path` and everything under it (symlinks themselves, never their targets); a missing
// path is not an error. Use it instead of std::filesystem::remove_all: libtorch exports its own
// copy of std::filesystem, which copy a call binds to depends on the link order, and libtorch's
// remove_all has crashed both on Debian 12 and on the GPU machine (docs/checkpoint-io.md).
// On failure `ec` holds the first error and the rest of the tree is left in place.
void remove_tree(const std::filesystem::path& path, std::error_code& ec);

}  // namespace moeq::io
