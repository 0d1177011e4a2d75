// MOEQ_HOST_DEVICE: functions compiled for host and device (nvcc), plain host functions otherwise.
#pragma once

#if defined(__CUDACC__)
#define MOEQ_HOST_DEVICE __host__ __device__
#define MOEQ_INLINE __forceinline__
#else
#define MOEQ_HOST_DEVICE
#define MOEQ_INLINE inline
#endif
