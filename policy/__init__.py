"""Policy: bundles, signatures, trust, selectors, facts, resources and convergence."""
