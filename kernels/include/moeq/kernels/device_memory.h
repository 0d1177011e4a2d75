// What the GPU's caching allocator holds for torch tensors on a device, for reports: the pipeline
// resets the peak before each layer and reads it after, so a layer's memory is measured directly.
#pragma once

#include <c10/core/Device.h>

#include <cstdint>
#include <optional>

namespace moeq::kernels {

struct DeviceMemory {
  int64_t allocated = 0;       // bytes in live tensors now
  int64_t peak_allocated = 0;  // since the last reset_device_memory_peak
  int64_t reserved = 0;        // bytes the allocator holds (live tensors and its cache)
  int64_t peak_reserved = 0;
};

// nullopt for a CPU device, or when moeq was built without CUDA.
std::optional<DeviceMemory> device_memory(c10::Device device);

// Starts a new peak window; does nothing where device_memory gives nullopt.
void reset_device_memory_peak(c10::Device device);

// Waits for the device's queued work (CUDA kernels run asynchronously), so that a phase timed
// on the host includes it; nothing on a CPU device.
void synchronize_device(c10::Device device);

}  // namespace moeq::kernels
