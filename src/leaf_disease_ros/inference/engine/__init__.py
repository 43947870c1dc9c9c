"""TensorRT engines: file naming, sidecars, matching rules, precision policy and the build."""
