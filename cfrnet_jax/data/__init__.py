"""Data: image geometry (host), the grain input pipeline, device-side ops and targets."""
