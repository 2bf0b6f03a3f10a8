"""Image quality: FID with the standard Inception-v3 weights and a domain Fréchet distance."""
