// FLIP and HDR-FLIP kernels: planar float images, reference and test of a batch of pairs
// processed together (blockIdx.z selects the image), separable filters through shared tiles,
// pooling (sum, min, max, histogram) on the device. Mirrors src/scoring/flip.rs.

// Filter taps, laid out [y, cx, cz1, cz2, gauss, edge, point] (ROW_PLANES sets), each
// TAP_STRIDE = 2*MAX_RADIUS+1 long and centred at MAX_RADIUS (unused ends are zero). ROW_PLANES,
// TAP_STRIDE and COL_ROWS come from the generated header, as the launcher uses them too.

// rgb: images of 3 planes each; out: YCxCz planes. blockIdx.y = image (0 reference, 1 test).
// Bit blockIdx.y of srgb_mask says the image is sRGB-encoded (decoded after clamping to [0,1]).
// With hdr set, linear values are exposed by `exposure_scale`, ACES tone-mapped and clamped.
extern "C" __global__ void flip_prepare(const float* __restrict__ rgb, float* __restrict__ ycxcz, int n, int srgb_mask,
                                        int hdr, float exposure_scale) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float* src = rgb + (size_t)blockIdx.y * 3 * n;
    float* dst = ycxcz + (size_t)blockIdx.y * 3 * n;
    int srgb = (srgb_mask >> blockIdx.y) & 1;
    float c[3];
    for (int k = 0; k < 3; k++) {
        float v = src[(size_t)k * n + i];
        if (srgb) v = srgb_to_linear(fminf(fmaxf(v, 0.0f), 1.0f));
        if (hdr) {
            float x = fminf(fmaxf(v * exposure_scale, -HDR_EXPOSED_MAX), HDR_EXPOSED_MAX);
            v = (ACES_0 * x * x + ACES_1 * x + ACES_2) / (ACES_3 * x * x + ACES_4 * x + ACES_5);
        }
        c[k] = fminf(fmaxf(v, 0.0f), 1.0f);
    }
    float x, y, z;
    rgb_to_xyz(c[0], c[1], c[2], &x, &y, &z);
    x /= D65_X; y /= D65_Y; z /= D65_Z;
    dst[i] = 116.0f * y - 16.0f;
    dst[(size_t)n + i] = 500.0f * (x - y);
    dst[(size_t)2 * n + i] = 200.0f * (y - z);
}

// Row pass: 7 planes per image (Y*y, Cx*cx, Cz*cz1, Cz*cz2, G*gauss, G*edge, G*point), G = (Y+16)/116.
// Block TILE_X x TILE_Y; the tile holds TILE_X + 2*MAX_RADIUS columns of each input plane.
extern "C" __global__ void flip_rows(const float* __restrict__ ycxcz, float* __restrict__ rows, const float* __restrict__ taps,
                                     int w, int h, int r_csf, int r_feat) {
    __shared__ float tile[3][TILE_Y][TILE_X + 2 * MAX_RADIUS];
    __shared__ float s_taps[ROW_PLANES * TAP_STRIDE];
    int tid = threadIdx.y * TILE_X + threadIdx.x;
    for (int k = tid; k < ROW_PLANES * TAP_STRIDE; k += TILE_X * TILE_Y) s_taps[k] = taps[k];
    size_t n = (size_t)w * h;
    const float* src = ycxcz + (size_t)blockIdx.z * 3 * n;
    int x0 = blockIdx.x * TILE_X;
    int y = blockIdx.y * TILE_Y + threadIdx.y;
    int yy = min(y, h - 1);
    for (int c = threadIdx.x; c < TILE_X + 2 * MAX_RADIUS; c += TILE_X) {
        int sx = border_index(x0 + c - MAX_RADIUS, w, BORDER_CLAMP);
        for (int p = 0; p < 3; p++) tile[p][threadIdx.y][c] = src[p * n + (size_t)yy * w + sx];
    }
    __syncthreads();
    int x = x0 + threadIdx.x;
    if (x >= w || y >= h) return;
    float acc[ROW_PLANES] = {0, 0, 0, 0, 0, 0, 0};
    for (int k = -r_csf; k <= r_csf; k++) {
        int c = threadIdx.x + MAX_RADIUS + k;
        int t = MAX_RADIUS + k;
        float vy = tile[0][threadIdx.y][c], vcx = tile[1][threadIdx.y][c], vcz = tile[2][threadIdx.y][c];
        acc[0] += s_taps[0 * TAP_STRIDE + t] * vy;
        acc[1] += s_taps[1 * TAP_STRIDE + t] * vcx;
        acc[2] += s_taps[2 * TAP_STRIDE + t] * vcz;
        acc[3] += s_taps[3 * TAP_STRIDE + t] * vcz;
    }
    for (int k = -r_feat; k <= r_feat; k++) {
        int c = threadIdx.x + MAX_RADIUS + k;
        int t = MAX_RADIUS + k;
        float g = (tile[0][threadIdx.y][c] + 16.0f) / 116.0f;
        acc[4] += s_taps[4 * TAP_STRIDE + t] * g;
        acc[5] += s_taps[5 * TAP_STRIDE + t] * g;
        acc[6] += s_taps[6 * TAP_STRIDE + t] * g;
    }
    float* dst = rows + (size_t)blockIdx.z * ROW_PLANES * n + (size_t)y * w + x;
    for (int p = 0; p < ROW_PLANES; p++) dst[p * n] = acc[p];
}

