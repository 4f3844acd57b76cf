// Squared-difference sum for MSE/PSNR: grid-stride loads, block reduction, one double
// atomic per block. blockIdx.y = pair; each pair has 3*n samples per image.

extern "C" __global__ void sq_diff_sum(const float* __restrict__ a, const float* __restrict__ b, long long samples,
                                       double* __restrict__ sums) {
    const float* pa = a + (size_t)blockIdx.y * samples;
    const float* pb = b + (size_t)blockIdx.y * samples;
    double acc = 0.0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < samples; i += (long long)gridDim.x * blockDim.x) {
        double d = (double)pa[i] - (double)pb[i];
        acc += d * d;
    }
    double total = block_sum(acc);
    if (threadIdx.x == 0 && threadIdx.y == 0) atomicAdd(&sums[blockIdx.y], total);
}
