"""Lightning callbacks: sample grids, divergence guard, gradient noise, periodic evaluation."""