// Column pass: 7 planes per image (Y, Cx, Cz filtered; dx, dy, ddx, ddy). Each block covers
// TILE_X columns and TILE_Y*COL_ROWS rows, loading one input plane at a time into the tile.
extern "C" __global__ void flip_cols(const float* __restrict__ rows, float* __restrict__ cols, const float* __restrict__ taps,
                                     int w, int h, int r_csf, int r_feat) {
    __shared__ float tile[TILE_Y * COL_ROWS + 2 * MAX_RADIUS][TILE_X];
    __shared__ float s_taps[ROW_PLANES * TAP_STRIDE];
    int tid = threadIdx.y * TILE_X + threadIdx.x;
    for (int k = tid; k < ROW_PLANES * TAP_STRIDE; k += TILE_X * TILE_Y) s_taps[k] = taps[k];
    size_t n = (size_t)w * h;
    const float* src = rows + (size_t)blockIdx.z * ROW_PLANES * n;
    float* dst = cols + (size_t)blockIdx.z * ROW_PLANES * n;
    int x = blockIdx.x * TILE_X + threadIdx.x;
    int xx = min(x, w - 1);
    int y0 = blockIdx.y * TILE_Y * COL_ROWS;
    // (input plane, tap set, output plane, accumulate into output)
    const int plan[9][4] = {{0, 0, 0, 0}, {1, 1, 1, 0}, {2, 2, 2, 0}, {3, 3, 2, 1}, {5, 4, 3, 0},
                            {4, 5, 4, 0}, {6, 4, 5, 0}, {4, 6, 6, 0}, {-1, 0, 0, 0}};
    for (int s = 0; plan[s][0] >= 0; s++) {
        int in_plane = plan[s][0], tap_set = plan[s][1], out_plane = plan[s][2], add = plan[s][3];
        int radius = tap_set < 4 ? r_csf : r_feat;
        __syncthreads();
        for (int r = threadIdx.y; r < TILE_Y * COL_ROWS + 2 * MAX_RADIUS; r += TILE_Y) {
            int sy = border_index(y0 + r - MAX_RADIUS, h, BORDER_CLAMP);
            tile[r][threadIdx.x] = src[in_plane * n + (size_t)sy * w + xx];
        }
        __syncthreads();
        if (x >= w) continue;
        for (int j = 0; j < COL_ROWS; j++) {
            int ly = threadIdx.y + j * TILE_Y;
            int y = y0 + ly;
            if (y >= h) break;
            float acc = 0.0f;
            for (int k = -radius; k <= radius; k++) {
                acc += s_taps[tap_set * TAP_STRIDE + MAX_RADIUS + k] * tile[ly + MAX_RADIUS + k][threadIdx.x];
            }
            size_t o = out_plane * n + (size_t)y * w + x;
            dst[o] = add ? dst[o] + acc : acc;
        }
    }
}

__device__ __forceinline__ float lab_f(float t) {
    const float delta = 6.0f / 29.0f;
    return t > delta * delta * delta ? cbrtf(t) : t / (3.0f * delta * delta) + 4.0f / 29.0f;
}

__device__ void ycxcz_to_hunt_lab(float cy, float cx, float cz, float* l, float* a, float* b) {
    float yy = (cy + 16.0f) / 116.0f;
    float X = (yy + cx / 500.0f) * D65_X, Y = yy * D65_Y, Z = (yy - cz / 200.0f) * D65_Z;
    float r = fminf(fmaxf(XYZ_TO_RGB_0 * X + XYZ_TO_RGB_1 * Y + XYZ_TO_RGB_2 * Z, 0.0f), 1.0f);
    float g = fminf(fmaxf(XYZ_TO_RGB_3 * X + XYZ_TO_RGB_4 * Y + XYZ_TO_RGB_5 * Z, 0.0f), 1.0f);
    float bl = fminf(fmaxf(XYZ_TO_RGB_6 * X + XYZ_TO_RGB_7 * Y + XYZ_TO_RGB_8 * Z, 0.0f), 1.0f);
    float x2, y2, z2;
    rgb_to_xyz(r, g, bl, &x2, &y2, &z2);
    float fx = lab_f(x2 / D65_X), fy = lab_f(y2 / D65_Y), fz = lab_f(z2 / D65_Z);
    *l = 116.0f * fy - 16.0f;
    *a = 0.01f * *l * (500.0f * (fx - fy));
    *b = 0.01f * *l * (200.0f * (fy - fz));
}

