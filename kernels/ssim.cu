// SSIM / MS-SSIM kernels: mirrored borders, an 11-tap Gaussian through shared tiles, the
// cropped map reduced on the device. Mirrors src/scoring/ssim.rs. blockIdx.z = channel pair.

#define SSIM_TAPS (2 * SSIM_RADIUS + 1)
#define SSIM_PLANES 5

// Row pass over one channel pair: x, y, x*x, y*y, x*y each filtered along rows.
// x and y: channel planes, z-th pair at offset z*n. out: 5 planes per pair.
extern "C" __global__ void ssim_rows(const float* __restrict__ xs, const float* __restrict__ ys, float* __restrict__ out,
                                     const float* __restrict__ taps, int w, int h) {
    __shared__ float tx[TILE_Y][TILE_X + 2 * SSIM_RADIUS];
    __shared__ float ty[TILE_Y][TILE_X + 2 * SSIM_RADIUS];
    __shared__ float s_taps[SSIM_TAPS];
    int tid = threadIdx.y * TILE_X + threadIdx.x;
    if (tid < SSIM_TAPS) s_taps[tid] = taps[tid];
    size_t n = (size_t)w * h;
    const float* x_src = xs + (size_t)blockIdx.z * n;
    const float* y_src = ys + (size_t)blockIdx.z * n;
    int x0 = blockIdx.x * TILE_X;
    int y = blockIdx.y * TILE_Y + threadIdx.y;
    int yy = min(y, h - 1);
    for (int c = threadIdx.x; c < TILE_X + 2 * SSIM_RADIUS; c += TILE_X) {
        int sx = border_index(x0 + c - SSIM_RADIUS, w, BORDER_REFLECT);
        tx[threadIdx.y][c] = x_src[(size_t)yy * w + sx];
        ty[threadIdx.y][c] = y_src[(size_t)yy * w + sx];
    }
    __syncthreads();
    int x = x0 + threadIdx.x;
    if (x >= w || y >= h) return;
    float a[SSIM_PLANES] = {0, 0, 0, 0, 0};
    for (int k = 0; k < SSIM_TAPS; k++) {
        float t = s_taps[k];
        float u = tx[threadIdx.y][threadIdx.x + k], v = ty[threadIdx.y][threadIdx.x + k];
        a[0] += t * u;
        a[1] += t * v;
        a[2] += t * (u * u);
        a[3] += t * (v * v);
        a[4] += t * (u * v);
    }
    float* dst = out + (size_t)blockIdx.z * SSIM_PLANES * n + (size_t)y * w + x;
    for (int p = 0; p < SSIM_PLANES; p++) dst[p * n] = a[p];
}

// Column pass fused with the SSIM formula and the cropped mean: sums[2*z] += SSIM, sums[2*z+1] += CS.
extern "C" __global__ void ssim_cols_reduce(const float* __restrict__ rows, const float* __restrict__ taps, int w, int h,
                                            double* __restrict__ sums) {
    __shared__ float tile[SSIM_PLANES][TILE_Y + 2 * SSIM_RADIUS][TILE_X];
    __shared__ float s_taps[SSIM_TAPS];
    int tid = threadIdx.y * TILE_X + threadIdx.x;
    if (tid < SSIM_TAPS) s_taps[tid] = taps[tid];
    size_t n = (size_t)w * h;
    const float* src = rows + (size_t)blockIdx.z * SSIM_PLANES * n;
    int x = blockIdx.x * TILE_X + threadIdx.x;
    int xx = min(x, w - 1);
    int y0 = blockIdx.y * TILE_Y;
    for (int r = threadIdx.y; r < TILE_Y + 2 * SSIM_RADIUS; r += TILE_Y) {
        int sy = border_index(y0 + r - SSIM_RADIUS, h, BORDER_REFLECT);
        for (int p = 0; p < SSIM_PLANES; p++) tile[p][r][threadIdx.x] = src[p * n + (size_t)sy * w + xx];
    }
    __syncthreads();
    int y = y0 + threadIdx.y;
    double s = 0.0, cs = 0.0;
    if (x >= SSIM_RADIUS && x < w - SSIM_RADIUS && y >= SSIM_RADIUS && y < h - SSIM_RADIUS) {
        float m[SSIM_PLANES] = {0, 0, 0, 0, 0};
        for (int k = 0; k < SSIM_TAPS; k++) {
            for (int p = 0; p < SSIM_PLANES; p++) m[p] += s_taps[k] * tile[p][threadIdx.y + k][threadIdx.x];
        }
        const float c1 = (SSIM_K1 * 1.0f) * (SSIM_K1 * 1.0f);
        const float c2 = (SSIM_K2 * 1.0f) * (SSIM_K2 * 1.0f);
        float ux = m[0], uy = m[1];
        float vx = m[2] - ux * ux, vy = m[3] - uy * uy, vxy = m[4] - ux * uy;
        float c = (2.0f * vxy + c2) / (vx + vy + c2);
        float l = (2.0f * ux * uy + c1) / (ux * ux + uy * uy + c1);
        s = (double)(l * c);
        cs = (double)c;
    }
    double ts = block_sum(s);
    __syncthreads();
    double tcs = block_sum(cs);
    if (tid == 0) {
        atomicAdd(&sums[2 * blockIdx.z], ts);
        atomicAdd(&sums[2 * blockIdx.z + 1], tcs);
    }
}

// 2x2 average pooling of plane z (in: w x h, out: w/2 x h/2).
extern "C" __global__ void downsample2(const float* __restrict__ in, float* __restrict__ out, int w, int h) {
    int ow = w / 2, oh = h / 2;
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= ow || y >= oh) return;
    const float* a = in + (size_t)blockIdx.z * w * h + (size_t)(2 * y) * w;
    const float* b = a + w;
    out[(size_t)blockIdx.z * ow * oh + (size_t)y * ow + x] = 0.25f * (a[2 * x] + a[2 * x + 1] + b[2 * x] + b[2 * x + 1]);
}
