"""Training: the loop (`trainer`), the loss of Eq. 10-12 and the device mesh."""
