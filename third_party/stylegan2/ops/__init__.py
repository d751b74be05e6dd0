"""StyleGAN2's custom ops: ``bias_act`` and ``upfirdn2d``, each with a PyTorch reference (``impl="ref"``,
the specification, used on CPU) and an optional JIT-built CUDA kernel (``impl="cuda"``/``"auto"``)."""
