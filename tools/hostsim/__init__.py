"""Host shims so the unchanged firmware runs on CPython with simulated pins."""
