"""Restore and snapshot steps: each a plain function of a StepContext."""
