"""Lightning callbacks: sample grids, divergence guard, gradient noise, and the periodic evaluation
with its evaluators."""
