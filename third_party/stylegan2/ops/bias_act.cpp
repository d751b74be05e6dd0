// Bindings for the fused bias + activation kernel (bias_act.cu). float32, contiguous, CUDA only;
// the Python side falls back to the PyTorch reference for anything else.
#include <torch/extension.h>

torch::Tensor bias_act_fwd_cuda(torch::Tensor x, torch::Tensor b, int64_t inner, int64_t channels, int64_t act,
                                double alpha, double gain, double clamp);
torch::Tensor bias_act_bwd_cuda(torch::Tensor dy, torch::Tensor y, int64_t act, double alpha, double gain,
                                double clamp);

static void check(const torch::Tensor& t, const char* name) {
    TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
    TORCH_CHECK(t.scalar_type() == torch::kFloat32, name, " must be float32");
    TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

torch::Tensor bias_act_fwd(torch::Tensor x, torch::Tensor b, int64_t inner, int64_t channels, int64_t act,
                           double alpha, double gain, double clamp) {
    check(x, "x");
    if (b.numel() > 0) {
        check(b, "b");
        TORCH_CHECK(b.numel() == channels, "b must have one entry per channel");
    }
    TORCH_CHECK(act >= 0 && act <= 2, "unknown activation code");
    return bias_act_fwd_cuda(x, b, inner, channels, act, alpha, gain, clamp);
}

torch::Tensor bias_act_bwd(torch::Tensor dy, torch::Tensor y, int64_t act, double alpha, double gain, double clamp) {
    check(dy, "dy");
    check(y, "y");
    TORCH_CHECK(dy.sizes() == y.sizes(), "dy and y must have the same shape");
    return bias_act_bwd_cuda(dy, y, act, alpha, gain, clamp);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("bias_act_fwd", &bias_act_fwd, "y = clamp(act(x + b) * gain)");
    m.def("bias_act_bwd", &bias_act_bwd, "dx from dy and the saved output y");
}
