"""The `arcade` command and its helpers."""
