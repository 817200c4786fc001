"""Local Kubernetes control plane for tests: binaries, lifecycle, simulated GPU node pools."""
