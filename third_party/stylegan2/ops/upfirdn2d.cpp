// Bindings for the upfirdn2d kernel (upfirdn2d.cu): zero-insertion upsampling, padding/cropping, correlation
// with a prepared 2-D filter (already flipped and scaled by the caller), decimation. float32 CUDA only.
#include <torch/extension.h>

torch::Tensor upfirdn2d_cuda(torch::Tensor x, torch::Tensor f, int upx, int upy, int downx, int downy, int px0,
                             int py0, int out_h, int out_w);

torch::Tensor upfirdn2d(torch::Tensor x, torch::Tensor f, int64_t upx, int64_t upy, int64_t downx, int64_t downy,
                        int64_t px0, int64_t px1, int64_t py0, int64_t py1) {
    TORCH_CHECK(x.is_cuda() && x.dim() == 4 && x.scalar_type() == torch::kFloat32, "x must be a float32 CUDA NCHW tensor");
    TORCH_CHECK(f.dim() == 2, "f must be a 2-D filter");
    TORCH_CHECK(upx >= 1 && upy >= 1 && downx >= 1 && downy >= 1, "up/down factors must be >= 1");
    x = x.contiguous();
    f = f.to(x.device(), torch::kFloat32).contiguous();
    int64_t fh = f.size(0), fw = f.size(1);
    int64_t out_h = (x.size(2) * upy + py0 + py1 - fh + downy) / downy;
    int64_t out_w = (x.size(3) * upx + px0 + px1 - fw + downx) / downx;
    TORCH_CHECK(x.size(2) * upy + py0 + py1 >= fh && x.size(3) * upx + px0 + px1 >= fw && out_h >= 1 && out_w >= 1,
                "upfirdn2d: padded input is smaller than the filter");
    return upfirdn2d_cuda(x, f, (int)upx, (int)upy, (int)downx, (int)downy, (int)px0, (int)py0, (int)out_h, (int)out_w);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("upfirdn2d", &upfirdn2d, "upsample, pad, FIR-filter (correlation), downsample");
}
