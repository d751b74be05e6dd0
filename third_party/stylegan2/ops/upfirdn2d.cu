// One thread per output sample: out[y][x] = sum_{ky,kx} f[ky][kx] * u[y*downy + ky - py0][x*downx + kx - px0],
// where u is the input with (up-1) zeros inserted after every sample (so only taps landing on a multiple of
// up read the input). Padding beyond the signal reads zeros; negative padding crops.
#include <torch/extension.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

__global__ void upfirdn2d_kernel(const float* __restrict__ x, const float* __restrict__ f, float* __restrict__ y,
                                 int64_t planes, int in_h, int in_w, int out_h, int out_w, int fh, int fw, int upx,
                                 int upy, int downx, int downy, int px0, int py0) {
    int64_t total = planes * out_h * out_w;
    for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
         idx += (int64_t)blockDim.x * gridDim.x) {
        int ox = (int)(idx % out_w);
        int oy = (int)((idx / out_w) % out_h);
        int64_t plane = idx / ((int64_t)out_w * out_h);
        const float* xp = x + plane * in_h * in_w;
        float acc = 0.f;
        for (int ky = 0; ky < fh; ++ky) {
            int j = oy * downy + ky - py0;
            if (j < 0 || j >= in_h * upy || j % upy != 0) continue;
            const float* row = xp + (int64_t)(j / upy) * in_w;
            for (int kx = 0; kx < fw; ++kx) {
                int i = ox * downx + kx - px0;
                if (i < 0 || i >= in_w * upx || i % upx != 0) continue;
                acc += f[ky * fw + kx] * row[i / upx];
            }
        }
        y[idx] = acc;
    }
}

torch::Tensor upfirdn2d_cuda(torch::Tensor x, torch::Tensor f, int upx, int upy, int downx, int downy, int px0,
                             int py0, int out_h, int out_w) {
    const c10::cuda::OptionalCUDAGuard guard(device_of(x));
    auto y = torch::empty({x.size(0), x.size(1), out_h, out_w}, x.options());
    int64_t total = y.numel();
    if (total == 0) return y;
    const int threads = 256;
    int64_t blocks = (total + threads - 1) / threads;
    if (blocks > 65535 * 16) blocks = 65535 * 16;
    upfirdn2d_kernel<<<(int)blocks, threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<float>(), f.data_ptr<float>(), y.data_ptr<float>(), x.size(0) * x.size(1), (int)x.size(2),
        (int)x.size(3), out_h, out_w, (int)f.size(0), (int)f.size(1), upx, upy, downx, downy, px0, py0);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return y;
}
