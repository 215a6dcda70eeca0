//! LoRA: low-rank adapters on frozen linear layers.
