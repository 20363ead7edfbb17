// maskstream CUDA kernels, compiled at run time with NVRTC (--fmad=false, so that float arithmetic
// rounds exactly as the CPU code does: no fused multiply-adds).
// No headers: half precision goes through PTX cvt instructions.

__device__ __forceinline__ float h2f(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ unsigned short f2h(float f) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float load(const float* p, long i) { return p[i]; }
__device__ __forceinline__ float load(const unsigned short* p, long i) { return h2f(p[i]); }
__device__ __forceinline__ void store(float* p, long i, float v) { p[i] = v; }
__device__ __forceinline__ void store(unsigned short* p, long i, float v) { p[i] = f2h(v); }

// torchvision's bilinear_interpolate (roi_align_kernel), same order of operations as src/roi_align.rs.
template <typename T>
__device__ __forceinline__ float sample(const T* f, int H, int W, float y, float x) {
    if (y < -1.0f || y > (float)H || x < -1.0f || x > (float)W) return 0.0f;
    if (y <= 0.0f) y = 0.0f;
    if (x <= 0.0f) x = 0.0f;
    int yl = (int)y, xl = (int)x, yh, xh;
    if (yl >= H - 1) { yh = yl = H - 1; y = (float)yl; } else { yh = yl + 1; }
    if (xl >= W - 1) { xh = xl = W - 1; x = (float)xl; } else { xh = xl + 1; }
    float ly = y - (float)yl, lx = x - (float)xl;
    float hy = 1.0f - ly, hx = 1.0f - lx;
    float w1 = hy * hx, w2 = hy * lx, w3 = ly * hx, w4 = ly * lx;
    return w1 * load(f, (long)yl * W + xl) + w2 * load(f, (long)yl * W + xh)
         + w3 * load(f, (long)yh * W + xl) + w4 * load(f, (long)yh * W + xh);
}

// Multi-level ROIAlign: one launch for every ROI of every level. One thread per output element
// (roi, channel, ph, pw), pw fastest so that neighbouring threads read neighbouring pixels.
// levels: up to 5 feature tensors [N, C, H_l, W_l]; dims = {H_0, W_0, H_1, W_1, ...};
// rois = [R, 4] boxes in image pixels; meta = [R, 2] (batch index, level index).
template <typename T>
__device__ void roi_align(const T* l0, const T* l1, const T* l2, const T* l3, const T* l4,
                          const int* dims, const float* scales, const float* rois, const int* meta,
                          int num_rois, int channels, int pooled, int sampling_ratio, int aligned, T* out) {
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    long total = (long)num_rois * channels * pooled * pooled;
    if (idx >= total) return;
    int pw = (int)(idx % pooled);
    int ph = (int)((idx / pooled) % pooled);
    int c = (int)((idx / ((long)pooled * pooled)) % channels);
    int r = (int)(idx / ((long)pooled * pooled * channels));
    int batch = meta[2 * r], lvl = meta[2 * r + 1];
    const T* f = lvl == 0 ? l0 : lvl == 1 ? l1 : lvl == 2 ? l2 : lvl == 3 ? l3 : l4;
    int H = dims[2 * lvl], W = dims[2 * lvl + 1];
    float scale = scales[lvl];
    f += ((long)batch * channels + c) * (long)H * W;
    float offset = aligned ? 0.5f : 0.0f;
    float sw = rois[4 * r] * scale - offset;
    float sh = rois[4 * r + 1] * scale - offset;
    float ew = rois[4 * r + 2] * scale - offset;
    float eh = rois[4 * r + 3] * scale - offset;
    float rw = ew - sw, rh = eh - sh;
    if (!aligned) { rw = fmaxf(rw, 1.0f); rh = fmaxf(rh, 1.0f); }
    float bh = rh / (float)pooled, bw = rw / (float)pooled;
    int gh = sampling_ratio > 0 ? sampling_ratio : (int)ceilf(rh / (float)pooled);
    int gw = sampling_ratio > 0 ? sampling_ratio : (int)ceilf(rw / (float)pooled);
    gh = max(gh, 0);
    gw = max(gw, 0);
    float count = (float)max(gh * gw, 1);
    float acc = 0.0f;
    for (int iy = 0; iy < gh; iy++) {
        float y = sh + (float)ph * bh + ((float)iy + 0.5f) * bh / (float)gh;
        for (int ix = 0; ix < gw; ix++) {
            float x = sw + (float)pw * bw + ((float)ix + 0.5f) * bw / (float)gw;
            acc += sample(f, H, W, y, x);
        }
    }
    store(out, idx, acc / count);
}

extern "C" __global__ void roi_align_f32(const float* l0, const float* l1, const float* l2, const float* l3,
                                         const float* l4, const int* dims, const float* scales, const float* rois,
                                         const int* meta, int num_rois, int channels, int pooled,
                                         int sampling_ratio, int aligned, float* out) {
    roi_align(l0, l1, l2, l3, l4, dims, scales, rois, meta, num_rois, channels, pooled, sampling_ratio, aligned, out);
}

extern "C" __global__ void roi_align_f16(const unsigned short* l0, const unsigned short* l1, const unsigned short* l2,
                                         const unsigned short* l3, const unsigned short* l4, const int* dims,
                                         const float* scales, const float* rois, const int* meta, int num_rois,
                                         int channels, int pooled, int sampling_ratio, int aligned,
                                         unsigned short* out) {
    roi_align(l0, l1, l2, l3, l4, dims, scales, rois, meta, num_rois, channels, pooled, sampling_ratio, aligned, out);
}

// PyTorch's bilinear (align_corners=False) source taps, as src/preprocess.rs linear_taps.
__device__ __forceinline__ void tap(int o, int in, int outn, int* i0, int* i1, float* w0, float* w1) {
    float scale = (float)in / (float)outn;
    float real = fmaxf(scale * ((float)o + 0.5f) - 0.5f, 0.0f);
    int a = min((int)real, in - 1);
    float lambda = fminf(real - (float)a, 1.0f);
    *i0 = a;
    *i1 = a < in - 1 ? a + 1 : a;
    *w0 = 1.0f - lambda;
    *w1 = lambda;
}

// Preprocess: packed RGB8 (pitch bytes per row) -> normalized (x/255 - mean)/std, bilinear-resized to
// rh x rw, zero-padded to ph x pw, CHW. One thread per output element (channel, y, x).
template <typename T>
__device__ void preprocess(const unsigned char* rgb, int pitch, int h, int w, int rh, int rw, int ph, int pw,
                           float m0, float m1, float m2, float s0, float s1, float s2, T* out) {
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= 3L * ph * pw) return;
    int x = (int)(idx % pw), y = (int)((idx / pw) % ph), c = (int)(idx / ((long)ph * pw));
    if (y >= rh || x >= rw) { store(out, idx, 0.0f); return; }
    float mean = c == 0 ? m0 : c == 1 ? m1 : m2;
    float sd = c == 0 ? s0 : c == 1 ? s1 : s2;
    int y0, y1, x0, x1;
    float wy0, wy1, wx0, wx1;
    tap(y, h, rh, &y0, &y1, &wy0, &wy1);
    tap(x, w, rw, &x0, &x1, &wx0, &wx1);
#define PX(yy, xx) (((float)rgb[(long)(yy) * pitch + (xx) * 3 + c] / 255.0f - mean) / sd)
    float t0 = PX(y0, x0) * wx0 + PX(y0, x1) * wx1;
    float t1 = PX(y1, x0) * wx0 + PX(y1, x1) * wx1;
#undef PX
    store(out, idx, t0 * wy0 + t1 * wy1);
}

