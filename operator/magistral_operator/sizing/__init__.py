"""GPU sizing (pure): model profiles and the choice of tensor-parallel size."""
