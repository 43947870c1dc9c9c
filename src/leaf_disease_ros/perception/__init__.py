"""
Perception: parameter table, model card, preprocessing, tiling, postprocessing, pipeline.

Pure Python, NumPy and OpenCV. Every other layer imports it; it imports none of them,
no ROS, no inference runtime and no torch.
"""
