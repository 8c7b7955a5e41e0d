"""Model migration: rewrites TensorFlow training scripts for opencann and reports what it could not
migrate. Not built yet (issue 5)."""
