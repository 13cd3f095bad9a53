// The active channels of one side of a sliced convolution: at most two (start, length) ranges of
// the weight's channel axis, sorted and disjoint.
//
// The one range type of the C++ and CUDA code, the twin of Python's ChannelSegments
// (dvn_kernels/segments.py) as a kernel takes it: the spec string carries each range as
// start+length (conv_problem.h), and a ChannelSegments with more than two ranges is gathered in
// Python before dispatch, so every kernel takes this fixed-size value. The Triton kernels get the
// same four scalars from ChannelSegments.kernel_scalars(). Free of torch and CUDA headers: the
// CUDA kernels receive it by value.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define DVN_HD __host__ __device__ __forceinline__
#else
#define DVN_HD inline
#endif

namespace dvn {

struct ChannelRanges {
  int32_t start0 = 0, length0 = 0;  // the first range
  int32_t start1 = 0, length1 = 0;  // the second; length1 == 0 when there is only one

  DVN_HD int32_t count() const { return length1 > 0 ? 2 : 1; }
  DVN_HD int32_t total() const { return length0 + length1; }
  DVN_HD int32_t start(int i) const { return i == 0 ? start0 : start1; }
  DVN_HD int32_t length(int i) const { return i == 0 ? length0 : length1; }
  // One past the last active channel.
  DVN_HD int32_t end() const { return length1 > 0 ? start1 + length1 : start0 + length0; }

  // The weight channel of compact channel c (0 <= c < total()).
  DVN_HD int32_t physical(int32_t c) const {
    return c < length0 ? start0 + c : start1 + (c - length0);
  }

  // The compact index of weight channel `phys`, or -1 when it is inactive.
  DVN_HD int32_t compact(int32_t phys) const {
    if (phys >= start0 && phys < start0 + length0) return phys - start0;
    if (length1 > 0 && phys >= start1 && phys < start1 + length1) return length0 + (phys - start1);
    return -1;
  }

  // Every start and length a multiple of `vec` (vectorised weight loads).
  DVN_HD bool aligned(int32_t vec) const {
    return start0 % vec == 0 && length0 % vec == 0 && start1 % vec == 0 && length1 % vec == 0;
  }
};

}  // namespace dvn
