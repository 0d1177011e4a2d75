// TORCH_LIBRARY(moeq, ...): the schema of every op Python can reach. Implementations are
// registered per file with TORCH_LIBRARY_IMPL fragments next to their op layer.
#include <torch/library.h>

TORCH_LIBRARY(moeq, m) {
  // Filled by the op files through TORCH_LIBRARY_FRAGMENT.
}
