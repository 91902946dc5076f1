"""Task definitions shared by the simulator and the real arm: pose arithmetic, the pose-reaching
reward and success rule, the observation layout, and the Lego stacking geometry."""
