"""phm.trt_plugins: Triton PHM kernels, their AOT build and the TensorRT IPluginV3 plugins."""
