#include "moeq/io/remove_tree.h"

namespace moeq::io {

namespace fs = std::filesystem;

void remove_tree(const fs::path& path, std::error_code& ec) {
  ec.clear();
  const fs::file_status status = fs::symlink_status(path, ec);
  if (status.type() == fs::file_type::not_found) {
    ec.clear();
    return;
  }
  if (ec) {
    return;
  }
  if (status.type() == fs::file_type::directory) {
    for (fs::directory_iterator it(path, ec), end; !ec && it != end; it.increment(ec)) {
      remove_tree(it->path(), ec);
      if (ec) {
        return;
      }
    }
    if (ec) {
      return;
    }
  }
  fs::remove(path, ec);
}

}  // namespace moeq::io
