"""selectflow.stages: select (candidates, FPS, continue-selection) and compare."""