// Final per-pixel error. blockIdx.y = pair; cols holds [ref, test] per pair. With keep_max the
// error is max-merged into map (HDR-FLIP exposures), else written.
extern "C" __global__ void flip_combine(const float* __restrict__ cols, float* __restrict__ map, int n, int keep_max) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float* r = cols + (size_t)blockIdx.y * 2 * ROW_PLANES * n;
    const float* t = r + (size_t)ROW_PLANES * n;
    float rl, ra, rb, tl, ta, tb;
    ycxcz_to_hunt_lab(r[i], r[n + i], r[2 * n + i], &rl, &ra, &rb);
    ycxcz_to_hunt_lab(t[i], t[n + i], t[2 * n + i], &tl, &ta, &tb);
    float d = powf(fabsf(rl - tl) + sqrtf((ra - ta) * (ra - ta) + (rb - tb) * (rb - tb)), FLIP_GQC);
    float cdiff = d < FLIP_PCCMAX ? d * FLIP_GPT / FLIP_PCCMAX
                                  : FLIP_GPT + (d - FLIP_PCCMAX) / (FLIP_CMAX - FLIP_PCCMAX) * (1.0f - FLIP_GPT);
    float re = sqrtf(r[3 * n + i] * r[3 * n + i] + r[4 * n + i] * r[4 * n + i]);
    float rp = sqrtf(r[5 * n + i] * r[5 * n + i] + r[6 * n + i] * r[6 * n + i]);
    float te = sqrtf(t[3 * n + i] * t[3 * n + i] + t[4 * n + i] * t[4 * n + i]);
    float tp = sqrtf(t[5 * n + i] * t[5 * n + i] + t[6 * n + i] * t[6 * n + i]);
    float fd = 0.70710678118654752f * fmaxf(fabsf(re - te), fabsf(rp - tp));
    float fdiff = FLIP_GQF == 0.5f ? sqrtf(fd) : powf(fd, FLIP_GQF);
    float e = powf(cdiff, 1.0f - fdiff);
    float* m = map + (size_t)blockIdx.y * n;
    m[i] = keep_max ? fmaxf(m[i], e) : e;
}

// Pooling: per pair (blockIdx.y) sum (double), min/max (as ordered uint bits; errors are >= 0)
// and the histogram. minmax per pair: [~bits(min), bits(max)].
extern "C" __global__ void flip_pool(const float* __restrict__ map, int n, double* __restrict__ sums,
                                     unsigned int* __restrict__ minmax, unsigned int* __restrict__ hist) {
    __shared__ unsigned int s_hist[FLIP_HISTOGRAM_BUCKETS];
    int tid = threadIdx.x;
    for (int k = tid; k < FLIP_HISTOGRAM_BUCKETS; k += blockDim.x) s_hist[k] = 0;
    __syncthreads();
    const float* m = map + (size_t)blockIdx.y * n;
    double sum = 0.0;
    float lo = 1.0f, hi = 0.0f;
    for (int i = blockIdx.x * blockDim.x + tid; i < n; i += gridDim.x * blockDim.x) {
        float v = m[i];
        sum += (double)v;
        lo = fminf(lo, v);
        hi = fmaxf(hi, v);
        int b = min((int)(v * (float)FLIP_HISTOGRAM_BUCKETS), FLIP_HISTOGRAM_BUCKETS - 1);
        atomicAdd(&s_hist[b], 1u);
    }
    for (int off = 16; off > 0; off >>= 1) {
        lo = fminf(lo, __shfl_down_sync(0xffffffffu, lo, off));
        hi = fmaxf(hi, __shfl_down_sync(0xffffffffu, hi, off));
    }
    if ((tid & 31) == 0) {
        // Zero-initialised buffer: the minimum is kept as the maximum of its complement.
        atomicMax(&minmax[2 * blockIdx.y], 0xffffffffu - __float_as_uint(lo));
        atomicMax(&minmax[2 * blockIdx.y + 1], __float_as_uint(hi));
    }
    double total = block_sum(sum);
    if (tid == 0) atomicAdd(&sums[blockIdx.y], total);
    __syncthreads();
    for (int k = tid; k < FLIP_HISTOGRAM_BUCKETS; k += blockDim.x) {
        if (s_hist[k]) atomicAdd(&hist[blockIdx.y * FLIP_HISTOGRAM_BUCKETS + k], s_hist[k]);
    }
}
