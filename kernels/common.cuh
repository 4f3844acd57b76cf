// Shared device helpers for the scoring kernels. The constants come from the generated
// #define header (src/scoring/constants.rs) that is prepended before this file.

#define BORDER_CLAMP 0
#define BORDER_REFLECT 1

__device__ __forceinline__ int border_index(int i, int n, int mode) {
    if (mode == BORDER_CLAMP) {
        return min(max(i, 0), n - 1);
    }
    int period = 2 * n;
    int m = i % period;
    if (m < 0) m += period;
    return m >= n ? period - 1 - m : m;
}

__device__ __forceinline__ float srgb_to_linear(float v) {
    return v <= 0.04045f ? v / 12.92f : powf((v + 0.055f) / 1.055f, 2.4f);
}

__device__ __forceinline__ void rgb_to_xyz(float r, float g, float b, float* x, float* y, float* z) {
    *x = RGB_TO_XYZ_0 * r + RGB_TO_XYZ_1 * g + RGB_TO_XYZ_2 * b;
    *y = RGB_TO_XYZ_3 * r + RGB_TO_XYZ_4 * g + RGB_TO_XYZ_5 * b;
    *z = RGB_TO_XYZ_6 * r + RGB_TO_XYZ_7 * g + RGB_TO_XYZ_8 * b;
}

// Sum of a float over the block, returned in thread 0 (blockDim.x * blockDim.y <= 1024).
__device__ double block_sum(double v) {
    __shared__ double warp_sums[32];
    int lane = (threadIdx.y * blockDim.x + threadIdx.x) & 31;
    int warp = (threadIdx.y * blockDim.x + threadIdx.x) >> 5;
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    int warps = (blockDim.x * blockDim.y + 31) / 32;
    v = (lane < warps && warp == 0) ? warp_sums[lane] : 0.0;
    if (warp == 0) {
        for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
    }
    return v;
}
