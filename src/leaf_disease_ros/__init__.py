"""leaf_disease_ros: grapevine leaf disease detection for ROS 2 vineyard robots."""