extern "C" __global__ void preprocess_rgb_f32(const unsigned char* rgb, int pitch, int h, int w, int rh, int rw,
                                              int ph, int pw, float m0, float m1, float m2, float s0, float s1,
                                              float s2, float* out) {
    preprocess(rgb, pitch, h, w, rh, rw, ph, pw, m0, m1, m2, s0, s1, s2, out);
}

extern "C" __global__ void preprocess_rgb_f16(const unsigned char* rgb, int pitch, int h, int w, int rh, int rw,
                                              int ph, int pw, float m0, float m1, float m2, float s0, float s1,
                                              float s2, unsigned short* out) {
    preprocess(rgb, pitch, h, w, rh, rw, ph, pw, m0, m1, m2, s0, s1, s2, out);
}

// NV12 (decoder output) -> packed RGB8, BT.601 (bt709 = 0) or BT.709 (bt709 = 1), limited range.
extern "C" __global__ void nv12_to_rgb(const unsigned char* y_plane, int y_pitch, const unsigned char* uv_plane,
                                       int uv_pitch, int h, int w, int bt709, unsigned char* rgb, int rgb_pitch) {
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)h * w) return;
    int x = (int)(idx % w), y = (int)(idx / w);
    float Y = 1.164383f * ((float)y_plane[(long)y * y_pitch + x] - 16.0f);
    const unsigned char* uv = uv_plane + (long)(y / 2) * uv_pitch + (x / 2) * 2;
    float U = (float)uv[0] - 128.0f, V = (float)uv[1] - 128.0f;
    float r, g, b;
    if (bt709) {
        r = Y + 1.792741f * V; g = Y - 0.213249f * U - 0.532909f * V; b = Y + 2.112402f * U;
    } else {
        r = Y + 1.596027f * V; g = Y - 0.391762f * U - 0.812968f * V; b = Y + 2.017232f * U;
    }
    unsigned char* o = rgb + (long)y * rgb_pitch + x * 3;
    o[0] = (unsigned char)fminf(fmaxf(rintf(r), 0.0f), 255.0f);
    o[1] = (unsigned char)fminf(fmaxf(rintf(g), 0.0f), 255.0f);
    o[2] = (unsigned char)fminf(fmaxf(rintf(b), 0.0f), 255.0f);
}

