// peak_host_bytes (commands.h).
#include <sys/resource.h>

#include <cstdint>
#include <fstream>
#include <string>

#include "commands.h"

namespace moeq::cli {

int64_t peak_host_bytes() {
  // VmHWM, this program's own peak: getrusage's ru_maxrss also counts the peak of the process
  // image exec replaced, so a moeq started from a 1 GB Python process reported 1 GB.
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) {
      return std::stoll(line.substr(6)) * 1024;
    }
  }
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<int64_t>(usage.ru_maxrss) * 1024;
}

}  // namespace moeq::cli
