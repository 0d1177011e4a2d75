#include "moeq/kernels/device_memory.h"

#ifdef MOEQ_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace moeq::kernels {

#ifdef MOEQ_WITH_CUDA
namespace {

// The allocator's statistics exist only once CUDA is initialised on that device; a device that
// never held a tensor holds nothing.
bool has_stats(c10::Device device) {
  return device.is_cuda() && c10::cuda::CUDACachingAllocator::get() != nullptr &&
         c10::cuda::CUDACachingAllocator::get()->initialized();
}

c10::DeviceIndex index_of(c10::Device device) {
  return device.has_index() ? device.index() : c10::DeviceIndex{0};
}

}  // namespace

std::optional<DeviceMemory> device_memory(c10::Device device) {
  if (!has_stats(device)) {
    return std::nullopt;
  }
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(index_of(device));
  constexpr auto kAll = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
  return DeviceMemory{stats.allocated_bytes[kAll].current, stats.allocated_bytes[kAll].peak,
                      stats.reserved_bytes[kAll].current, stats.reserved_bytes[kAll].peak};
}

void reset_device_memory_peak(c10::Device device) {
  if (has_stats(device)) {
    c10::cuda::CUDACachingAllocator::resetPeakStats(index_of(device));
  }
}

void synchronize_device(c10::Device device) {
  if (has_stats(device)) {
    c10::cuda::device_synchronize();
  }
}

#else

std::optional<DeviceMemory> device_memory(c10::Device /*device*/) {
  return std::nullopt;
}
void reset_device_memory_peak(c10::Device /*device*/) {}
void synchronize_device(c10::Device /*device*/) {}

#endif

}  // namespace moeq::kernels