// Paste + composite in one pass (src/paste.rs + src/overlay.rs masks): for detection d with integer
// expanded box ibox[d] = (x0, y0, x1, y1), pixel (x, y) inside the frame and the box takes the bilinear
// sample of its (m+2)x(m+2) zero-padded mask; above `threshold` it is blended with the class colour
// (alpha inside, opaque on the outline). One thread per pixel of the detection's visible window;
// detections are drawn one launch each, lowest score first.
__device__ __forceinline__ float mask_at(const float* padded, int pm, int bw, int bh, int u, int v) {
    int a0, a1, b0, b1;
    float wa0, wa1, wb0, wb1;
    tap(v, pm, bh, &a0, &a1, &wa0, &wa1);
    tap(u, pm, bw, &b0, &b1, &wb0, &wb1);
    float t0 = padded[a0 * pm + b0] * wb0 + padded[a0 * pm + b1] * wb1;
    float t1 = padded[a1 * pm + b0] * wb0 + padded[a1 * pm + b1] * wb1;
    return t0 * wa0 + t1 * wa1;
}

extern "C" __global__ void paste_composite(const float* padded, int pm, int bx0, int by0, int bx1, int by1,
                                           int vx0, int vy0, int vw, int vh, float threshold, unsigned char cr,
                                           unsigned char cg, unsigned char cb, float alpha, int outline,
                                           unsigned char* rgb, int pitch) {
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)vw * vh) return;
    int x = vx0 + (int)(idx % vw), y = vy0 + (int)(idx / vw);
    int bw = max(bx1 - bx0 + 1, 1), bh = max(by1 - by0 + 1, 1);
    int u = x - bx0, v = y - by0;
    if (!(mask_at(padded, pm, bw, bh, u, v) > threshold)) return;
    int edge = 0;
    if (outline) {
        int xs[4] = {x - 1, x + 1, x, x};
        int ys[4] = {y, y, y - 1, y + 1};
        for (int k = 0; k < 4; k++) {
            if (xs[k] < vx0 || ys[k] < vy0 || xs[k] >= vx0 + vw || ys[k] >= vy0 + vh ||
                !(mask_at(padded, pm, bw, bh, xs[k] - bx0, ys[k] - by0) > threshold)) {
                edge = 1;
            }
        }
    }
    float a = edge ? 1.0f : alpha;
    unsigned char* p = rgb + (long)y * pitch + x * 3;
    unsigned char col[3] = {cr, cg, cb};
    for (int k = 0; k < 3; k++) {
        float val = (float)p[k] * (1.0f - a) + (float)col[k] * a;
        p[k] = (unsigned char)fminf(fmaxf(roundf(val), 0.0f), 255.0f);
    }
}
