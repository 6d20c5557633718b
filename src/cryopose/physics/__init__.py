"""Image-formation physics: pure, batched, differentiable tensor functions (no models, no I/O)."""
