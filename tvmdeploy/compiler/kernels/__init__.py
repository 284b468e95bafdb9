"""Hand-written TVM kernels and tensor intrinsics that TVM itself does not ship."""
