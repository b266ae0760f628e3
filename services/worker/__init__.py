"""The worker: hosts one base model and serves many LoRA adapters on it."""
